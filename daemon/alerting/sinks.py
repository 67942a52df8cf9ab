"""Where alerts and service events go: one class per channel behind one interface.

A sink has a `name`, `emit(kind, priority, message, fields)` and `close()`, and counts
what it did in `counts` (sent, failed, dropped). `Sinks` fans an alert out to every sink
enabled in the configuration ([alerts] journald and json_lines, [alerts.syslog],
[alerts.webhook]); adding a channel is a class here and a section in config.py.

Detection never waits for a channel that is slow or down: journald and a JSON-lines file
are written in place (local and fast; journald's absence is detected before libsystemd
would drop the message silently, and the alert goes to standard error instead), while the
network channels (syslog over UDP or TCP, webhooks) hand each alert to a bounded queue
drained by their own thread; a full queue drops the alert and counts it.
"""

from __future__ import annotations

import datetime
import json
import os
import queue
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

from ..config import ConfigError

JOURNAL_SOCKET = "/run/systemd/journal/socket"
HOSTNAME = socket.gethostname()
# syslog facilities by name (RFC 5424, table 1)
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
              **{f"local{i}": 16 + i for i in range(8)}}
# RFC 5424 structured data needs an SD-ID with an enterprise number; 32473 is the one
# IANA reserves for documentation and examples (RFC 5612), used until sysdream has its own
SD_ID = "sysdream@32473"
SD_PARAMS = ("alert_id", "fingerprint", "severity", "pid", "comm", "exe", "user", "uid",
             "lineage_text", "unit", "container_id", "score", "bound", "evidence",
             "model_id", "unknown_syscalls", "time_rfc3339")
FALCO_PRIORITY = {0: "Emergency", 1: "Alert", 2: "Critical", 3: "Error", 4: "Warning",
                  5: "Notice", 6: "Informational", 7: "Debug"}
ALERT_KINDS = ("anomaly", "alerts-suppressed")   # what a network sink sends by default


def rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def json_line(kind: str, priority: int, msg: str, fields: dict, message_id: str) -> str:
    return json.dumps({"message": msg, "message_id": message_id, "priority": priority,
                       **fields}, separators=(",", ":"))


def falco_shape(kind: str, priority: int, msg: str, fields: dict) -> dict:
    """An alert as Falco writes one (json_output), so that Falcosidekick and the tools
    that read Falco's events take it: output, priority, rule, time, hostname,
    output_fields (flat, dotted names), tags, source."""
    t = fields.get("time")
    t = t if isinstance(t, (int, float)) else time.time()
    flat = {}
    for k, v in fields.items():
        flat[f"sysdream.{k}"] = v if isinstance(v, (str, int, float, bool)) or v is None \
            else json.dumps(v, separators=(",", ":"))
    tags = ["sysdream", kind]
    if fields.get("severity"):
        tags.append(str(fields["severity"]))
    return {"output": msg, "priority": FALCO_PRIORITY.get(priority, "Warning"),
            "rule": f"sysdream {kind}", "time": rfc3339(t).replace("Z", "000000Z"),
            "hostname": fields.get("hostname") or HOSTNAME, "output_fields": flat,
            "tags": tags, "source": "sysdream"}


class Sink:
    name = "sink"

    def __init__(self):
        self.counts: Counter = Counter()     # sent, failed, dropped

    def emit(self, kind: str, priority: int, msg: str, fields: dict, message_id: str
             ) -> None:
        raise NotImplementedError

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


class JournaldSink(Sink):
    """journald through systemd-python, with standard error as the fallback: libsystemd
    drops a message silently when journald's socket does not exist, so the socket is
    tried first; when it refuses, the alert goes to stderr as a JSON line, counted as
    failed, and the next alert tries journald again."""
    name = "journald"

    def __init__(self, socket_path: str = JOURNAL_SOCKET, err=sys.stderr):
        super().__init__()
        self.socket_path, self.err = socket_path, err
        self._down = False

    def up(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def emit(self, kind, priority, msg, fields, message_id):
        if self._send(priority, msg, fields, message_id):
            self.counts["sent"] += 1
            if self._down:
                self._down = False
                print("sysdream: journald is back; alerts go to it again", file=self.err)
            return
        self.counts["failed"] += 1
        if not self._down:
            self._down = True
            print(f"sysdream: journald is not reachable at {self.socket_path}; alerts go to "
                  "stderr as JSON lines until it returns", file=self.err)
        print(json_line(kind, priority, msg, fields, message_id), file=self.err, flush=True)

    def _send(self, priority, msg, fields, message_id) -> bool:
        if not self.up():
            return False
        try:
            from systemd import journal
        except ImportError:
            return False
        extra = {f"SYSDREAM_{k.upper()}": journal_value(k, v) for k, v in fields.items()}
        try:
            journal.send(msg, MESSAGE_ID=message_id, PRIORITY=str(priority),
                         SYSLOG_IDENTIFIER="sysdream", **extra)
        except OSError:
            return False
        return True


# Lists of names that hold no spaces: space-separated in journald (easy to grep); every
# other structure (argv among them) is JSON, so that no two values read alike.
WORD_LISTS = {"syscalls", "context", "unknown_syscalls", "exe_flags"}


def journal_value(key: str, v) -> str:
    """Lists of names space-separated, other structures as JSON, the rest as text."""
    if key in WORD_LISTS and isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


class JsonLinesSink(Sink):
    """One JSON object a line, to a file (created 0600, appended, never through a link)
    or to standard output ("-")."""
    name = "json_lines"

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        if path == "-":
            self._f = sys.stdout
            return
        # alerts name processes and their command lines: readable by root only
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"[alerts] json_lines {path}: cannot open it ({exc.strerror}); name a file "
                "in a directory the daemon may write (under systemd: LogsDirectory= or "
                "StateDirectory=), not a link") from None
        self._f = os.fdopen(fd, "a", buffering=1)

    def emit(self, kind, priority, msg, fields, message_id):
        try:
            self._f.write(json_line(kind, priority, msg, fields, message_id) + "\n")
            self._f.flush()
            self.counts["sent"] += 1
        except OSError:
            self.counts["failed"] += 1

    def close(self):
        if self._f is not sys.stdout:
            self._f.close()


class QueuedSink(Sink):
    """A network channel: alerts wait in a bounded queue that one thread drains, so a
    slow or absent receiver never holds detection up; a full queue drops the new alert
    (counted `dropped`)."""

    def __init__(self, capacity: int, kinds: tuple[str, ...]):
        super().__init__()
        self.kinds = kinds
        self.q: queue.Queue = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sysdream-{self.name}",
                                       daemon=True)
        self.thread.start()

    def emit(self, kind, priority, msg, fields, message_id):
        if kind not in self.kinds:
            return
        try:
            self.q.put_nowait((kind, priority, msg, fields, message_id))
        except queue.Full:
            self.counts["dropped"] += 1

    def pending(self) -> int:
        return self.q.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.deliver(*item):
                self.counts["sent"] += 1
            else:
                self.counts["failed"] += 1

    def deliver(self, kind, priority, msg, fields, message_id) -> bool:
        raise NotImplementedError

    def close(self, drain_s: float = 2.0) -> None:
        end = time.monotonic() + drain_s
        while not self.q.empty() and time.monotonic() < end:
            time.sleep(0.02)
        self._stop.set()
        self.thread.join(timeout=max(0.1, end - time.monotonic() + 1))


class SyslogSink(QueuedSink):
    """RFC 5424 syslog to `host:port` over UDP (one datagram an alert, at most
    `max_bytes`) or TCP (octet-counted frames, RFC 6587; reconnected on failure)."""
    name = "syslog"

    def __init__(self, address: str, protocol: str = "udp", facility: str = "authpriv",
                 capacity: int = 1000, max_bytes: int = 8192, timeout_s: float = 5.0,
                 kinds: tuple[str, ...] = ALERT_KINDS):
        self.host, _, port = address.rpartition(":")
        self.host = self.host.strip("[]")
        self.port, self.protocol = int(port), protocol
        self.facility, self.max_bytes, self.timeout = FACILITIES[facility], max_bytes, \
            timeout_s
        self._sock: socket.socket | None = None
        super().__init__(capacity, kinds)

    def frame(self, kind, priority, msg, fields) -> bytes:
        t = fields.get("time")
        stamp = rfc3339(t if isinstance(t, (int, float)) else time.time())
        params = []
        for k in SD_PARAMS:
            if k in fields and fields[k] not in ("", None, [], {}):
                params.append(f'{k}="{_sd_escape(journal_value(k, fields[k]))}"')
        sd = f"[{SD_ID} {' '.join(params)}]" if params else "-"
        head = (f"<{self.facility * 8 + priority}>1 {stamp} {_token(HOSTNAME, 255)} "
                f"sysdream {os.getpid()} {_token(kind, 32)} {sd} ")
        data = head.encode() + b"\xef\xbb\xbf" + msg.encode("utf-8", "replace")
        if self.protocol == "udp" and len(data) > self.max_bytes:
            data = data[:self.max_bytes]
        return data

    def _connect(self) -> socket.socket:
        family = socket.getaddrinfo(self.host, self.port)[0][0]
        kind = socket.SOCK_DGRAM if self.protocol == "udp" else socket.SOCK_STREAM
        s = socket.socket(family, kind)
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        return s

    def deliver(self, kind, priority, msg, fields, message_id) -> bool:
        data = self.frame(kind, priority, msg, fields)
        if self.protocol == "tcp":
            data = f"{len(data)} ".encode() + data
        for attempt in range(2):        # a TCP peer that closed: one reconnection
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(data)
                return True
            except OSError:
                if self._sock is not None:
                    self._sock.close()
                self._sock = None
                if self.protocol == "udp" or attempt:
                    return False
        return False

    def close(self, drain_s: float = 2.0) -> None:
        super().close(drain_s)
        if self._sock is not None:
            self._sock.close()


def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(v: str, n: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most n, or "-"."""
    out = "".join(c for c in v if 33 <= ord(c) <= 126)[:n]
    return out or "-"


class WebhookSink(QueuedSink):
    """An HTTP(S) POST of each alert as JSON (sysdream's fields, or Falco's shape for
    Falcosidekick and what reads Falco), retried with exponential backoff on a refused or
    timed-out connection, a 5xx or a 429, up to `retries` times; other 4xx are not
    retried. Each try waits at most `timeout_s`."""
    name = "webhook"

    def __init__(self, url: str, shape: str = "sysdream", headers: tuple[str, ...] = (),
                 timeout_s: float = 5.0, retries: int = 5, backoff_s: float = 1.0,
                 capacity: int = 1000, kinds: tuple[str, ...] = ALERT_KINDS,
                 ca_file: str = ""):
        self.url, self.shape, self.timeout = url, shape, timeout_s
        self.retries, self.backoff = retries, backoff_s
        self.headers = {"Content-Type": "application/json",
                        "User-Agent": "sysdream"}
        for h in headers:
            k, _, v = h.partition(":")
            self.headers[k.strip()] = v.strip()
        self.context = None
        if url.startswith("https:"):
            import ssl
            self.context = ssl.create_default_context(cafile=ca_file or None)
        super().__init__(capacity, kinds)

    def body(self, kind, priority, msg, fields, message_id) -> bytes:
        doc = falco_shape(kind, priority, msg, fields) if self.shape == "falco" else \
            json.loads(json_line(kind, priority, msg, fields, message_id))
        return json.dumps(doc, separators=(",", ":")).encode()

    def deliver(self, kind, priority, msg, fields, message_id) -> bool:
        data = self.body(kind, priority, msg, fields, message_id)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            if attempt:
                self.counts["retried"] += 1
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 60.0)
            req = urllib.request.Request(self.url, data=data, headers=self.headers,
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout,
                                            context=self.context) as r:
                    r.read(65536)
                return True
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code != 429 and exc.code < 500:
                    return False
            except (OSError, ValueError):
                pass
        return False


class Sinks:
    """Every enabled sink; `emit` hands an alert or event to each in turn. `message_ids`:
    the fixed MESSAGE_ID of each kind (alerts.MESSAGE_IDS)."""

    def __init__(self, sinks: list[Sink], message_ids: dict[str, str], deliveries=None):
        self.sinks, self.message_ids, self.deliveries = sinks, message_ids, deliveries
        self._lock = threading.Lock()

    def emit(self, kind: str, priority: int, msg: str, fields: dict,
             only: tuple[str, ...] | None = None) -> None:
        """To every sink, or to those named in `only` (a low incident: journald)."""
        if "time" not in fields:     # service events: the wall time they were raised at
            now = time.time()
            fields = {**fields, "time": round(now, 3), "time_rfc3339": rfc3339(now)}
        # before the writes: journald (or whoever reads our output) acts on it at once
        if self.deliveries is not None:
            self.deliveries.note()
        with self._lock:
            for s in self.sinks:
                if only is None or s.name in only:
                    s.emit(kind, priority, msg, fields, self.message_ids[kind])

    def get(self, name: str) -> Sink | None:
        return next((s for s in self.sinks if s.name == name), None)

    def swap(self, new: Sinks) -> None:
        """Take `new`'s sinks (a reload); the old ones are closed, their counts kept by
        name where a sink of the same name comes in."""
        with self._lock:
            old, self.sinks = self.sinks, new.sinks
        for s in old:
            same = self.get(s.name)
            if same is not None:
                same.counts.update(s.counts)
            s.close()

    def counts(self) -> dict[str, Counter]:
        return {s.name: s.counts for s in self.sinks}

    def close(self) -> None:
        for s in self.sinks:
            s.close()
