"""The sinks the configuration enables (alerting/sinks.py: journald, JSON lines, syslog,
webhook) and the count of deliveries by sink and result.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from . import sinks
from .kinds import MESSAGE_IDS


class Deliveries:
    """When this daemon last handed something to journald (CLOCK_MONOTONIC ns), so that
    journald's handling of it can be told apart from journald's own behaviour
    (docs/architecture.md, "No feedback loop")."""

    def __init__(self, keep: int = 4096):
        self.sent: deque[int] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def note(self) -> None:
        with self._lock:
            self.sent.append(time.monotonic_ns())

    def near(self, first_ns: int, last_ns: int, slack_ns: int) -> bool:
        """Whether a send happened in [first_ns - slack_ns, last_ns]."""
        with self._lock:
            for t in reversed(self.sent):
                if t <= last_ns:
                    return t >= first_ns - slack_ns
        return False


def build_sinks(cfg, deliveries: Deliveries | None = None) -> sinks.Sinks:
    """The sinks a configuration enables ([alerts], [alerts.syslog], [alerts.webhook]);
    ConfigError when the JSON-lines file cannot be opened."""
    a = cfg.alerts
    out: list[sinks.Sink] = []
    if a.journald:
        out.append(sinks.JournaldSink())
    if a.json_lines:
        out.append(sinks.JsonLinesSink(a.json_lines, a.json_format))
    out += network_sinks(cfg)
    return sinks.Sinks(out, MESSAGE_IDS, deliveries)


def network_sinks(cfg) -> list:
    out = []
    s, w = cfg.alerts_syslog, cfg.alerts_webhook
    if s.enabled:
        out.append(sinks.SyslogSink(s.address, s.protocol, s.facility, s.queue, s.max_bytes,
                                    kinds=tuple(MESSAGE_IDS) if s.events else
                                    sinks.ALERT_KINDS, ca_file=s.ca_file))
    if w.enabled:
        out.append(sinks.WebhookSink(w.url, w.format, tuple(w.headers), float(w.timeout_s),
                                     w.retries, float(w.backoff_s), w.queue,
                                     tuple(MESSAGE_IDS) if w.events else sinks.ALERT_KINDS,
                                     w.ca_file, w.headers_file, w.headers_credential))
    return out
