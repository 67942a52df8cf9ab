"""The fleet server's throughput against local scoring, and what an agent sends.

    .venv/bin/python bench/fleet.py [--seconds 10] [--record-seconds 20] [--json FILE]

Real parts: `sysdream server` as its own process (one worker: the comparison is per core),
CurveZMQ keys made here, agents as `Remote`s (the agent's own client), each in a process
of its own (no torch there: an agent only encodes requests and reads verdicts).

1. Model: a DReAM bundle with the daemon's learning defaults (window 16, hidden 32) trained
   for one epoch on random sequences of every syscall name of this architecture
   (throughput does not depend on what it learnt; a vocabulary of every syscall keeps the
   cache's windows as distinct as a host's own model would).
2. Local reference: one thread, one torch thread, scoring requests of 256 distinct windows
   as the daemon's scorer does (`local_scores`): windows/s per core.
3. The server with one worker, 1, 4 and 16 agents each sending requests of 256 distinct
   windows as fast as the verdicts come: windows/s in all, and its ratio to the local
   reference; and per core: the CPU the server's processes (broker and worker) used over
   the same seconds, read from /proc, and the windows scored per core-second of it against
   the local reference (target: at least 0.8). On a machine of few cores the agents'
   processes take CPU the server would otherwise have: the wall figure is the machine's,
   the per-core one the server's.
4. The same 16 agents with a second worker: `sysdream worker` as a process of its own,
   connected over tcp:// with CurveZMQ to the server's worker_bind as a worker on another
   machine would be; per core counts the server's and that worker's CPU.
5. What an agent sends: this host recorded for --record-seconds (every process) while a
   loop of shell work runs, replayed through the daemon's own pipeline (cutter, known-window
   cache, scorer) with a `Remote` to the server: bytes sent per syscall, and so bytes/s at
   100k and 1M syscalls/s (target: under 1% of the syscall rate x 8 bytes, 0.08 B/syscall).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYSDREAM = [sys.executable, "-m", "sysdream.daemon"]
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

    from sysdream.daemon.detect.scorer import local_scores
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    batches = [spans(view, REQUEST, rng) for _ in range(8)]
    local_scores(view, *batches[0], 512)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        local_scores(view, *batches[done // REQUEST % 8], 512)
        done += REQUEST
    return done / (time.perf_counter() - t0)


class Shape:
    """What an agent process needs of the model view: its id and its span geometry."""

    def __init__(self, view):
        self.model_id, self.span, self.p = view.model_id, view.span, view.p
        self.lead, self.s, self.vocab = view.lead, view.s, len(view.det.vocab)


def agent_process(i: int, shape: Shape, endpoint: str, keys: str, start: float, stop: float,
                  out) -> None:
    """One agent: a Remote sending requests of REQUEST distinct windows from `start` to
    `stop` (CLOCK_MONOTONIC, the same in every process); puts (i, windows scored)."""
    from sysdream.daemon.fleet.agent import Remote
    r = Remote(endpoint, f"{keys}/server.curve", f"{keys}/agent{i}.curve-secret", "bench",
               timeout_ms=30000)
    rng = np.random.default_rng(100 + i)
    batches = [(rng.integers(2, shape.vocab, (REQUEST, shape.span)),
                np.full(REQUEST, shape.p), shape.lead + np.arange(REQUEST) * shape.s)
               for _ in range(4)]
    while not r.connected and time.monotonic() < start:
        time.sleep(0.01)
    while time.monotonic() < start:
        time.sleep(0.001)
    done = k = 0
    while time.monotonic() < stop:
        if r.score(shape, *batches[k % 4]) is not None:
            done += REQUEST
        k += 1
    r.close()
    out.put((i, done))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children alive now (the server's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / tick
    return total


def remote_rate(view, agents: int, seconds: float, endpoint: str, keys: Path,
                pids: list[int]) -> tuple[float, float]:
    """(windows/s scored for `agents` agent processes, CPU cores the server's processes,
    `pids` and their children, used meanwhile)."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    shape = Shape(view)
    start = time.monotonic() + 8 + 0.5 * agents      # the processes start and connect
    stop = start + seconds
    procs = [ctx.Process(target=agent_process, args=(i, shape, endpoint, str(keys), start,
                                                     stop, out)) for i in range(agents)]
    for p in procs:
        p.start()
    while time.monotonic() < start:
        time.sleep(0.01)
    cpu0, t0 = sum(map(cpu_seconds, pids)), time.monotonic()
    while time.monotonic() < stop:
        time.sleep(0.01)
    cpu1, t1 = sum(map(cpu_seconds, pids)), time.monotonic()
    counts = [out.get(timeout=120)[1] for _ in procs]
    for p in procs:
        p.join(30)
    return sum(counts) / seconds, (cpu1 - cpu0) / (t1 - t0)


def bytes_per_syscall(view, seconds: float, endpoint: str, keys: Path, tmp: Path) -> dict:
    from sysdream.daemon.context.processes import ProcessTable
    from sysdream.daemon.detect.cutter import Cutter
    from sysdream.daemon.detect.queue import Counters, WindowQueue
    from sysdream.daemon.detect.scorer import Scorer
    from sysdream.daemon.fleet.agent import Remote
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
    from sysdream.daemon.detect.view import ModelView
    from sysdream.daemon.fleet import keys as fleet_keys
    sys.path.insert(0, str(ROOT / "tests" / "daemon"))
    from harness import free_port

    tmp = Path(tempfile.mkdtemp(prefix="sysdream-bench-fleet-"))
    keydir, agents, models = tmp / "keys", tmp / "agents", tmp / "models"
    agents.mkdir()
    models.mkdir()
    fleet_keys.keygen(keydir, "server")
    fleet_keys.keygen(keydir, "worker")
    (tmp / "workers").mkdir()
    (tmp / "workers" / "worker.curve").write_text((keydir / "worker.curve").read_text())
    for i in range(16):
        fleet_keys.keygen(keydir, f"agent{i}")
        (agents / f"agent{i}.curve").write_text((keydir / f"agent{i}.curve").read_text())
    det = model(models)
    view = ModelView(det)
    port, mport, wport = free_port(), free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    srv = subprocess.Popen([*SYSDREAM, "server", "--bind", endpoint, "--publish",
                            f"tcp://127.0.0.1:{free_port()}", "--key",
                            str(keydir / "server.curve-secret"), "--agents", str(agents),
                            "--models", str(models), "--workers", "1", "--device", "cpu",
                            "--metrics-port", str(mport), "--set",
                            f"server.worker_bind=tcp://127.0.0.1:{wport}", "--set",
                            f"server.worker_keys={tmp / 'workers'}"],
                           stderr=subprocess.DEVNULL)
    worker = None
    out: dict = {"request_windows": REQUEST}
    try:
        out["local_windows_per_s"] = round(local_rate(view, a.seconds))
        print(f"local, one core: {out['local_windows_per_s']} windows/s", flush=True)
        time.sleep(5)    # the worker loads torch
        local = out["local_windows_per_s"]
        for n, tag in ((1, ""), (4, ""), (16, ""), (16, "_remote")):
            pids = [srv.pid]
            if tag:
                worker = subprocess.Popen(
                    [*SYSDREAM, "worker", "--server", f"tcp://127.0.0.1:{wport}",
                     "--server-key", str(keydir / "server.curve"), "--key",
                     str(keydir / "worker.curve-secret"), "--models", str(tmp / "wmodels"),
                     "--device", "cpu"], stderr=subprocess.DEVNULL)
                pids.append(worker.pid)
                while not list((tmp / "wmodels").glob("*/manifest.json")):
                    time.sleep(0.2)       # it has joined and fetched the model
                time.sleep(2)
            r, cores = remote_rate(view, n, a.seconds, endpoint, keydir, pids)
            key = f"{n}_agents{tag}"
            out[f"server_windows_per_s_{key}"] = round(r)
            out[f"ratio_{key}"] = round(r / local, 3)
            out[f"server_cores_{key}"] = round(cores, 3)
            out[f"per_core_ratio_{key}"] = round(r / max(cores, 1e-9) / local, 3)
            what = "one worker and a remote one" if tag else "one worker"
            print(f"server, {what}, {n} agents: {r:.0f} windows/s "
                  f"({out[f'ratio_{key}']:.2f}x local); the server used {cores:.2f} "
                  f"cores: {r / max(cores, 1e-9):.0f} windows per core-second "
                  f"({out[f'per_core_ratio_{key}']:.2f}x local)", flush=True)
        out["agent_traffic"] = bytes_per_syscall(view, a.record_seconds, endpoint, keydir,
                                                 tmp)
        print(f"agent traffic: {json.dumps(out['agent_traffic'])}", flush=True)
    finally:
        for proc in (worker, srv):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        subprocess.run(["rm", "-rf", str(tmp)])
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
