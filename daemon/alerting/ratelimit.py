"""Rate limits on incidents: per fingerprint, and a ceiling per minute; what is held back
is counted and summarised, never lost. A high incident is never held back (issue 33 #8:
a flood of lower ones must not hide it; it still spends tokens, so the flood behind it
waits), and the first held back of each fingerprint is kept whole for the summary.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class RateLimiter:
    """Per fingerprint, a token bucket of `burst` alerts refilled over `interval` s; across
    all of them, at most `ceiling` alerts per minute. Nothing is dropped unaccounted:
    every alert held back is counted per fingerprint, reported with the next one sent for
    it, and summarised by `take_summary()`."""

    def __init__(self, burst: int, interval: float, ceiling: int = 60,
                 max_keys: int = 4096):
        self.burst, self.interval, self.ceiling, self.max_keys = burst, interval, ceiling, \
            max_keys
        self.tokens: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.suppressed: dict[str, int] = {}
        self.incidents: OrderedDict[str, int] = OrderedDict()
        self.pending: OrderedDict[str, dict] = OrderedDict()   # held back since the summary
        self._global = (float(ceiling), None)
        self.evicted = 0     # fingerprints dropped while they held suppressed alerts

    def _bucket(self, tokens: float, last: float, now: float, size: float, per: float):
        return min(size, tokens + (now - last) * size / per)

    def allow(self, key: str, now: float | None = None, about: dict | None = None,
              high: bool = False, first: dict | None = None) -> tuple[bool, int, int]:
        """(send?, suppressed since the last one sent for this key, incidents so far).
        `high`: sent whatever the buckets hold; `first`: the alert's fields, kept whole
        in the summary when it is the first of its fingerprint held back."""
        now = time.monotonic() if now is None else now
        self.incidents[key] = self.incidents.get(key, 0) + 1
        self.incidents.move_to_end(key)
        while len(self.incidents) > self.max_keys:
            self.incidents.popitem(last=False)
        count = self.incidents[key]
        tokens, last = self.tokens.get(key, (float(self.burst), now))
        tokens = self._bucket(tokens, last, now, self.burst, self.interval)
        g_tokens, g_last = self._global
        g_tokens = self._bucket(g_tokens, now if g_last is None else g_last, now,
                                self.ceiling, 60.0)
        if high or (tokens >= 1 and g_tokens >= 1):
            self.tokens[key] = (max(tokens - 1, 0.0), now)
            self.tokens.move_to_end(key)
            self._global = (max(g_tokens - 1, 0.0), now)
            self._trim()
            return True, self.suppressed.pop(key, 0), count
        self.tokens[key] = (tokens, now)
        self._global = (g_tokens, now)
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        p = self.pending.setdefault(key, {"fingerprint": key, "count": 0,
                                          **(about or {})})
        if not p["count"] and first is not None:
            p["first"] = first
        p["count"] += 1
        self._trim()
        return False, 0, count

    def _trim(self) -> None:
        while len(self.tokens) > self.max_keys:
            old, _ = self.tokens.popitem(last=False)
            if self.suppressed.pop(old, None):
                self.evicted += 1
        while len(self.pending) > self.max_keys:
            self.pending.popitem(last=False)
            self.evicted += 1

    def take_summary(self) -> list[dict]:
        """What was held back since the last call, most held back first."""
        out = sorted(self.pending.values(), key=lambda p: -p["count"])
        self.pending.clear()
        return out
