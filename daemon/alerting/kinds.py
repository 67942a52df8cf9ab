"""The kinds of alerts and service events: their journald MESSAGE_IDs and priorities.
"""

from __future__ import annotations

MESSAGE_IDS = {
    "anomaly": "6c1f3a9e4b2d4f7e8a05d2c9b7e1f342",
    "alerts-suppressed": "3f7b9d1e5c2a4e86b0d4f6a8c1e3b527",
    "model-loaded": "2e8d4b7a19c04f3d96a1e5b0c7d2f815",
    "model-rejected": "9b4e7c2d5a1f4e08b3c6d9a2e7f10c54",
    "learning-started": "47a2c9e1d3b54f6a8e0c1b7d2f9e3a60",
    "learning-complete": "d15e8a3c7b2f4096a4c3e1b8d7f20a95",
    "learning-failed": "a8c3f1e6b9d24c7e95b0a2d4c8e71f36",
    "model-retrained": "fda2c0dd74f84a588a90626cc8efbff4",
    "retraining-rejected": "ca8e4d9a8016406e852f7f66ebd2a590",
    "allow-list-refused": "5d0c7e2a9f3b4a18b6e4c1d8a7f2903e",
    "evidence-lost": "b7e3a91c4d2f4c58a0e6d3f19c8b2a47",
    "behaviour": "ec13a59ae5f34cb19a3a073900733a34",
    "incident-closed": "12a5b32e4f2d40fb844008d680d5f6ed",
}


# syslog priorities
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6
