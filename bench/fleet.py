"""The fleet server's throughput against local scoring, and what an agent sends.

    .venv/bin/python bench/fleet.py [--seconds 10] [--record-seconds 20] [--json FILE]

Real parts: `sysdream server` as its own process (one worker: the comparison is per core),
CurveZMQ keys made here, agents as in-process `Remote`s (the agent's own client), each on
its own socket and thread.

1. Model: a DReAM bundle with the daemon's learning defaults (window 16, hidden 32) trained
   for one epoch on random sequences of every syscall name of this architecture
   (throughput does not depend on what it learnt; a vocabulary of every syscall keeps the
   cache's windows as distinct as a host's own model would).
2. Local reference: one thread, one torch thread, scoring requests of 256 distinct windows
   as the daemon's scorer does (`local_scores`): windows/s per core.
3. The server with one worker, 1, 4 and 16 agents each sending requests of 256 distinct
   windows as fast as the verdicts come: windows/s in all, and its ratio to the local
   reference (target: at least 0.8).
4. What an agent sends: this host recorded for --record-seconds (every process) while a
   loop of shell work runs, replayed through the daemon's own pipeline (cutter, known-window
   cache, scorer) with a `Remote` to the server: bytes sent per syscall, and so bytes/s at
   100k and 1M syscalls/s (target: under 1% of the syscall rate x 8 bytes, 0.08 B/syscall).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYSDREAM = [sys.executable, "-m", "sysdream.daemon.cli"]
REQUEST = 256


def model(folder: Path):
    from sysdream.model.config import NetworkConfig, TrainSettings
    from sysdream.model.detector import Detector
    from sysdream.probes import syscalls
    rng = np.random.default_rng(0)
    # every syscall of this architecture in the vocabulary: the cache then sees the host's
    # windows as distinct as a model learnt on the host would
    names = np.unique(syscalls.names(np.arange(1024), syscalls.native_arch()))
    names = np.array([n for n in names if not str(n).startswith("sys_")], dtype=object)
    train = [names[rng.integers(0, len(names), 400)] for _ in range(40)]
    calib = [names[rng.integers(0, len(names), 400)] for _ in range(10)]
    det = Detector.train(train, calib, NetworkConfig(vocab_size=1),
                         TrainSettings(epochs=1, threads=1))
    det.save(folder / "bench")
    return det


def spans(view, n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tok = rng.integers(2, len(view.det.vocab), (n, view.span))
    return tok, np.full(n, view.p), view.lead + np.arange(n) * view.s


def local_rate(view, seconds: float) -> float:
    import torch

    from sysdream.daemon.pipeline import local_scores
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    batches = [spans(view, REQUEST, rng) for _ in range(8)]
    local_scores(view, *batches[0], 512)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        local_scores(view, *batches[done // REQUEST % 8], 512)
        done += REQUEST
    return done / (time.perf_counter() - t0)


def remote_rate(view, agents: int, seconds: float, endpoint: str, keys: Path) -> float:
    from sysdream.daemon.fleet.agent import Remote
    remotes = [Remote(endpoint, str(keys / "server.curve"),
                      str(keys / f"agent{i}.curve-secret"), "bench", timeout_ms=30000)
               for i in range(agents)]
    deadline = time.monotonic() + 30
    while not all(r.connected for r in remotes) and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = [0] * agents
    stop = time.monotonic() + seconds

    def run(i):
        rng = np.random.default_rng(100 + i)
        batches = [spans(view, REQUEST, rng) for _ in range(4)]
        k = 0
        while time.monotonic() < stop:
            if remotes[i].score(view, *batches[k % 4]) is not None:
                counts[i] += REQUEST
            k += 1
    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    for r in remotes:
        r.close()
    return sum(counts) / took


def bytes_per_syscall(view, seconds: float, endpoint: str, keys: Path, tmp: Path) -> dict:
    from sysdream.daemon.fleet.agent import Remote
    from sysdream.daemon.pipeline import Counters, Cutter, Scorer, WindowQueue
    from sysdream.daemon.processes import ProcessTable
    from sysdream.probes.tracefile import read_trace
    trace_path = tmp / "host.sdtrace"
    rec = subprocess.Popen([*SYSDREAM, "record", "--seconds", str(seconds), "-o",
                            str(trace_path)], stderr=subprocess.DEVNULL)
    end = time.monotonic() + seconds
    while time.monotonic() < end:      # ordinary shell work beside whatever the host does
        subprocess.run(["bash", "-c", "for i in $(seq 50); do cat /etc/hostname | wc -c; "
                        "ls /tmp > /dev/null; done"], stdout=subprocess.DEVNULL)
    rec.wait()
    trace = read_trace(trace_path)
    remote = Remote(endpoint, str(keys / "server.curve"), str(keys / "agent0.curve-secret"),
                    "bench", timeout_ms=30000)
    while not remote.connected:
        time.sleep(0.05)
    counters = Counters()
    queue = WindowQueue(1 << 40, counters)
    table = ProcessTable(max_processes=1 << 16, keep_exited_s=1e9, proc="/nonexistent")
    table.ingest(trace.context)
    cutter = Cutter(view, queue, counters, max_threads=1 << 20, processes=table)
    scorer = Scorer(view, queue, counters, lambda d: None, remote=remote)
    recs = trace.records[np.argsort(trace.records["last_ns"], kind="stable")]
    width = recs.dtype["ids"].shape[0]
    syscalls = int(np.minimum(recs["count"], width).sum())
    for lo in range(0, len(recs), 64):     # about what one reader turn holds
        cutter.ingest(recs[lo:lo + 64])
        while queue.size:
            scorer.process(queue.take(512, 0.0))
    s = remote.stats()
    remote.close()
    per = s["bytes_sent"] / max(syscalls, 1)
    return {"syscalls": syscalls, "windows": counters.windows_cut,
            "sent_windows": s["windows_sent"], "bytes_sent": s["bytes_sent"],
            "cache_hit_ratio": round(counters.windows_cached / max(counters.windows_cut, 1),
                                     4),
            "bytes_per_syscall": round(per, 4),
            "bytes_per_s_at_100k": round(per * 1e5), "bytes_per_s_at_1M": round(per * 1e6),
            "target_bytes_per_syscall": 0.08}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--record-seconds", type=float, default=20.0)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    from sysdream.daemon.fleet import keys as fleet_keys
    from sysdream.daemon.pipeline import ModelView
    sys.path.insert(0, str(ROOT / "tests" / "daemon"))
    from harness import free_port

    tmp = Path(tempfile.mkdtemp(prefix="sysdream-bench-fleet-"))
    keydir, agents, models = tmp / "keys", tmp / "agents", tmp / "models"
    agents.mkdir()
    models.mkdir()
    fleet_keys.keygen(keydir, "server")
    for i in range(16):
        fleet_keys.keygen(keydir, f"agent{i}")
        (agents / f"agent{i}.curve").write_text((keydir / f"agent{i}.curve").read_text())
    det = model(models)
    view = ModelView(det)
    port, mport = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    srv = subprocess.Popen([*SYSDREAM, "server", "--bind", endpoint, "--publish",
                            f"tcp://127.0.0.1:{free_port()}", "--key",
                            str(keydir / "server.curve-secret"), "--agents", str(agents),
                            "--models", str(models), "--workers", "1", "--device", "cpu",
                            "--metrics-port", str(mport)], stderr=subprocess.DEVNULL)
    out: dict = {"request_windows": REQUEST}
    try:
        out["local_windows_per_s"] = round(local_rate(view, a.seconds))
        print(f"local, one core: {out['local_windows_per_s']} windows/s", flush=True)
        time.sleep(5)    # the worker loads torch
        for n in (1, 4, 16):
            r = remote_rate(view, n, a.seconds, endpoint, keydir)
            out[f"server_windows_per_s_{n}_agents"] = round(r)
            out[f"ratio_{n}_agents"] = round(r / out["local_windows_per_s"], 3)
            print(f"server, one worker, {n} agents: {r:.0f} windows/s "
                  f"({out[f'ratio_{n}_agents']:.2f}x local)", flush=True)
        out["agent_traffic"] = bytes_per_syscall(view, a.record_seconds, endpoint, keydir,
                                                 tmp)
        print(f"agent traffic: {json.dumps(out['agent_traffic'])}", flush=True)
    finally:
        srv.terminate()
        srv.wait(30)
        subprocess.run(["rm", "-rf", str(tmp)])
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
