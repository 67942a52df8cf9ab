"""`sysdream server`: the fleet's scoring server.

ZeroMQ's load-balancing broker: a ROUTER socket the agents connect to (CurveZMQ, agents
admitted by their public key in the [server] agents folder) in front of ROUTER sockets
its workers connect to: the N worker processes it starts (worker.py) on a private ipc://
socket and, with [server] worker_bind, `sysdream worker`s on other machines over tcp://
(CurveZMQ, admitted by their key in [server] worker_keys). Each worker says it is ready
every second; the broker hands each request to the ready worker holding the fewest, and
forgets a worker it has not heard from in WORKER_SILENT_S. Replies go back the same way.
The broker checks every request against the schema (protocol.py) before a worker sees it,
keeps each agent's sequence in order, answers "busy" when no worker can take more, and
counts all of it by agent (the key's name) and by worker. A PUB socket (CurveZMQ too)
publishes fleet events: the server's start and, every 10 s, the models it holds. Exit
codes: 12 bad configuration or keys, 15 an endpoint it cannot bind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError
from ..exitcodes import FleetEndpointError
from ..service.runtime import on_signals
from . import protocol as wire
from .keys import allow_list, load_secret
from .roles import Roles, log, warn
from .servermetrics import INFER_BUCKETS, UNKNOWN, ServerCollector
from .worker import pick_device

HEARTBEAT_S = 10.0
MAX_INFLIGHT = 256      # requests with the workers before the broker answers "busy"
PER_WORKER = 64         # requests one worker holds at most
WORKER_SILENT_S = 10.0  # a worker not heard from for this long is forgotten


class Slot:
    """One worker the broker knows: where it is, what it holds, when it last spoke."""

    def __init__(self, sock, ident: bytes, name: str, index: int, remote: bool):
        self.sock, self.ident, self.name, self.index = sock, ident, name, index
        self.remote = remote
        self.inflight = 0
        self.seen = self.sent = time.monotonic()
        self.models: set[str] = set()


class Server:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        s = cfg.server
        self.allowed: dict[bytes, str] = {}
        self.refused: Counter = Counter()          # peers, by reason
        self.refused_keys: set[bytes] = set()
        self.rejected: Counter = Counter()         # messages, by code
        self.requests: Counter = Counter()         # (agent, result)
        self.windows: Counter = Counter()          # agent -> windows scored
        self.bytes_in: Counter = Counter()
        self.last_seen: dict[str, float] = {}
        self.seqs: OrderedDict = OrderedDict()     # routing id -> last seq
        self.inflight: dict[tuple, tuple] = {}     # (ident, seq) -> (agent, t0, Slot)
        self.infer = np.zeros(len(INFER_BUCKETS) + 1, np.int64)
        self.infer_sum = 0.0
        self.latency = np.zeros(len(INFER_BUCKETS) + 1, np.int64)
        self.latency_sum = 0.0
        self.worker_restarts = 0
        self.workers: list[subprocess.Popen | None] = [None] * s.workers
        self.slots: dict[tuple[bool, bytes], Slot] = {}   # (remote, routing id) -> worker
        self.worker_keys: dict[bytes, str] = {}
        self.dispatched: Counter = Counter()       # worker name -> requests handed to it
        self.workers_lost = 0
        self.said: set[bytes] = set()              # workers whose bad message was logged
        self.held: dict[str, str] = {}             # model id -> manifest sha256 (cached)
        self.held_at = -1e9
        self.lock = threading.Lock()
        self.stop = False
        self.reload = False
        self.device = s.device
        self.ctx = self.auth = self.front = self.back = self.pub = self.monitor = None
        self.wback = None
        self.http = None
        self.roles = Roles(cfg)
        self.rundir = None
        self.started = time.time()
        self.name = os.uname().nodename

    # -- ZAP: which agents may connect ------------------------------------------------
    def callback(self, domain: str, key: bytes) -> bool:
        """Called by the authenticator thread for each CURVE handshake: agents on the
        front socket, remote workers (ZAP domain "workers") on the workers' socket."""
        worker = domain == "workers"
        if key in (self.worker_keys if worker else self.allowed):
            return True
        with self.lock:
            self.refused["unknown-worker-key" if worker else "unknown-key"] += 1
            new = key not in self.refused_keys and len(self.refused_keys) < 10000
            self.refused_keys.add(key)
        if new:
            who, where = (("a worker", self.cfg.server.worker_keys) if worker
                          else ("an agent", self.cfg.server.agents))
            warn(f"refused {who} whose key {key.decode()[:12]}... is not in {where}")
        return False

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        s = self.cfg.server
        self.key_name, public, secret = load_secret(s.key)
        self.allowed = allow_list(s.agents, roles=self.roles.bound)
        if not self.allowed:
            warn(f"no agent keys in {s.agents} yet: every agent is refused until one is "
                "there (reload with SIGHUP)")
        for folder in (s.models, s.baselines):
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.device = pick_device(s.device, "server")
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        for domain in ("*", "workers"):    # agents; remote workers (zap_domain below)
            self.auth.configure_curve_callback(domain=domain, credentials_provider=self)
        self.front = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.front, self.pub):
            sock.curve_server = True
            sock.curve_secretkey, sock.curve_publickey = secret, public
            sock.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
        self.front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.front.setsockopt(zmq.RCVHWM, 1000)
        self.monitor = self.front.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_DISCONNECTED)
        for sock, where, key in ((self.front, s.bind, "bind"), (self.pub, s.publish,
                                                                 "publish")):
            try:
                sock.bind(where)
            except zmq.ZMQError as exc:
                raise FleetEndpointError(f"[server] {key} {where}: {exc}; stop what holds "
                                         "it or choose another address") from None
        self.rundir = tempfile.mkdtemp(prefix="sysdream-server-")   # 0700
        self.back = self.ctx.socket(zmq.ROUTER)
        self.backend = f"ipc://{self.rundir}/workers"
        socks = [(self.back, self.backend, None)]
        if s.worker_bind:
            self.worker_keys = allow_list(s.worker_keys, "workers'")
            self.wback = self.ctx.socket(zmq.ROUTER)
            self.wback.curve_server = True
            self.wback.curve_secretkey, self.wback.curve_publickey = secret, public
            self.wback.zap_domain = b"workers"
            self.wback.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
            socks.append((self.wback, s.worker_bind, "worker_bind"))
        for sock, where, key in socks:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.SNDHWM, MAX_INFLIGHT * 4)
            try:
                sock.bind(where)
            except zmq.ZMQError as exc:
                raise FleetEndpointError(f"[server] {key} {where}: {exc}; stop what holds "
                                         "it or choose another address") from None
        for i in range(len(self.workers)):
            self._spawn(i)
        from prometheus_client import CollectorRegistry

        from ..metrics.collector import Collector
        from ..metrics.server import serve_http
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(ServerCollector(self).collect))
        try:
            self.http = serve_http(self.registry, s.metrics_address, s.metrics_port,
                                   self.health)
        except OSError as exc:
            from ..exitcodes import MetricsPortError
            raise MetricsPortError(f"metrics endpoint {s.metrics_address}:"
                                   f"{s.metrics_port}: {exc.strerror or exc}; set [server] "
                                   "metrics_port") from None
        self.metrics_port = self.http.server_address[1]
        remote = (f", remote workers on {s.worker_bind} ({len(self.worker_keys)} keys)"
                  if s.worker_bind else "")
        log(f"listening on {s.bind} (fleet events on {s.publish}) as {self.key_name}, "
            f"{len(self.allowed)} agent keys, {len(self.workers)} workers on "
            f"{self.device}{remote}, models in {s.models}, metrics on "
            f"{s.metrics_address}:{self.metrics_port}")

    def _spawn(self, i: int) -> None:
        s = self.cfg.server
        cmd = [sys.executable, "-m", "sysdream.daemon.fleet.worker", "--backend",
               self.backend, "--models", s.models, "--device", self.device, "--batch",
               str(s.batch_windows), "--index", str(i),
               "--log-level", self.cfg.service.log_level]
        self.workers[i] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    # -- the broker loop --------------------------------------------------------------
    def run(self) -> int:
        import zmq
        on_signals(lambda: setattr(self, "stop", True), lambda: setattr(self, "reload", True))
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        backs = [b for b in (self.back, self.wback) if b is not None]
        for sock in (*backs, self.monitor):
            poller.register(sock, zmq.POLLIN)
        next_beat = next_tick = 0.0
        self._event("server-started")
        while not self.stop:
            ready = dict(poller.poll(200))
            if self.front in ready:
                for _ in range(256):
                    try:
                        frames = self.front.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._from_agent(frames)
            for sock in backs:
                if sock not in ready:
                    continue
                for _ in range(256):
                    try:
                        frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._from_worker(sock, frames)
            if self.monitor in ready:
                self._monitor_events()
            now = time.monotonic()
            if self.reload:
                self.reload = False
                self._reload()
            if now >= next_tick:
                next_tick = now + 1.0
                self.roles.tick(self._publish_model)
                self._check_workers()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                self._event("heartbeat")
        log("stopping")
        return 0

    def _agent_of(self, frame) -> str:
        try:
            user = frame.get("User-Id")
        except Exception:  # noqa: BLE001 (no ZAP metadata: not an authenticated peer)
            user = None
        return self.allowed.get(user.encode(), UNKNOWN) if user else UNKNOWN

    def _from_agent(self, frames) -> None:
        import zmq
        ident = frames[0].bytes
        agent = self._agent_of(frames[1]) if len(frames) > 1 else UNKNOWN
        body = [f.bytes for f in frames[1:]]
        with self.lock:
            self.bytes_in[agent] += sum(len(b) for b in body)
            self.last_seen[agent] = time.monotonic()
        try:
            m = wire.decode(body, ("score", "baseline", "fetch"))
        except wire.ProtocolError as exc:
            self._reject(ident, agent, -1, exc.code, str(exc))
            return
        seq = m.header["seq"]
        last = self.seqs.get(ident)
        if last is not None and seq <= last:
            self._reject(ident, agent, seq, "order", f"request {seq} after {last}")
            return
        self.seqs[ident] = seq
        self.seqs.move_to_end(ident)
        while len(self.seqs) > 100000:
            self.seqs.popitem(last=False)
        if m.type != "score":
            self._learning(ident, agent, m)
            return
        if agent == UNKNOWN:        # a key revoked since it connected (SIGHUP)
            self._reject(ident, agent, seq, "refused", "this agent's key is not allowed")
            return
        if len(self.inflight) >= MAX_INFLIGHT:
            self._reject(ident, agent, seq, "busy", "every worker is busy")
            return
        while (slot := self._pick()) is not None:
            try:
                slot.sock.send_multipart([slot.ident, ident, *body], flags=zmq.NOBLOCK)
                break
            except (zmq.Again, zmq.ZMQError):   # gone (ROUTER_MANDATORY) or full
                self._forget(slot, "it cannot be reached")
        if slot is None:
            self._reject(ident, agent, seq, "busy", "no worker can take it")
            return
        slot.inflight += 1
        slot.sent = time.monotonic()
        with self.lock:
            self.dispatched[slot.name] += 1
        self.inflight[(ident, seq)] = (agent, slot.sent, slot)

    def _pick(self) -> Slot | None:
        """The ready worker holding the fewest requests (the least recently given one of
        those), or None when every one holds PER_WORKER."""
        best = None
        for slot in self.slots.values():
            if slot.inflight < PER_WORKER and (
                    best is None or (slot.inflight, slot.sent) < (best.inflight, best.sent)):
                best = slot
        return best

    def _forget(self, slot: Slot, why: str) -> None:
        """Drop a worker; the requests it held are never answered (their agents have
        scored them locally after [fleet] timeout_ms)."""
        key = (slot.remote, slot.ident)
        if self.slots.get(key) is not slot:
            return
        del self.slots[key]
        for k in [k for k, v in self.inflight.items() if v[2] is slot]:
            del self.inflight[k]
        if slot.remote:
            with self.lock:
                self.workers_lost += 1
        warn(f"worker {slot.name} forgotten: {why}")

    def _learning(self, ident: bytes, agent: str, m: wire.Message) -> None:
        """A baseline part in, or a role's model out (roles.py), in the broker itself."""
        h = m.header
        try:
            if agent == UNKNOWN:
                raise wire.ProtocolError("refused", "no key name for this agent")
            self.roles.check(agent, h["role"])
            if m.type == "baseline":
                complete, _ = self.roles.store(agent, m)
                reply = wire.encode("stored", {"seq": h["seq"], "part": h["part"],
                                               "parts": h["parts"], "complete": complete})
            else:
                mid, sha, files = self.roles.bundle(h["role"], h["have"])
                reply = wire.encode("bundle", {"seq": h["seq"], "role": h["role"],
                                               "model": mid, "sha256": sha,
                                               "names": list(files),
                                               "sizes": [len(b) for b in files.values()]},
                                    **files)
        except wire.ProtocolError as exc:
            self._reject(ident, agent, h["seq"], exc.code, str(exc))
            return
        except OSError as exc:
            self._reject(ident, agent, h["seq"], "internal", f"{exc.strerror or exc}")
            return
        with self.lock:
            self.requests[(agent, "ok")] += 1
        self._send(ident, reply)

    def _publish_model(self, role: str, model_id: str, sha: str) -> None:
        from ..version import version
        self.pub.send_multipart([wire.TOPIC, *wire.encode(
            "event", {"kind": "model", "server": self.name, "version": version(),
                      "models": [], "time": time.time(), "role": role, "model": model_id,
                      "sha256": sha})])

    def _reject(self, ident: bytes, agent: str, seq: int, code: str, reason: str) -> None:
        with self.lock:
            self.rejected[code] += 1
            self.requests[(agent, f"refused-{code}")] += 1
        self._send(ident, wire.error(seq, code, reason))

    def _send(self, ident: bytes, frames: list[bytes]) -> None:
        import zmq
        try:
            self.front.send_multipart([ident, *frames], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):   # the agent is gone (ROUTER_MANDATORY)
            with self.lock:
                self.rejected["undeliverable"] += 1

    def _from_worker(self, sock, frames) -> None:
        if len(frames) < 3:
            return
        remote = sock is self.wback
        wid = frames[0].bytes
        key = (remote, wid)
        body = [f.bytes for f in frames[2:]]
        if frames[1].bytes == b"":              # the worker's own: ready, or want
            self._control(sock, frames, key, body)
            return
        slot = self.slots.get(key)
        if slot is not None:
            slot.seen = time.monotonic()
        ident = frames[1].bytes
        try:
            m = wire.decode(body, ("scores", "error"))
        except wire.ProtocolError:
            with self.lock:
                self.rejected["worker-malformed"] += 1
            return
        seq = m.header["seq"]
        held = self.inflight.get((ident, seq))
        if held is None or held[2] is not slot:     # a reply it was never asked for
            with self.lock:
                self.rejected["worker-unasked"] += 1
            return
        agent, t0, holder = self.inflight.pop((ident, seq))
        holder.inflight -= 1
        with self.lock:
            if m.type == "scores":
                self.requests[(agent, "ok")] += 1
                self.windows[agent] += m.header["rows"]
                ms = m.header["infer_ms"] / 1000
                self.infer[np.searchsorted(INFER_BUCKETS, ms)] += 1
                self.infer_sum += ms
            else:
                self.requests[(agent, f"refused-{m.header['code']}")] += 1
                self.rejected[m.header["code"]] += 1
            if t0 is not None:
                took = time.monotonic() - t0
                self.latency[np.searchsorted(INFER_BUCKETS, took)] += 1
                self.latency_sum += took
        self._send(ident, body)

    def _control(self, sock, frames, key: tuple[bool, bytes], body: list[bytes]) -> None:
        """A worker says it is ready (registered, or its heartbeat), or asks for a model
        (a remote worker: the server's models folder is not on its machine)."""
        import zmq
        remote, wid = key
        try:
            m = wire.decode(body, ("ready", "want"))
        except wire.ProtocolError as exc:
            with self.lock:
                self.rejected["worker-malformed"] += 1
            if wid not in self.said and len(self.said) < 10000:   # once a worker (each
                self.said.add(wid)                                # second it says ready)
                warn(f"a worker's message refused: {exc}")
            return
        slot = self.slots.get(key)
        if m.type == "ready":
            h = m.header
            if slot is None:
                if remote:
                    name = self.worker_keys.get(
                        (frames[1].get("User-Id") or "").encode(), UNKNOWN)
                else:
                    name = f"local-{h['index']}"
                slot = self.slots[key] = Slot(sock, wid, name, h["index"], remote)
                log(f"worker {name} ready ({h['device']}, sysdream {h['version'][:40]})")
            slot.seen = time.monotonic()
            slot.models = set(h["models"])
            if remote and set(self._held()) - slot.models:
                reply = wire.encode("models", {"models": sorted(
                    [mid, sha] for mid, sha in self._held().items())})
            else:
                return
        else:
            if not remote or slot is None:
                return
            reply = self._bundle_of(m.header["model"])
            if reply is None:
                return
        try:
            sock.send_multipart([wid, b"", *reply], flags=zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            pass

    def _held(self) -> dict[str, str]:
        """{model id: manifest sha256} of the bundles in [server] models (rescanned at most
        every 2 s)."""
        now = time.monotonic()
        if now - self.held_at > 2:
            held = {mid: sha for _, mid, sha in self.roles.published() if wire._model_id(mid)}
            self.held, self.held_at = dict(list(held.items())[:wire.MAX_MODELS]), now
        return self.held

    def _bundle_of(self, model_id: str) -> list[bytes] | None:
        """The `bundle` message of a model the server holds, for a remote worker."""
        for folder, mid, _ in self.roles.published():
            if mid != model_id:
                continue
            try:
                mid, sha, files = self.roles.bundle(folder, "")
            except (wire.ProtocolError, OSError):
                return None
            role = folder if set(folder) <= wire.ROLE_CHARS and len(folder) <= 64 else "-"
            return wire.encode("bundle", {"seq": 0, "role": role, "model": mid,
                                          "sha256": sha, "names": list(files),
                                          "sizes": [len(b) for b in files.values()]},
                               **files)
        return None

    def _monitor_events(self) -> None:
        import zmq
        from zmq.utils.monitor import recv_monitor_message
        while self.monitor.poll(0):
            ev = recv_monitor_message(self.monitor)["event"]
            if ev in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                      zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                with self.lock:
                    self.refused["handshake"] += 1

    def _event(self, kind: str) -> None:
        from ..version import version
        models = sorted(p.parent.name for p in Path(self.cfg.server.models).glob(
            "*/manifest.json") if not p.parent.name.startswith("."))[:100]
        self.pub.send_multipart([wire.TOPIC, *wire.encode(
            "event", {"kind": kind, "server": self.name, "version": version(),
                      "models": models, "time": time.time()})])

    def _check_workers(self) -> None:
        for i, w in enumerate(self.workers):
            if w is not None and w.poll() is not None:
                warn(f"worker {i} exited ({w.returncode}); starting it again")
                for slot in [s for s in self.slots.values()
                             if not s.remote and s.index == i]:
                    self._forget(slot, "its process exited")
                with self.lock:
                    self.worker_restarts += 1
                self._spawn(i)
        now = time.monotonic()
        for slot in [s for s in self.slots.values() if now - s.seen > WORKER_SILENT_S]:
            self._forget(slot, f"not heard from in {WORKER_SILENT_S:g} s")
        # requests a worker took and never answered: forgotten after a minute
        for k in [k for k, v in self.inflight.items() if v[1] < now - 60]:
            v = self.inflight.pop(k)
            v[2].inflight -= 1

    def _reload(self) -> None:
        try:
            bound: dict[str, str] = {}
            # a revoked key's connection stays open (ZeroMQ keeps it), but every request
            # it sends now comes from an unknown agent and is refused
            self.allowed = allow_list(self.cfg.server.agents, roles=bound)
            self.roles.bound = bound
            log(f"reloaded: {len(self.allowed)} agent keys")
        except ConfigError as exc:
            warn(f"reload refused, keeping {len(self.allowed)} agent keys: {exc}")
        if self.wback is not None:
            try:
                self.worker_keys = allow_list(self.cfg.server.worker_keys, "workers'")
                log(f"reloaded: {len(self.worker_keys)} worker keys")
            except ConfigError as exc:
                warn(f"reload refused, keeping {len(self.worker_keys)} worker keys: {exc}")
        for role, mid, sha in self.roles.published():     # announced again
            self._publish_model(role, mid, sha)

    def health(self) -> dict:
        alive = self._alive()
        return {"healthy": alive > 0, "workers_alive": alive, "workers": len(self.workers),
                "agents": len(self.allowed), "device": self.device}

    def _alive(self, remote: bool | None = None) -> int:
        """Workers ready: heard from lately (and, a local one, its process running)."""
        now = time.monotonic()
        n = 0
        for s in list(self.slots.values()):
            if remote is not None and s.remote != remote or now - s.seen > WORKER_SILENT_S:
                continue
            if not s.remote:
                w = self.workers[s.index] if 0 <= s.index < len(self.workers) else None
                if w is None or w.poll() is not None:
                    continue
            n += 1
        return n

    def close(self) -> None:
        self.roles.close()
        for w in self.workers:
            if w is not None and w.poll() is None:
                w.terminate()
        for w in self.workers:
            if w is not None:
                try:
                    w.wait(10)
                except subprocess.TimeoutExpired:
                    w.kill()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.auth is not None:
            self.auth.stop()
        for sock in (self.front, self.back, self.wback, self.pub, self.monitor):
            if sock is not None:
                sock.close(0)
        if self.ctx is not None:
            self.ctx.term()
        if self.rundir:
            for p in Path(self.rundir).iterdir():
                p.unlink(missing_ok=True)
            os.rmdir(self.rundir)


def run(cfg: Config) -> int:
    from ..service import logs
    logs.setup(cfg.service.log_level)
    srv = Server(cfg)
    try:
        srv.start()
        return srv.run()
    finally:
        srv.close()
