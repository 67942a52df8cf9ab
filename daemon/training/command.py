"""The `sysdream train` command line the service's learner and retrainer run as a child.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import Config
from ..signing import signing_key


def train_command(cfg: Config, inputs: list[Path], output: Path) -> list[str]:
    """`sysdream train` on `inputs` into `output` with the [learning] settings."""
    L = cfg.learning
    key = signing_key(L.signing_key)     # systemd's credential first (LoadCredential=)
    sign = ["--sign", key] if key else []
    cmd = [sys.executable, "-m", "sysdream.daemon", "train", *sign, "--input",
           *(f"trace:{p}" for p in inputs), "-o", str(output), "--arch", L.arch,
           "--window", str(L.window), "--hidden", str(L.hidden), "--embed", str(L.embed),
           "--epochs", str(L.epochs), "--threads", str(L.threads), "--folds", str(L.folds)]
    return cmd + (["--sequences"] if L.sequences else []) + \
        (["--condition", L.condition] if L.condition else [])
