"""One inference worker of the fleet server: a process the server starts (ipc://, the
server's models folder), or `sysdream worker` on another machine (tcp:// with CurveZMQ to
[server] worker_bind; it fetches the server's models into its own folder).

It holds a DEALER socket connected to the broker's backend, says it is ready every
second (the broker forgets a worker it has not heard from), and answers `score` requests:
it takes every request already waiting (up to `batch` windows, from any agents), groups
them by model, scores each group in one inference on its device (CUDA when torch sees a
GPU and the server asks for it, the CPU otherwise) and replies to each request alone.
Requests reach it checked by the broker; what only the model can check (a token outside
its vocabulary, a span of another geometry, a model it does not hold) is answered with an
error, never raised.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..service import logs
from . import protocol as wire

# a worker's lines: `sysdream worker: ...` on stderr, or journald with their priority and
# LOGGER=sysdream.worker (service/logs.py; a local worker writes to its server's stderr)
LOG = logging.getLogger("sysdream.worker")


def log(msg: str, level: int = logging.INFO) -> None:
    logs.log(msg, level, LOG)


# Windows in one forward pass on the CPU: the requests gathered (up to [server]
# batch_windows) are scored in passes of this many. With one torch thread a pass of 4096
# windows scores half as many a second as passes of 256 (DReAM, window 16, hidden 32:
# the activations outgrow the cache); on CUDA one pass takes them all.
CPU_PASS = 256


def pick_device(want: str, section: str) -> str:
    """The torch device of `[section] device`: "auto" is CUDA when torch sees a GPU;
    ConfigError for "cuda" where it sees none."""
    from sysdream.daemon.config import ConfigError
    if want == "cpu":
        return "cpu"
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if want == "cuda":
        raise ConfigError(f'[{section}] device = "cuda", but torch sees no GPU here; set '
                          '"auto" or "cpu"')
    return "cpu"


class Models:
    """Bundles of the models folder by model id, loaded on first use, reloaded when the
    folder changes. A bundle that fails to load is said once and not tried again until
    one of its files changes (a corrupt bundle would otherwise be read, and logged, at
    every request for it); its requests are answered unknown-model."""

    def __init__(self, folder: Path, device: str):
        self.folder, self.device = folder, device
        self.paths: dict[str, Path] = {}
        self.loaded: dict[str, object] = {}
        self.failed: dict[str, tuple] = {}      # model id -> its files' stat when it failed
        self.scanned = 0.0

    def scan(self) -> None:
        import json
        paths = {}
        for manifest in sorted(self.folder.glob("*/manifest.json")):
            try:
                mid = json.loads(manifest.read_text()).get("model_id")
            except (OSError, ValueError):
                continue
            if isinstance(mid, str):
                paths[mid] = manifest.parent
        self.paths = paths
        self.scanned = time.monotonic()

    def get(self, model_id: str):
        if model_id in self.loaded:
            return self.loaded[model_id]
        if model_id not in self.paths or time.monotonic() - self.scanned > 5:
            self.scan()
        path = self.paths.get(model_id)
        if path is None:
            return None
        try:
            stamp = tuple(sorted((f.name, f.stat().st_ino, f.stat().st_mtime_ns,
                                  f.stat().st_size) for f in path.iterdir()))
        except OSError:
            return None
        if self.failed.get(model_id) == stamp:
            return None
        from sysdream.model.bundle import BundleError
        from sysdream.model.detector import Detector
        from sysdream.model.windows import Geometry
        try:
            det = Detector.load(path, runtime="torch")    # the worker may run it on CUDA
        except (BundleError, OSError) as exc:
            self.failed[model_id] = stamp
            log(f"{path}: {exc}; not tried again until the bundle changes",
                logging.WARNING)
            return None
        self.failed.pop(model_id, None)
        if det.model_id != model_id:
            return None
        det.net.to(self.device)
        self.loaded[model_id] = (det, Geometry.of(det.cfg))
        return self.loaded[model_id]


def store_bundle(folder: Path, m: wire.Message, want: dict[str, str]) -> Path | None:
    """Write a fetched bundle into the models folder, as models/MODEL_ID, when its manifest
    is the one the broker announced (`want`: model id -> manifest sha256) and names that
    model; None, with one line, when it is not. Detector.load then checks every file
    against the manifest."""
    import hashlib
    import json
    import shutil
    import tempfile

    from sysdream.model.bundle import install
    h = m.header
    manifest = m.arrays["manifest.json"]
    try:
        mid = json.loads(manifest).get("model_id")
    except (ValueError, AttributeError):
        mid = None
    sha = hashlib.sha256(manifest).hexdigest()
    if h["model"] not in want or sha != want[h["model"]] or sha != h["sha256"] \
            or mid != h["model"]:
        log(f"refused the bundle of model {h['model'][:16]}: its manifest is not the one "
            "announced", logging.WARNING)
        return None
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
    try:
        for name, data in m.arrays.items():
            (tmp / name).write_bytes(data)
        install(tmp, folder / mid)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"cannot store model {mid} in {folder} ({exc.strerror or exc})", logging.WARNING)
        return None
    return folder / mid


class Link:
    """The worker's DEALER to the broker's backend: the ready heartbeat, and (a remote
    worker) the models it fetches."""

    def __init__(self, sock, models: Models, name: str, index: int, device: str,
                 fetch: bool):
        from sysdream.daemon.version import version
        self.sock, self.models, self.fetch = sock, models, fetch
        self.name, self.index, self.device, self.version = name, index, device, version()
        self.seq = 0
        self.asked: dict[str, float] = {}       # model id -> when it was asked for
        self.want: dict[str, str] = {}          # model id -> its announced manifest sha256
        self.beat = 0.0

    def ready(self) -> None:
        now = time.monotonic()
        if now < self.beat:
            return
        self.beat = now + wire.READY_S
        if self.fetch and time.monotonic() - self.models.scanned > wire.READY_S:
            self.models.scan()
        self.sock.send_multipart([b"", *wire.encode("ready", {
            "version": self.version, "name": self.name, "index": self.index,
            "device": self.device, "models": sorted(self.models.paths)[:wire.MAX_MODELS]})])

    def control(self, body: list[bytes]) -> None:
        """A message of the broker's own: the models it holds, or one of them."""
        try:
            m = wire.decode(body, ("models", "bundle"))
        except wire.ProtocolError as exc:
            log(f"a message from the broker refused: {exc}", logging.WARNING)
            return
        if not self.fetch:
            return
        if m.type == "bundle":
            self.asked.pop(m.header["model"], None)
            if store_bundle(self.models.folder, m, self.want) is not None:
                self.models.scan()
                self.beat = 0.0              # say at once that it holds it
            return
        now = time.monotonic()
        self.want = dict(m.header["models"])
        self.models.scan()
        for mid in self.want:
            if mid not in self.models.paths and now - self.asked.get(mid, -1e9) > 30:
                self.asked[mid] = now
                self.seq += 1
                self.sock.send_multipart([b"", *wire.encode(
                    "want", {"seq": self.seq, "model": mid, "version": self.version})])


def serve(sock, folder: Path, device: str, batch: int, index: int, name: str,
          fetch: bool, alive) -> int:
    """Answer the broker's requests on `sock` until `alive()` is false."""
    import torch

    from sysdream.model.scoring import score

    torch.set_num_threads(1)
    models = Models(folder, device)
    link = Link(sock, models, name, index, device, fetch)
    per_pass = max(batch, 1) if device.startswith("cuda") else min(max(batch, 1), CPU_PASS)
    link.ready()                                     # ready: torch is loaded
    while alive():
        link.ready()
        if not sock.poll(500):
            continue
        waiting, rows = [], 0
        while rows < batch and sock.poll(0):
            frames = sock.recv_multipart()
            if frames[0] == b"":
                link.control(frames[1:])
                continue
            try:
                m = wire.decode(frames[1:], ("score",))
            except wire.ProtocolError as exc:
                sock.send_multipart([frames[0], *wire.error(-1, exc.code, str(exc))])
                continue
            waiting.append((frames[0], m))
            rows += m.header["rows"]
        groups = defaultdict(list)
        for ident, m in waiting:
            groups[m.header["model"]].append((ident, m))
        for model_id, reqs in groups.items():
            got = models.get(model_id)
            if got is None:
                for ident, m in reqs:
                    sock.send_multipart([ident, *wire.error(
                        m.header["seq"], "unknown-model",
                        f"the server holds no model {model_id[:40]}")])
                continue
            det, geom = got
            good = []
            for ident, m in reqs:
                a, h = m.arrays, m.header
                if h["span"] != geom.span or a["tokens"].max() >= len(det.vocab) \
                        or a["valid"].max() > geom.window:
                    sock.send_multipart([ident, *wire.error(
                        h["seq"], "malformed", f"windows that do not fit model {model_id}")])
                else:
                    good.append((ident, m))
            if not good:
                continue
            t0 = time.perf_counter()
            w = geom.windows(np.concatenate([m.arrays["tokens"] for _, m in good]),
                             np.concatenate([m.arrays["valid"] for _, m in good]),
                             np.concatenate([m.arrays["starts"] for _, m in good]))
            try:
                scores = score(det.net, w, per_pass, detail=False).score
            except Exception as exc:  # noqa: BLE001 (a model that fails: every asker told)
                for ident, m in good:
                    sock.send_multipart([ident, *wire.error(m.header["seq"], "internal",
                                                            f"inference failed: {exc}")])
                continue
            ms = (time.perf_counter() - t0) * 1000
            at = 0
            for ident, m in good:
                n = m.header["rows"]
                sock.send_multipart([ident, *wire.encode(
                    "scores", {"seq": m.header["seq"], "model": model_id, "rows": n,
                               "worker": index, "infer_ms": round(ms, 3)},
                    scores=scores[at:at + n])])
                at += n
    return 0


def local(backend: str, folder: Path, device: str, batch: int, index: int) -> int:
    """A worker the server started: ipc:// to its broker, the server's models folder, and
    it exits when its parent does."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(backend)
    parent = os.getppid()
    return serve(sock, folder, device, batch, index, f"local-{index}", False,
                 lambda: os.getppid() == parent)


def remote(cfg) -> int:
    """`sysdream worker`: a worker on another machine, connected to a server's
    [server] worker_bind over CurveZMQ ([worker] in the configuration). It fetches the
    server's models into [worker] models and scores until SIGTERM."""
    import zmq

    from ..service.runtime import on_signals
    from .keys import load_public, load_secret
    w = cfg.worker
    name, public, secret = load_secret(w.key)
    server = load_public(w.server_key)[1]
    folder = Path(w.models)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        from sysdream.daemon.exitcodes import StateDirError
        raise StateDirError(f"[worker] models {folder}: {exc.strerror or exc}; make it "
                            "writable by the worker") from None
    device = pick_device(w.device, "worker")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_BUNDLE)
    sock.connect(w.server)
    stop = []
    on_signals(lambda: stop.append(1))
    logs.setup(cfg.service.log_level)
    log(f"{name} on {device}, connecting to {w.server}; models in {folder}")
    try:
        return serve(sock, folder, device, w.batch_windows, 0, name, True, lambda: not stop)
    finally:
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sysdream-worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--log-level", default="info", choices=tuple(logs.LEVELS))
    a = p.parse_args(argv)
    logs.setup(a.log_level)     # the server's [service] log_level, not the default
    try:
        return local(a.backend, Path(a.models), a.device, a.batch, a.index)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
