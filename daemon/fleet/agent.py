"""The agent's side of the fleet: the scorer thread's remote inference.

`Remote.score()` is called by the scorer thread (daemon/detect/scorer.py, Scorer.infer) with
the spans the known-window cache missed. It sends them to the server on a DEALER socket
(CURVE, the server's public key pinned) and waits at most `timeout_ms` for the verdict.
When the server does not answer in time, refuses, or is not connected, it returns None
and the scorer scores with the local copy of the model; after a failure the local model
scores for `retry_s` before the server is asked again. Nothing is buffered beyond one
request: while the server is away the daemon's own bounded window queue holds what waits
and sheds what overflows (counted, sysdream_windows_shed_total), and the local model keeps
it moving. Every outcome is counted (docs/metrics.md, "Fleet agent").
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..service import logs
from . import protocol as wire
from .keys import load_public, load_secret

RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def events_of(server: str) -> str:
    """The fleet server's PUB address when not configured: its host, its port + 1."""
    host, _, port = server.rpartition(":")
    return f"{host}:{int(port) + 1}"


def log(msg: str, level: int = logging.INFO) -> None:
    """The agent's lines go with its daemon's, as `fleet: ...` (service/logs.py)."""
    logs.log(f"fleet: {msg}", level)


def warn(msg: str) -> None:
    log(msg, logging.WARNING)


class Remote:
    def __init__(self, server: str, server_key: str, key: str, role: str,
                 timeout_ms: int = 250, retry_s: float = 5.0):
        import zmq

        from ..version import version
        self.endpoint, self.role = server, role
        self.server_name, self.server_public = load_public(server_key)
        self.key_path = key
        self.name, public, secret = load_secret(key)
        self.timeout_ms, self.retry_s = timeout_ms, retry_s
        self.version = version()
        self.hostname = socket.gethostname()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.curve_secretkey, self.sock.curve_publickey = secret, public
        self.sock.curve_serverkey = self.server_public
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)      # no queue for a server not connected
        self.sock.setsockopt(zmq.SNDHWM, 4)
        self.sock.setsockopt(zmq.RCVHWM, 64)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 200)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.sock.connect(server)
        self.seq = 0
        self.connected = False
        self.ever_connected = False
        self.down_until = 0.0
        self.down_since: float | None = time.monotonic()   # not connected yet
        self.fallback_s = 0.0
        self.lock = threading.Lock()
        self.counts: Counter = Counter()      # requests by result
        self.fallback: Counter = Counter()    # windows scored locally, by reason
        self.windows_sent = self.verdicts = self.bytes_sent = self.bytes_received = 0
        self.reconnects = self.stale = 0
        self.rtt_buckets = np.zeros(len(RTT_BUCKETS) + 1, np.int64)   # last: +Inf
        self.rtt_sum = 0.0
        self.last_refusal = ""
        self._stop = threading.Event()
        # the monitor socket belongs to this thread alone (ZeroMQ sockets are not shared)
        self._watcher = threading.Thread(target=self._watch, name="sysdream-fleet-monitor",
                                         daemon=True)
        self._watcher.start()

    # -- the scorer thread's call ------------------------------------------------------
    def score(self, model, tokens: np.ndarray, valid: np.ndarray,
              starts: np.ndarray) -> np.ndarray | None:
        """The server's scores of these spans (requests of at most MAX_ROWS), or None
        when any part of them does not come back in time."""
        n = len(tokens)
        if not self.connected or time.monotonic() < self.down_until:
            self._fallback("unreachable" if not self.connected else "backoff", n)
            return None
        out = []
        for lo in range(0, n, wire.MAX_ROWS):
            hi = min(n, lo + wire.MAX_ROWS)
            got = self._request(model, tokens[lo:hi], valid[lo:hi], starts[lo:hi])
            if got is None:
                if lo:       # the parts already scored were not used: count them so
                    self._fallback("partial", lo)
                return None
            out.append(got)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _request(self, model, tokens: np.ndarray, valid: np.ndarray,
                 starts: np.ndarray) -> np.ndarray | None:
        import zmq
        n = len(tokens)
        self.seq += 1
        frames = wire.encode("score", {"seq": self.seq, "model": model.model_id, "rows": n,
                                       "span": int(tokens.shape[1]), "role": self.role,
                                       "version": self.version},
                             tokens=tokens, valid=valid, starts=starts)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._failed("unreachable", n)
            return None
        size = sum(len(f) for f in frames)
        with self.lock:
            self.windows_sent += n
            self.bytes_sent += size
        t0 = time.monotonic()
        deadline = t0 + self.timeout_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(max(1, int(left * 1000))):
                self._failed("timeout", n)
                return None
            reply = self.sock.recv_multipart()
            with self.lock:
                self.bytes_received += sum(len(f) for f in reply)
            try:
                m = wire.decode(reply, ("scores", "error"))
            except wire.ProtocolError as exc:
                self._refused(exc.code, str(exc), n)
                return None
            if m.header["seq"] != self.seq:
                with self.lock:
                    self.stale += 1     # the answer to a request that timed out
                continue
            if m.type == "error":
                self._refused(m.header["code"], m.header["reason"], n)
                return None
            if m.header["rows"] != n or m.header["model"] != model.model_id:
                self._refused("malformed", "a verdict for other windows", n)
                return None
            with self.lock:
                self.counts["ok"] += 1
                self.verdicts += n
                rtt = time.monotonic() - t0
                self.rtt_buckets[np.searchsorted(RTT_BUCKETS, rtt)] += 1
                self.rtt_sum += rtt
            return m.arrays["scores"].astype(np.float32)

    # -- outcomes ------------------------------------------------------------------------
    def _fallback(self, reason: str, n: int) -> None:
        with self.lock:
            self.fallback[reason] += n

    def _failed(self, result: str, n: int) -> None:
        with self.lock:
            self.counts[result] += 1
            self.fallback[result] += n
        self.down_until = time.monotonic() + self.retry_s

    def _refused(self, code: str, reason: str, n: int) -> None:
        with self.lock:
            self.counts[f"refused-{code}" if code in wire.CODES else "refused-malformed"] += 1
            self.fallback["refused"] += n
        if reason != self.last_refusal:
            warn(f"the server refused a request ({code}): {reason}; scoring with the local "
                f"model for {self.retry_s:g} s")
            self.last_refusal = reason
        self.down_until = time.monotonic() + self.retry_s

    def _watch(self) -> None:
        """Connection events from the socket monitor, as they come."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message
        while not self._stop.is_set():
            try:
                if not self.monitor.poll(200):
                    continue
                ev = recv_monitor_message(self.monitor)["event"]
            except zmq.ZMQError:
                return
            now = time.monotonic()
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.ever_connected:
                    with self.lock:
                        self.reconnects += 1
                    log(f"reconnected to the server {self.endpoint}")
                else:
                    log(f"connected to the server {self.endpoint} ({self.server_name})")
                self.ever_connected = self.connected = True
                self.down_until = 0.0
                if self.down_since is not None:
                    with self.lock:
                        self.fallback_s += now - self.down_since
                    self.down_since = None
            elif ev == zmq.EVENT_DISCONNECTED:
                if self.connected:
                    warn(f"lost the server {self.endpoint}; the local model scores until it "
                        "is back")
                self.connected = False
                if self.down_since is None:
                    self.down_since = now
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                with self.lock:
                    self.counts["handshake-failed"] += 1
                if self.counts["handshake-failed"] == 1:
                    warn(f"the server {self.endpoint} refused this agent's key, or is not "
                        f"the server of {self.server_name}.curve; scoring locally")

    def stats(self) -> dict:
        """A consistent copy for the metrics collector."""
        with self.lock:
            fallback_s = self.fallback_s + (time.monotonic() - self.down_since
                                            if self.down_since is not None else 0.0)
            return {"requests": dict(self.counts), "fallback": dict(self.fallback),
                    "windows_sent": self.windows_sent, "verdicts": self.verdicts,
                    "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
                    "reconnects": self.reconnects, "stale": self.stale,
                    "connected": self.connected, "fallback_s": fallback_s,
                    "rtt_buckets": np.cumsum(self.rtt_buckets).tolist(),
                    "rtt_sum": self.rtt_sum}

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(2)
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()     # after Control.close(): its sockets share this context


def collect(remote: Remote, control: Control | None = None):
    """The agent's fleet metrics (docs/metrics.md, "Fleet agent"), read at scrape time."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    s = remote.stats()
    req = CounterMetricFamily("sysdream_fleet_requests", "Requests to the fleet server, by "
                              "result (ok, timeout, unreachable, refused-CODE, "
                              "handshake-failed).", labels=["result"])
    for k, v in sorted(s["requests"].items()):
        req.add_metric([k], v)
    yield req
    fb = CounterMetricFamily("sysdream_fleet_fallback_windows", "Windows scored by the "
                             "local model instead of the server, by reason.",
                             labels=["reason"])
    for k, v in sorted(s["fallback"].items()):
        fb.add_metric([k], v)
    yield fb
    for name, doc, key in (
            ("sysdream_fleet_windows_sent", "Windows sent to the server.", "windows_sent"),
            ("sysdream_fleet_verdicts", "Window scores received from the server.",
             "verdicts"),
            ("sysdream_fleet_sent_bytes", "Bytes sent to the server.", "bytes_sent"),
            ("sysdream_fleet_received_bytes", "Bytes received from the server.",
             "bytes_received"),
            ("sysdream_fleet_reconnects", "Connections to the server made again after "
             "one was lost.", "reconnects"),
            ("sysdream_fleet_stale_replies", "Verdicts that came after their request had "
             "timed out (dropped).", "stale"),
            ("sysdream_fleet_fallback_seconds", "Time without a connection to the server "
             "(the local model scoring).", "fallback_s")):
        yield CounterMetricFamily(name, doc, value=s[key])
    yield GaugeMetricFamily("sysdream_fleet_connected", "1 while connected to the server.",
                            value=int(s["connected"]))
    buckets = [(f"{b:g}", c) for b, c in zip(RTT_BUCKETS, s["rtt_buckets"], strict=False)]
    buckets.append(("+Inf", s["rtt_buckets"][-1]))
    yield HistogramMetricFamily("sysdream_fleet_rtt_seconds", "From a request sent to its "
                                "verdict received.", buckets=buckets, sum_value=s["rtt_sum"])
    info = GaugeMetricFamily("sysdream_fleet_agent_info", "This agent: its key's name, "
                             "role and server.", labels=["agent", "role", "server"])
    info.add_metric([remote.name, remote.role, remote.endpoint], 1)
    yield info
    fam = CounterMetricFamily("sysdream_fleet_learning_events", "Fleet learning, by event: "
                              "uploads, uploads-failed (baselines sent), announced (role "
                              "models the server published), bundles, bundles-refused "
                              "(fetched), events-refused.", labels=["event"])
    counts = control.stats() if control is not None else {}
    for k in ("uploads", "uploads-failed", "announced", "bundles", "bundles-refused",
              "events-refused"):
        fam.add_metric([k], counts.get(k, 0))
    yield fam


class Control:
    """The agent's fleet learning, on a thread and sockets of its own (the scorer's socket
    is the scorer thread's alone): its baseline sent to the server in parts, the role's
    model fetched when the server announces one (SUB) or every `fetch_s`, checked (the
    manifest's sha256 against the one announced and the one sent; the files' against the
    manifest when the service loads it) and left in a folder for the main loop to take."""

    def __init__(self, remote: Remote, events: str, state_dir, fetch_s: float = 30.0):
        import zmq
        self.remote, self.role, self.fetch_s = remote, remote.role, fetch_s
        self.state_dir = Path(state_dir)
        _, public, secret = load_secret(remote.key_path)
        self.ctx = remote.ctx
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sub = self.ctx.socket(zmq.SUB)
        for sock in (self.sock, self.sub):
            sock.curve_secretkey, sock.curve_publickey = secret, public
            sock.curve_serverkey = remote.server_public
            sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_BUNDLE + (1 << 20))
        self.sub.setsockopt(zmq.MAXMSGSIZE, wire.MAX_HEADER + 64)
        self.sub.setsockopt(zmq.SUBSCRIBE, wire.TOPIC)
        self.sock.connect(remote.endpoint)
        self.sub.connect(events)
        self.seq = 0
        self.lock = threading.Lock()
        self.have = ""              # the model in use (its id)
        self.pending = ""           # fetched, waiting for the main loop to take or refuse
        self.fetching = False       # asking for the role's model
        self.active = False         # taking the role's models at all (want() called)
        self.uploads: list[Path] = []
        self.ready: Path | None = None
        self.announced: dict[str, str] = {}    # model id -> sha256 announced
        self.last = ""                         # the model id of the last bundle fetched
        self.refused_ids: set[str] = set()     # fetched and refused by the service
        self.counts: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sysdream-fleet-control",
                                        daemon=True)
        self._thread.start()

    # -- what the main loop calls -------------------------------------------------------
    def upload(self, path: Path) -> None:
        with self.lock:
            self.uploads.append(Path(path))

    def want(self, have: str) -> None:
        """Fetch the role's model when it is not `have` (the model in use, "" for none)."""
        with self.lock:
            self.have, self.fetching, self.active = have, True, True
            self.pending = ""

    def refused(self) -> None:
        """The service refused the last bundle: not fetched again until another model is
        announced (or, without a model, at the next periodic fetch)."""
        with self.lock:
            self.refused_ids.add(self.last)
            self.counts["bundles-refused"] += 1
            self.fetching = not self.have
            self.pending = ""

    def take(self) -> Path | None:
        with self.lock:
            ready, self.ready = self.ready, None
            return ready

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counts)

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        import zmq
        next_fetch = 0.0
        while not self._stop.is_set():
            try:
                if self.sub.poll(200):
                    self._event(self.sub.recv_multipart())
                    next_fetch = 0.0 if self._announced_new() else next_fetch
                with self.lock:
                    upload = self.uploads[0] if self.uploads else None
                    fetching = self.fetching
                if upload is not None and self._upload(upload):
                    with self.lock:
                        self.uploads.pop(0)
                if fetching and time.monotonic() >= next_fetch:
                    next_fetch = time.monotonic() + self.fetch_s
                    self._fetch()
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                time.sleep(1)

    def _event(self, frames: list[bytes]) -> None:
        try:
            m = wire.decode(frames[1:], ("event",))
        except wire.ProtocolError:
            with self.lock:
                self.counts["events-refused"] += 1
            return
        h = m.header
        if h["kind"] != "model" or h.get("role") != self.role:
            return
        mid, sha = h.get("model"), h.get("sha256")
        if isinstance(mid, str) and isinstance(sha, str) and len(sha) == 64:
            with self.lock:
                self.announced[mid] = sha
                self.counts["announced"] += 1
                if self.active and self._new(mid):
                    self.fetching = True

    def _announced_new(self) -> bool:
        with self.lock:
            return self.active and any(self._new(mid) for mid in self.announced)

    def _new(self, mid: str) -> bool:
        """A model announced that is neither in use, nor fetched and waiting to be taken
        (announcements repeat every 10 s), nor refused. Called with the lock held."""
        return mid not in (self.have, self.pending) and mid not in self.refused_ids

    def _ask(self, frames: list[bytes], expect: tuple[str, ...], timeout_s: float):
        """Send and wait for the reply to this request (older replies dropped)."""
        self.sock.send_multipart(frames)
        seq = json.loads(frames[0])["seq"]
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            try:
                m = wire.decode(self.sock.recv_multipart(), (*expect, "error"))
            except wire.ProtocolError:
                continue
            if m.header["seq"] == seq:
                return m
        return None

    def _upload(self, path: Path) -> bool:
        from ..version import version
        try:
            data = path.read_bytes()
        except OSError as exc:
            warn(f"the baseline {path} cannot be read ({exc.strerror}); not sent")
            return True
        sha = hashlib.sha256(data).hexdigest()
        parts = max(1, -(-len(data) // wire.MAX_PART))
        if parts > wire.MAX_PARTS:
            warn(f"the baseline {path} is over {wire.MAX_PARTS * wire.MAX_PART >> 20} MiB; "
                "not sent (lower [learning] max_syscalls)")
            return True
        for i in range(parts):
            chunk = np.frombuffer(data[i * wire.MAX_PART:(i + 1) * wire.MAX_PART], np.uint8)
            self.seq += 1
            m = self._ask(wire.encode("baseline", {
                "seq": self.seq, "role": self.role, "version": version(), "part": i,
                "parts": parts, "bytes": len(chunk), "sha256": sha}, data=chunk),
                ("stored",), 60)
            if m is None or m.type == "error":
                why = "no answer" if m is None else m.header["reason"]
                warn(f"sending the baseline failed at part {i + 1} of {parts} ({why}); "
                    f"again in {self.fetch_s:g} s")
                with self.lock:
                    self.counts["uploads-failed"] += 1
                time.sleep(min(self.fetch_s, 5))
                return False
        log(f"baseline sent to the server for role {self.role} ({len(data)} bytes); the "
            "role's model comes from the server")
        with self.lock:
            self.counts["uploads"] += 1
        return True

    def _fetch(self) -> None:
        import tempfile

        from ..version import version
        self.seq += 1
        with self.lock:
            have = self.have
        m = self._ask(wire.encode("fetch", {"seq": self.seq, "role": self.role,
                                            "version": version(), "have": have}),
                      ("bundle",), 60)
        if m is None or m.type == "error":
            return
        h = m.header
        with self.lock:
            self.last = h["model"]
            if h["model"] in self.refused_ids:
                self.fetching = not self.have
                return
        manifest = m.arrays["manifest.json"]
        with self.lock:
            announced = self.announced.get(h["model"])
        sha = hashlib.sha256(manifest).hexdigest()
        if sha != h["sha256"] or (announced is not None and sha != announced):
            warn(f"refused the role's model {h['model'][:16]}: its manifest is not the one "
                "announced; the model in use stays")
            with self.lock:
                self.counts["bundles-refused"] += 1
            return
        folder = Path(tempfile.mkdtemp(prefix=".fleet-", dir=self.state_dir))
        for name, data in m.arrays.items():
            (folder / name).write_bytes(data)
        with self.lock:
            self.counts["bundles"] += 1
            stale, self.ready = self.ready, folder
            self.pending = h["model"]
            self.fetching = False
        if stale is not None:       # a newer model came before the main loop took this one
            shutil.rmtree(stale, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(0)
        self.sub.close(0)
