"""Where alerts and service events go: one class per channel behind one interface.

A sink has a `name`, `emit(kind, priority, message, fields)` and `close()`, and counts
what it did in `counts` (sent, failed, dropped). `Sinks` fans an alert out to every sink
enabled in the configuration ([alerts] journald and json_lines, [alerts.syslog],
[alerts.webhook]); adding a channel is a class here and a section in config.py.

Detection never waits for a channel that is slow or down: journald and a JSON-lines file
are written in place (local and fast; journald's absence is detected before libsystemd
would drop the message silently, and the alert goes to standard error instead), while the
network channels (syslog over UDP, TCP or TLS, webhooks) hand each alert to a bounded
queue drained by their own thread; a full queue drops the alert and counts it. The first
failed delivery of a streak is logged on standard error (journald under systemd) with its
reason; the rest are only counted, until one succeeds.

The layout of each alert (sysdream's fields, ECS, OCSF, Falco) is daemon/alerting/formats.py's.
"""

from __future__ import annotations

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
from dataclasses import dataclass

from ..config import ConfigError
from .formats import native, rfc3339, shape

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
ALERT_KINDS = ("anomaly", "alerts-suppressed")   # what a network sink sends by default


def json_line(kind: str, priority: int, msg: str, fields: dict, message_id: str) -> str:
    return json.dumps(native(kind, priority, msg, fields, message_id), separators=(",", ":"))


class Sink:
    name = "sink"

    def __init__(self):
        self.counts: Counter = Counter()     # sent, failed, dropped
        self._failing = False

    def sent(self) -> None:
        self.counts["sent"] += 1
        if self._failing:
            self._failing = False
            print(f"sysdream: alert sink {self.name} delivers again", file=sys.stderr,
                  flush=True)

    def failed(self, why: str) -> None:
        """Count a failed delivery; log only the first of a streak, so that a receiver
        down for an hour writes one line, not one per alert."""
        self.counts["failed"] += 1
        if not self._failing:
            self._failing = True
            print(f"sysdream: alert sink {self.name}: delivery failed ({why}); further "
                  "failures are only counted (sysdream_alert_deliveries_total) until one "
                  "succeeds", file=sys.stderr, flush=True)

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
    return "" if v is None else str(v)      # JSON's null: no value


class JsonLinesSink(Sink):
    """One JSON object a line, in format `fmt` (daemon/alerting/formats.py), to a file (created
    0600, appended, never through a link) or to standard output ("-")."""
    name = "json_lines"

    def __init__(self, path: str, fmt: str = "sysdream"):
        super().__init__()
        self.path, self.fmt = path, fmt
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
            doc = shape(self.fmt, kind, priority, msg, fields, message_id)
            self._f.write(json.dumps(doc, separators=(",", ":")) + "\n")
            self._f.flush()
            self.sent()
        except OSError as exc:
            self.failed(f"{self.path}: {exc.strerror}")

    def close(self):
        if self._f is not sys.stdout:
            self._f.close()


class QueuedSink(Sink):
    """A network channel: alerts wait in a bounded queue that one thread drains, so a
    slow or absent receiver never holds detection up; a full queue drops the new alert
    (counted `dropped`)."""

    def __init__(self, capacity: int, kinds: tuple[str, ...]):
        super().__init__()
        self.kinds, self.why, self._full = kinds, "", False
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
            if self._full and self.q.qsize() <= self.q.maxsize // 2:   # drained: a new streak
                self._full = False
        except queue.Full:
            self.counts["dropped"] += 1
            if not self._full:          # once a streak, as for failures
                self._full = True
                print(f"sysdream: alert sink {self.name}: its queue of {self.q.maxsize} is "
                      "full; new alerts are dropped and counted until it drains",
                      file=sys.stderr, flush=True)

    def pending(self) -> int:
        return self.q.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.deliver(*item):
                self.sent()
            else:
                self.failed(self.why)

    def deliver(self, kind, priority, msg, fields, message_id) -> bool:
        """Send one alert; False (the reason in `self.why`) when it did not arrive."""
        raise NotImplementedError

    def close(self, drain_s: float = 2.0) -> None:
        end = time.monotonic() + drain_s
        while not self.q.empty() and time.monotonic() < end:
            time.sleep(0.02)
        self._stop.set()
        self.thread.join(timeout=max(0.1, end - time.monotonic() + 1))


class SyslogSink(QueuedSink):
    """RFC 5424 syslog to `host:port` over UDP (one datagram an alert, at most
    `max_bytes`), TCP (octet-counted frames, RFC 6587) or TLS (the same frames, RFC 5425;
    the receiver's certificate checked against `ca_file` or the system's CAs, and its
    name against the host); a stream is reconnected on failure."""
    name = "syslog"

    def __init__(self, address: str, protocol: str = "udp", facility: str = "authpriv",
                 capacity: int = 1000, max_bytes: int = 8192, timeout_s: float = 5.0,
                 kinds: tuple[str, ...] = ALERT_KINDS, ca_file: str = ""):
        self.host, _, port = address.rpartition(":")
        self.host = self.host.strip("[]")
        self.port, self.protocol = int(port), protocol
        self.facility, self.max_bytes, self.timeout = FACILITIES[facility], max_bytes, \
            timeout_s
        self._sock: socket.socket | None = None
        self.context = None
        if protocol == "tls":
            self.context = _tls_context(ca_file, "[alerts.syslog] ca_file")
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
        try:
            s.connect((self.host, self.port))
            if self.context is not None:
                s = self.context.wrap_socket(s, server_hostname=self.host)
        except BaseException:
            s.close()
            raise
        return s

    def deliver(self, kind, priority, msg, fields, message_id) -> bool:
        data = self.frame(kind, priority, msg, fields)
        if self.protocol != "udp":        # RFC 6587 and RFC 5425: octet counting
            data = f"{len(data)} ".encode() + data
        for attempt in range(2):        # a TCP peer that closed: one reconnection
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(data)
                return True
            except OSError as exc:     # ssl.SSLError is one
                self.why = f"{self.protocol}://{self.host}:{self.port}: " \
                    f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
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


def _tls_context(ca_file: str, key: str):
    import ssl

    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key} {ca_file}: cannot read it as PEM certificates ({exc}); "
                          "name a readable CA file, or \"\" for the system's CAs") from None


def _sd_escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _token(v: str, n: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most n, or "-"."""
    out = "".join(c for c in v if 33 <= ord(c) <= 126)[:n]
    return out or "-"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a new address: urllib would re-send the alert as a GET,
    with the Authorization header, to whatever host (and scheme) the receiver names."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None       # urllib then raises HTTPError(code)


def secret_lines(path: str, what: str) -> list[str]:
    """The "Name: value" lines of a file of webhook headers (blank lines and # comments
    passed over). The file holds credentials: one any user may read is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror}); the daemon's "
                          "user must be able to open it (under systemd: LoadCredential=)"
                          ) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o004:
            raise ConfigError(f"{what} {path}: readable by every user (mode "
                              f"{mode & 0o777:o}) and it holds credentials; chmod o-r it "
                              "(0600 or 0400, owned by the daemon's user) or hand it over "
                              "with LoadCredential=")
        text = f.read(1 << 16).decode("utf-8", "replace")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, _ = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            # the line itself is not shown: it may be a secret
            raise ConfigError(f"{what} {path}:{n}: not a \"Name: value\" header line")
        out.append(line)
    return out


def credential_path(name: str) -> str:
    """A systemd credential's file ($CREDENTIALS_DIRECTORY/NAME, LoadCredential=)."""
    base = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not base:
        raise ConfigError(f"[alerts.webhook] headers_credential = {name!r}, but no systemd "
                          "credentials were passed (no $CREDENTIALS_DIRECTORY); add "
                          f"LoadCredential={name}:/etc/sysdream/{name} to the unit, or use "
                          "headers_file")
    return os.path.join(base, name)


class WebhookSink(QueuedSink):
    """An HTTP(S) POST of each alert as JSON in format `fmt` (daemon/alerting/formats.py), retried
    with exponential backoff on a refused or timed-out connection, a 5xx or a 429, up to
    `retries` times; other 4xx are not retried. A redirect is never followed (counted
    failed). Each try waits at most `timeout_s`. Headers come from `headers` and from
    `headers_file` or a systemd credential, so that a token need not sit in the config."""
    name = "webhook"

    def __init__(self, url: str, fmt: str = "sysdream", headers: tuple[str, ...] = (),
                 timeout_s: float = 5.0, retries: int = 5, backoff_s: float = 1.0,
                 capacity: int = 1000, kinds: tuple[str, ...] = ALERT_KINDS,
                 ca_file: str = "", headers_file: str = "", headers_credential: str = ""):
        self.url, self.fmt, self.timeout = url, fmt, timeout_s
        self.retries, self.backoff = retries, backoff_s
        self.headers = {"Content-Type": "application/json",
                        "User-Agent": "sysdream"}
        lines = list(headers)
        if headers_file:
            lines += secret_lines(headers_file, "[alerts.webhook] headers_file")
        if headers_credential:
            lines += secret_lines(credential_path(headers_credential),
                                  "[alerts.webhook] headers_credential")
        for h in lines:
            k, _, v = h.partition(":")
            self.headers[k.strip()] = v.strip()
        handlers: list = [_NoRedirect()]
        if url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(
                context=_tls_context(ca_file, "[alerts.webhook] ca_file")))
        self.opener = urllib.request.build_opener(*handlers)
        super().__init__(capacity, kinds)

    def body(self, kind, priority, msg, fields, message_id) -> bytes:
        doc = shape(self.fmt, kind, priority, msg, fields, message_id)
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
                with self.opener.open(req, timeout=self.timeout) as r:
                    r.read(65536)
                return True
            except urllib.error.HTTPError as exc:
                exc.close()
                self.why = f"{self.url}: HTTP {exc.code}"
                if 300 <= exc.code < 400:
                    self.why += (f" redirect to {exc.headers.get('Location', '?')}, not "
                                 "followed; set url to the address that takes the POST")
                    return False
                if exc.code != 429 and exc.code < 500:
                    return False
            except (OSError, ValueError) as exc:
                self.why = f"{self.url}: {getattr(exc, 'reason', None) or exc}"
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

    def stats(self) -> list[SinkStats]:
        """What the metrics read at a scrape: each sink's deliveries by result and what
        waits in its queue."""
        return [SinkStats(s.name, {r: s.counts[r] for r in RESULTS}, s.pending())
                for s in list(self.sinks)]

    def close(self) -> None:
        for s in self.sinks:
            s.close()


RESULTS = ("sent", "failed", "dropped", "retried")


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of one sink: alerts and events by result (RESULTS), and how many wait
    in its queue (a network sink's; 0 for the others)."""
    name: str
    counts: dict[str, int]
    pending: int
