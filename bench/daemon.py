"""The daemon under steady load: CPU, memory, cache, shedding and detection latency.

    .venv/bin/python bench/daemon.py [--seconds 20] [--warmup 8] [--model BUNDLE] [--fleet]
        [--sequences] [--no-profiles]

Real parts throughout: `sysdream run` as its own process with its probes in the running
kernel, alerts to a systemd-journald started here in a private mount namespace, and a
load from bench/loadgen.c (a chain of short blocks of cheap syscalls; the daemon is
filtered to its process name, so other processes do not change the load).

1. Model: unless --model names a bundle, record the load at 100k syscalls/s from 4 and
   from 10,000 threads (children that make ordinary syscalls and exit, 10 a second,
   included) and train a DReAM bundle on it with the daemon's learning defaults (window
   16, hidden 32) and a few epochs.
2. Reference: the load alone at 1M syscalls/s, no probes attached: its CPU per syscall.
3. Phases, each `--warmup` s of settling and `--seconds` s measured, the daemon running
   with the shipped defaults except alert rate limits high enough to keep every alert:
   100k/s from 4 threads, 1M/s from 4 threads, 100k/s from 10,000 threads, and 1M/s with
   the known-window cache off (a second daemon). In every phase, every 1.5 s a child
   process makes 48 syscalls the model never saw and exits: the latency from its last
   syscall (CLOCK_MONOTONIC in the child) to its alert's journald entry
   (__MONOTONIC_TIMESTAMP) is measured for each (incidents of a second, so each child's
   is its own). Every alert of the load's own process (its threads) is false: counted
   by severity.
   With --fleet, instead: the daemon is an agent of a fleet server on loopback (one
   worker, the same bundle), phases 100k/s and 1M/s from 4 threads, the server scoring
   every cache miss, so the latency includes the round trip.

Prints per phase: syscalls/s the daemon delivered, its CPU in cores (from /proc), RSS and
peak RSS, threads tracked, cache hit ratio, windows shed, syscalls lost, alerts for the
odd children (detected / made) and for anything else, latency p50/p99/max; and the ratios:
daemon CPU with the cache over without it at 1M/s, and the load's CPU per syscall under
capture over the reference run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "daemon"))
from harness import Daemon, JournalNamespace, wait_for  # noqa: E402  (real parts, shared)

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Alerts belong to incidents (one per program, session and fingerprint within
# [alerts] incident_span_s): the daemon here runs with incidents of a second and the odd
# children come further apart, so each child opens an incident of its own and its alert
# reaches journald (children 100 ms apart would all join the first one's incident).
INCIDENT_SPAN_S = 1
ODD_EVERY_MS = 1500
EXTRA_CONFIG = ""       # --no-profiles: "[profiles] enabled = false"


def build_loadgen(tmp: Path) -> Path:
    exe = tmp / "loadgen"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(HERE / "loadgen.c")],
                   check=True)
    return exe


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysdream.daemon", *args], check=True,
                          **kw)


class Load:
    """bench/loadgen.c in the background; its "odd" lines and final counts."""

    def __init__(self, exe: Path, rate: float, threads: int, seconds: float, odd_mode: int,
                 every_ms: int = ODD_EVERY_MS):
        self.proc = subprocess.Popen([str(exe), str(rate), str(threads), str(seconds),
                                      str(every_ms), str(odd_mode)],
                                     stdout=subprocess.PIPE, text=True)

    def finish(self) -> tuple[dict[int, int], int, int]:
        out, _ = self.proc.communicate()
        odd, syscalls, cpu_ns = {}, 0, 0
        for line in out.splitlines():
            parts = line.split()
            if parts[0] == "odd":
                odd[int(parts[1])] = int(parts[2])
            elif parts[0] == "done":
                syscalls, cpu_ns = int(parts[1]), int(parts[2])
        return odd, syscalls, cpu_ns


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_mem_mb(pid: int) -> tuple[float, float]:
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(value.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


def total(metrics: dict[str, float], name: str) -> float:
    """A metric summed over its labels."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def train_model(exe: Path, tmp: Path, bundle: Path, epochs: int, sequences: bool = False
                ) -> Path:
    """What learn-then-detect would do on a host running this load: record it (4 and
    10,000 threads, children making ordinary syscalls) and train with the daemon's
    learning defaults, fewer epochs."""
    traces = []
    for threads in (4, 10_000):
        # the whole life of the load, its threads' start and exit included
        trace = tmp / f"load-{threads}.sdtrace"
        rec = subprocess.Popen([sys.executable, "-m", "sysdream.daemon", "record",
                                "--seconds", "600", "--comm", "loadgen", "-o", str(trace)],
                               stderr=subprocess.PIPE, text=True)
        if "probes attached" not in rec.stderr.readline():
            raise RuntimeError(f"sysdream record did not start: {rec.stderr.read()}")
        Load(exe, 100_000, threads, 6, odd_mode=0, every_ms=100).finish()
        rec.send_signal(signal.SIGTERM)
        rec.communicate(timeout=60)
        traces.append(f"trace:{trace}")
    t0 = time.monotonic()
    cli("train", "--input", *traces, "-o", str(bundle), "--window", "16", "--hidden", "32",
        "--embed", "32", "--epochs", str(epochs), "--threads", "2",
        *(["--sequences"] if sequences else []), stdout=subprocess.DEVNULL)
    print(f"model: trained on 12 s of the load at 100k/s in {time.monotonic() - t0:.0f} s",
          flush=True)
    return bundle


def start_server(bundle: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A fleet server with the bundle, on loopback, and the [fleet] section an agent of it
    needs (keys made here)."""
    import shutil

    from sysdream.daemon.fleet import keys
    keys.keygen(tmp / "keys", "server")
    keys.keygen(tmp / "keys", "agent")
    (tmp / "agents").mkdir()
    shutil.copy(tmp / "keys" / "agent.curve", tmp / "agents")
    shutil.copytree(bundle, tmp / "models" / "bench")
    sys.path.insert(0, str(HERE.parent / "tests" / "daemon"))
    from harness import free_port
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "sysdream.daemon", "server", "--bind",
                            f"tcp://127.0.0.1:{port}", "--publish",
                            f"tcp://127.0.0.1:{free_port()}", "--key",
                            str(tmp / "keys" / "server.curve-secret"), "--agents",
                            str(tmp / "agents"), "--models", str(tmp / "models"),
                            "--workers", "1", "--device", "cpu", "--metrics-port", "0",
                            "--set", f'server.baselines="{tmp / "baselines"}"'],
                           stderr=subprocess.DEVNULL)
    fleet = (f'[fleet]\nserver = "tcp://127.0.0.1:{port}"\nserver_key = '
             f'"{tmp / "keys" / "server.curve"}"\nkey = "{tmp / "keys" / "agent.curve-secret"}"'
             '\ntimeout_ms = 250\n')
    time.sleep(5)     # the worker loads torch
    return srv, fleet


def start_daemon(bundle: Path, tmp: Path, journal: JournalNamespace,
                 cache_windows: int | None = None, fleet: str = "") -> Daemon:
    cfg = tmp / f"sysdream-{cache_windows}-{bool(fleet)}.toml"
    text = ("[alerts]\nrate_limit_burst = 1000000\nrate_limit_ceiling_per_minute = 1000000\n"
            f"incident_span_s = {INCIDENT_SPAN_S}\nmin_severity = \"low\"\n")
    if cache_windows is not None:
        text += f"[detection]\ncache_windows = {cache_windows}\n"
    text += fleet + EXTRA_CONFIG
    cfg.write_text(text)
    d = Daemon(["--config", str(cfg), "--model", str(bundle), "--state-dir",
                str(tmp / "state"), "--comm", "loadgen"], tmp, prefix=journal.prefix)
    d.wait_attached()
    wait_for(lambda: d.metrics(), 30, "the metrics endpoint")
    return d


def phase(name: str, exe: Path, d: Daemon, journal: JournalNamespace, rate: int,
          threads: int, warmup: float, seconds: float) -> dict:
    pid = d.proc.pid
    load = Load(exe, rate, threads, warmup + seconds, odd_mode=1)
    time.sleep(warmup)
    m0, c0, t0 = d.metrics(), proc_cpu_s(pid), time.monotonic()
    tracked = 0.0
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        tracked = max(tracked, d.metric("sysdream_threads_tracked"))
    m1, c1, t1 = d.metrics(), proc_cpu_s(pid), time.monotonic()
    rss, hwm = proc_mem_mb(pid)
    odd, made, load_cpu_ns = load.finish()
    time.sleep(3)  # the last children's alerts reach journald
    delta = {k: total(m1, k) - total(m0, k) for k in (
        "sysdream_syscalls_delivered_total", "sysdream_syscalls_lost_total",
        "sysdream_windows_scored_total", "sysdream_windows_cached_total",
        "sysdream_windows_shed_total", "sysdream_windows_cut_total")}
    lat, other = [], {"low": 0, "medium": 0, "high": 0}
    first: dict[int, float] = {}
    for kind in ("anomaly", "behaviour"):
        for e in journal.entries(SYSDREAM_KIND=kind):
            p = int(e["SYSDREAM_PID"])
            mono_ns = int(e["__MONOTONIC_TIMESTAMP"]) * 1000
            if p in odd and kind == "anomaly":
                first[p] = min(first.get(p, mono_ns), mono_ns)
            elif p == load.proc.pid:      # the load's own threads: every one is false
                sev = e.get("SYSDREAM_SEVERITY", "low")
                other[sev] = other.get(sev, 0) + 1
    lat = [(first[p] - odd[p]) / 1e9 for p in first]
    looked = d.metrics()
    scored, cached = delta["sysdream_windows_scored_total"], delta["sysdream_windows_cached_total"]
    return {
        "phase": name, "rate": rate, "threads": threads,
        "delivered_per_s": delta["sysdream_syscalls_delivered_total"] / (t1 - t0),
        "load_syscalls": made, "load_cpu_ns": load_cpu_ns,
        "cores": (c1 - c0) / (t1 - t0), "rss_mb": rss, "peak_rss_mb": hwm,
        "threads_tracked": tracked,
        "windows_per_s": (scored + cached) / (t1 - t0),
        "hit_ratio": cached / (scored + cached) if scored + cached else float("nan"),
        "shed": delta["sysdream_windows_shed_total"],
        "lost": delta["sysdream_syscalls_lost_total"],
        "odd_made": len(odd), "odd_alerted": len(lat), "other_alerts": other,
        "latency": lat, "queue_now": looked.get("sysdream_queue_windows", 0.0),
    }


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def report(rows: list[dict], ref_cpu_per_syscall: float) -> None:
    print(f"\n{'phase':28}{'delivered/s':>12}{'cores':>7}{'RSS MB':>8}{'peak':>7}"
          f"{'threads':>9}{'windows/s':>11}{'hit':>7}{'shed':>11}{'lost':>7}"
          f"{'odd alerted':>13}{'other':>6}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    for r in rows:
        lat = r["latency"]
        print(f"{r['phase']:28}{r['delivered_per_s']:>12,.0f}{r['cores']:>7.2f}"
              f"{r['rss_mb']:>8.0f}{r['peak_rss_mb']:>7.0f}{r['threads_tracked']:>9,.0f}"
              f"{r['windows_per_s']:>11,.0f}{r['hit_ratio']:>7.3f}{r['shed']:>11,.0f}"
              f"{r['lost']:>7,.0f}{r['odd_alerted']:>7}/{r['odd_made']:<5}"
              f"{sum(r['other_alerts'].values()):>6}{1e3 * pct(lat, 50):>8.1f}"
              f"{1e3 * pct(lat, 99):>8.1f}"
              f"{1e3 * max(lat, default=float('nan')):>8.1f}")
    for r in rows:
        o = r["other_alerts"]
        print(f"{r['phase']}: the load's own alerts (false), by severity: low {o['low']}, "
              f"medium {o['medium']}, high {o['high']}")
    by = {r["phase"]: r for r in rows}
    hot, cold = by.get("1M/s, 4 threads"), by.get("1M/s, 4 threads, no cache")
    if hot and cold:
        print(f"daemon CPU at 1M/s, cache on / cache off: {hot['cores'] / cold['cores']:.2f}x "
              f"(cache off shed {cold['shed']:,.0f} windows)")
    if hot and ref_cpu_per_syscall:
        under = hot["load_cpu_ns"] / max(hot["load_syscalls"], 1)
        print(f"load CPU per syscall at 1M/s, captured / untraced: "
              f"{under / ref_cpu_per_syscall:.2f}x ({under:.0f} vs {ref_cpu_per_syscall:.0f} ns)")
    lat = [x for r in rows for x in r["latency"]]
    print(f"syscall -> journald latency, all phases ({len(lat)} alerts): "
          f"p50 {1e3 * pct(lat, 50):.1f} ms, p99 {1e3 * pct(lat, 99):.1f} ms, "
          f"p99 / 1 s target: {pct(lat, 99):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=8.0, help="settling seconds per phase")
    ap.add_argument("--model", help="a bundle trained on this load; trained and kept there "
                    "when the directory has none (default: trained in a temporary one)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs when training here")
    ap.add_argument("--sequences", action="store_true", help="train with --sequences: the "
                    "daemon also judges each program's 6-syscall sequences "
                    "([learning] sequences)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--fleet", action="store_true", help="only the fleet phases: the daemon "
                    "an agent of a fleet server (one worker, loopback) scoring its windows")
    ap.add_argument("--no-profiles", action="store_true", help="[profiles] enabled = false: "
                    "the daemon without its behaviour profiles (the acts are still "
                    "captured), to weigh what the profiles cost in the same session")
    args = ap.parse_args()
    if args.no_profiles:
        global EXTRA_CONFIG
        EXTRA_CONFIG = "[profiles]\nenabled = false\n"
    if os.geteuid() != 0:
        print("bench/daemon.py: run as root (it loads eBPF programs and starts journald)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = build_loadgen(tmp)
        bundle = Path(args.model) if args.model else tmp / "model"
        if not (bundle / "manifest.json").exists():
            train_model(exe, tmp, bundle, args.epochs, args.sequences)

        ref = Load(exe, 1_000_000, 4, args.seconds, odd_mode=1)
        _, ref_syscalls, ref_cpu = ref.finish()
        ref_per = ref_cpu / max(ref_syscalls, 1)

        journal = JournalNamespace()
        rows = []
        if args.fleet:
            srv, fleet = start_server(bundle, tmp)
            try:
                daemon = start_daemon(bundle, tmp, journal, fleet=fleet)
                try:
                    for name, rate in (("100k/s, 4 threads, server", 100_000),
                                       ("1M/s, 4 threads, server", 1_000_000)):
                        rows.append(phase(name, exe, daemon, journal, rate, 4, args.warmup,
                                          args.seconds))
                        m = daemon.metrics()
                        rows[-1]["fleet_verdicts"] = m.get("sysdream_fleet_verdicts_total")
                        rows[-1]["fleet_fallback"] = sum(
                            v for k, v in m.items()
                            if k.startswith("sysdream_fleet_fallback_windows_total"))
                        print(f"{name}: done; verdicts from the server "
                              f"{rows[-1]['fleet_verdicts']:.0f}, scored locally "
                              f"{rows[-1]['fleet_fallback']:.0f}", flush=True)
                finally:
                    daemon.stop()
            finally:
                srv.terminate()
                srv.wait(30)
                journal.close()
            report(rows, ref_per)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
            return 0
        try:
            daemon = start_daemon(bundle, tmp, journal)
            try:
                for name, rate, threads in (("100k/s, 4 threads", 100_000, 4),
                                            ("1M/s, 4 threads", 1_000_000, 4),
                                            ("100k/s, 10,000 threads", 100_000, 10_000)):
                    rows.append(phase(name, exe, daemon, journal, rate, threads,
                                      args.warmup, args.seconds))
                    print(f"{name}: done", flush=True)
            finally:
                daemon.stop()
            daemon = start_daemon(bundle, tmp, journal, cache_windows=0)
            try:
                rows.append(phase("1M/s, 4 threads, no cache", exe, daemon, journal,
                                  1_000_000, 4, args.warmup, args.seconds))
            finally:
                daemon.stop()
        finally:
            journal.close()
        report(rows, ref_per)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
