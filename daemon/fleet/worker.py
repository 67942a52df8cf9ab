"""One inference worker of the fleet server (a process of its own, started by server.py).

It holds a DEALER socket connected to the broker's backend and answers `score` requests:
it takes every request already waiting (up to `batch` windows, from any agents), groups
them by model, scores each group in one inference on its device (CUDA when torch sees a
GPU and the server asks for it, the CPU otherwise) and replies to each request alone.
Requests reach it checked by the broker; what only the model can check (a token outside
its vocabulary, a span of another geometry, a model it does not hold) is answered with an
error, never raised. It exits when its parent does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import protocol as wire


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
            det = Detector.load(path)
        except (BundleError, OSError) as exc:
            self.failed[model_id] = stamp
            print(f"sysdream worker: {path}: {exc}; not tried again until the bundle "
                  "changes", file=sys.stderr, flush=True)
            return None
        self.failed.pop(model_id, None)
        if det.model_id != model_id:
            return None
        det.net.to(self.device)
        self.loaded[model_id] = (det, Geometry.of(det.cfg))
        return self.loaded[model_id]


def serve(backend: str, folder: Path, device: str, batch: int, index: int) -> int:
    import torch
    import zmq

    from sysdream.model.scoring import score

    torch.set_num_threads(1)
    models = Models(folder, device)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(backend)
    sock.send_multipart([b"", str(index).encode()])   # ready: torch is loaded
    parent = os.getppid()
    while os.getppid() == parent:
        if not sock.poll(500):
            continue
        waiting, rows = [], 0
        while rows < batch and sock.poll(0):
            frames = sock.recv_multipart()
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
                scores = score(det.net, w, max(batch, 1), detail=False).score
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sysdream-worker")
    p.add_argument("--backend", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--index", type=int, default=0)
    a = p.parse_args(argv)
    try:
        return serve(a.backend, Path(a.models), a.device, a.batch, a.index)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
