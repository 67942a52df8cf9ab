"""Which journald entries sysdream wrote: the only ones `allow` and `explain` act on.

Any local user can write an entry with SYSLOG_IDENTIFIER=sysdream and every SYSDREAM_*
field (`logger --journald`, or one datagram to journald's socket). journald itself adds
the fields that start with an underscore from what the kernel says about the sender
(SCM_CREDENTIALS, its cgroup), and drops any a client sends, so those are what an entry
is trusted by: written from one of sysdream's units (`_SYSTEMD_UNIT`), or by root or the
owner of the state directory (`_UID`: the daemon's DynamicUser, or root when it runs by
hand). docs/security.md has the reasoning.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..exitcodes import UntrustedError

UNITS = ("sysdream.service", "sysdream-agent.service")
FILTER = "_SYSTEMD_UNIT=sysdream.service"


def trusted_uids(state_dir: Path | None) -> set[int]:
    """Root, and whoever owns the state directory (the service's user)."""
    uids = {0}
    if state_dir is not None:
        try:
            uids.add(os.stat(state_dir).st_uid)
        except OSError:
            pass
    return uids


def trusted(entry: dict, uids: set[int]) -> bool:
    if entry.get("_SYSTEMD_UNIT") in UNITS:
        return True
    try:
        return int(entry.get("_UID")) in uids
    except (TypeError, ValueError):
        return False


def origin(entry: dict) -> str:
    """Who wrote the entry, by journald's trusted fields."""
    unit = entry.get("_SYSTEMD_UNIT")
    parts = [f"unit {unit}" if unit else "no unit",
             f"uid {entry.get('_UID', '?')}", f"pid {entry.get('_PID', '?')}",
             f"comm {entry.get('_COMM', '?')!r}"]
    return ", ".join(parts)


def pick(entries: list[dict], what: str, state_dir: Path | None) -> dict:
    """The first entry sysdream wrote; UntrustedError naming who wrote the others."""
    uids = trusted_uids(state_dir)
    for e in entries:
        if trusted(e, uids):
            return e
    if entries:
        raise UntrustedError(
            f"{what}: the journald entry was not written by sysdream ({origin(entries[0])}; "
            f"trusted: units {', '.join(UNITS)} or uid {', '.join(map(str, sorted(uids)))}); "
            "it may be forged: refusing it. Find the real alert with "
            f"`journalctl {FILTER}`")
    raise LookupError(what)
