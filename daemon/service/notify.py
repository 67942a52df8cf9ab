"""sd_notify(3) through systemd-python (systemd.daemon.notify): READY, STATUS, WATCHDOG,
RELOADING, STOPPING. Without $NOTIFY_SOCKET (not run by systemd) every call does nothing."""

from __future__ import annotations

import os
import time

from systemd import daemon


class Notifier:
    def __init__(self):
        env = os.environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.sent = 0
        self.failures = 0
        # the watchdog interval systemd asked of this process, 0 for none (systemd-python
        # 235 has no sd_watchdog_enabled; sd_watchdog_enabled(3) reads the same variables)
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and ours \
            else 0.0

    def send(self, **fields) -> bool:
        """send(READY=1, STATUS="...") -> 'READY=1\\nSTATUS=...'"""
        if not self.enabled:
            return False
        if daemon.notify("\n".join(f"{k}={v}" for k, v in fields.items())):
            self.sent += 1
            return True
        self.failures += 1
        return False

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def reloading(self) -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)
