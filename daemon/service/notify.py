"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET (READY, STATUS, WATCHDOG,
RELOADING, STOPPING). Without the variable (not run by systemd) every call does nothing."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, env: dict | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        if path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace
        self.path = path
        self.sent = 0
        self.failures = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and ours else 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def send(self, **fields) -> bool:
        """notify(READY=1, STATUS="...") -> 'READY=1\\nSTATUS=...'"""
        if not self.path:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(msg, self.path)
            self.sent += 1
            return True
        except OSError:
            self.failures += 1
            return False
        finally:
            s.close()

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
