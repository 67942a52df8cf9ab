"""Overload for a long run: the daemon under process churn and a syscall storm.

    .venv/bin/python bench/stress.py [--seconds 600] [--warmup 60] [--spawn-rate 1000]
                                     [--storm-rate 1000000] [--model BUNDLE] [--json FILE]

Real parts: `sysdream run` as its own process with its probes in the running kernel, the
watchdog a systemd unit gives it (WATCHDOG_USEC, 2 s, on a notify socket of this
bench's), alerts to a JSON-lines file, metrics scraped over HTTP.

1. Model: unless --model names a bundle (trained there when missing), 20 s of the load
   below without the planted anomaly are recorded (`sysdream record`, storm at 100k/s)
   and trained on with the daemon's learning defaults and a few epochs.
2. The run, `--seconds` long, the daemon filtered to the load's two process names
   (loadgen, true; every process still passes through the process table):
   - the storm: bench/loadgen.c on two threads at `--storm-rate` syscalls/s (both cores);
   - churn: two bench/spawn_loop.c drivers fork, exec and reap /bin/true at
     `--spawn-rate` in all;
   - the planted anomaly: every 500 ms a child of the storm makes 48 syscalls the model
     never saw and exits.
   Every 2 s: the counters identity (traced = delivered + lost + pending; under load a
   per-CPU copy of the counters is not atomic, so it may be off by up to a chunk per CPU,
   and is reported exact or within that), the daemon's RSS, /healthz.

Prints and checks (PASS/FAIL each, exit 1 on a FAIL): the identity at every scrape and
read = delivered once the load has stopped; RSS after `--warmup` within +-10% of its value
then; every minute some planted children alerted (share alerted per minute printed); the
watchdog fed at least every 2 s (the largest gap between WATCHDOG=1 printed); /healthz 200
throughout. Also: spawns/s and syscalls/s reached, losses and windows shed (counted).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "daemon"))
from harness import Daemon, NotifySocket, wait_for  # noqa: E402  (real parts, shared)

from daemon import Load, build_loadgen, cli, proc_mem_mb, total  # noqa: E402  (sibling bench)

WATCHDOG_S = 2.0
ODD_EVERY_MS = 500
SCRAPE_S = 2.0
CHUNK = 64


class Spawners:
    """Two spawn_loop drivers, /bin/true at `rate` in all, for `seconds`."""

    def __init__(self, driver: Path, rate: float, seconds: float):
        n = int(rate / 2 * seconds)
        self.started = time.monotonic()
        self.n = 2 * n
        self.procs = [subprocess.Popen([str(driver), str(n), "/bin/true", str(rate / 2)],
                                       stdout=subprocess.PIPE, text=True) for _ in range(2)]

    def finish(self) -> float:
        """Spawns a second reached."""
        for p in self.procs:
            p.communicate()
        return self.n / (time.monotonic() - self.started)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def build_spawner(tmp: Path) -> Path:
    exe = tmp / "spawn_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "spawn_loop.c")], check=True)
    return exe


def train_model(loadgen: Path, spawner: Path, tmp: Path, bundle: Path, spawn_rate: float,
                epochs: int) -> None:
    trace = tmp / "stress.sdtrace"
    rec = subprocess.Popen([sys.executable, "-m", "sysdream.daemon", "record",
                            "--seconds", "600", "--comm", "loadgen", "--comm", "true",
                            "-o", str(trace)], stderr=subprocess.PIPE, text=True)
    if "probes attached" not in rec.stderr.readline():
        raise RuntimeError(f"sysdream record did not start: {rec.stderr.read()}")
    spawns = Spawners(spawner, spawn_rate, 20)
    Load(loadgen, 100_000, 2, 20, odd_mode=0).finish()
    spawns.finish()
    rec.send_signal(signal.SIGTERM)
    rec.communicate(timeout=120)
    t0 = time.monotonic()
    cli("train", "--input", f"trace:{trace}", "-o", str(bundle), "--window", "16",
        "--hidden", "32", "--embed", "32", "--epochs", str(epochs), "--threads", "2",
        stdout=subprocess.DEVNULL)
    print(f"model: trained on 20 s of the load in {time.monotonic() - t0:.0f} s", flush=True)


def identity(m: dict[str, float]) -> float:
    """traced - (delivered + lost + pending)."""
    return (m["sysdream_syscalls_traced_total"] - m["sysdream_syscalls_delivered_total"]
            - total(m, "sysdream_syscalls_lost_total") - m["sysdream_syscalls_pending"])


def run(args, tmp: Path, bundle: Path, loadgen: Path, spawner: Path) -> dict:
    notify = NotifySocket(tmp / "notify.sock")
    cfg = tmp / "sysdream.toml"
    cfg.write_text("[alerts]\nrate_limit_burst = 1000000\n"
                   "rate_limit_ceiling_per_minute = 1000000\n")
    out = tmp / "alerts.jsonl"
    d = Daemon(["--config", str(cfg), "--model", str(bundle), "--state-dir",
                str(tmp / "state"), "--comm", "loadgen", "--comm", "true", "--no-journald",
                "--json-lines", str(out)], tmp, notify,
               env={"WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))})
    load = spawns = None
    try:
        d.wait_attached()
        wait_for(lambda: d.metrics(), 30, "the metrics endpoint")
        pid = d.proc.pid
        load = subprocess.Popen([str(loadgen), str(args.storm_rate), "2", str(args.seconds),
                                 str(ODD_EVERY_MS), "1"], stdout=subprocess.PIPE, text=True)
        spawns = Spawners(spawner, args.spawn_rate, args.seconds)
        t0 = time.monotonic()
        m0 = d.metrics()
        samples, gaps, unhealthy = [], [], 0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(SCRAPE_S)
            m = d.metrics()
            code, _ = d.health()
            unhealthy += code != 200
            rss, _ = proc_mem_mb(pid)
            samples.append({"t": time.monotonic() - t0, "gap": identity(m), "rss_mb": rss})
            gaps.append(abs(identity(m)))
        out_lines, _ = load.communicate(timeout=120)
        spawn_rate = spawns.finish()
        t1 = time.monotonic()
        time.sleep(5)      # the load has stopped: everything delivered is read and scored
        m1 = d.metrics()
        odd, syscalls = {}, 0
        for line in out_lines.splitlines():
            parts = line.split()
            if parts[0] == "odd":
                odd[int(parts[1])] = (int(parts[2]) / 1e9)
            elif parts[0] == "done":
                syscalls = int(parts[1])
        alerted = set()
        for line in out.read_text().splitlines() if out.exists() else []:
            a = json.loads(line)
            if a.get("kind") == "anomaly" and a["pid"] in odd:
                alerted.add(a["pid"])
        # planted children by minute of the run (CLOCK_MONOTONIC, as loadgen stamps them)
        start_ns = min(odd.values()) if odd else 0.0
        minutes: dict[int, list[int]] = {}
        for p, t in odd.items():
            minutes.setdefault(int((t - start_ns) // 60), []).append(p in alerted)
        pings = [t for t, _ in notify.having("WATCHDOG", "1") if t0 <= t <= t1]
        wd_gap = max((b - a for a, b in zip(pings, pings[1:], strict=False)),
                     default=float("inf"))
        warm = [s for s in samples if s["t"] >= args.warmup]
        ref = warm[0]["rss_mb"] if warm else float("nan")
        rc, _ = d.stop(timeout=30)
        return {
            "seconds": t1 - t0, "spawns_per_s": spawn_rate,
            "storm_syscalls_per_s": syscalls / (t1 - t0),
            "delivered_per_s": (m1["sysdream_syscalls_delivered_total"]
                                - m0["sysdream_syscalls_delivered_total"]) / (t1 - t0),
            "lost": total(m1, "sysdream_syscalls_lost_total")
            - total(m0, "sysdream_syscalls_lost_total"),
            "shed": total(m1, "sysdream_windows_shed_total")
            - total(m0, "sysdream_windows_shed_total"),
            "scrapes": len(gaps), "identity_exact": sum(g == 0 for g in gaps),
            "identity_max_gap": max(gaps, default=0.0),
            "identity_bound": CHUNK * (os.cpu_count() or 1),
            "read_minus_delivered": m1["sysdream_syscalls_read_total"]
            - m1["sysdream_syscalls_delivered_total"],
            "identity_after": identity(m1),
            "rss_at_warmup_mb": ref,
            "rss_min_mb": min((s["rss_mb"] for s in warm), default=float("nan")),
            "rss_max_mb": max((s["rss_mb"] for s in warm), default=float("nan")),
            "planted": len(odd), "planted_alerted": len(alerted),
            "alerted_share_by_minute": [round(sum(v) / len(v), 3)
                                        for _, v in sorted(minutes.items())],
            "watchdog_pings": len(pings), "watchdog_max_gap_s": wd_gap,
            "unhealthy_scrapes": unhealthy, "stop_rc": rc,
        }
    finally:
        if spawns is not None:
            spawns.kill()
        if load is not None and load.poll() is None:
            load.kill()
        d.kill()
        notify.close()


def verdicts(r: dict) -> list[tuple[str, bool]]:
    rss_ok = (abs(r["rss_min_mb"] / r["rss_at_warmup_mb"] - 1) <= 0.10
              and abs(r["rss_max_mb"] / r["rss_at_warmup_mb"] - 1) <= 0.10)
    return [
        ("identity at every scrape (within a chunk per CPU)",
         r["identity_max_gap"] <= r["identity_bound"]),
        ("identity exact and read = delivered after the load",
         r["identity_after"] == 0 and r["read_minus_delivered"] == 0),
        ("RSS within +-10% after warm-up", rss_ok),
        ("planted anomaly alerted in every minute",
         bool(r["alerted_share_by_minute"]) and min(r["alerted_share_by_minute"]) > 0),
        ("watchdog fed at least every 2 s", r["watchdog_max_gap_s"] < WATCHDOG_S),
        ("healthy at every scrape, clean stop",
         r["unhealthy_scrapes"] == 0 and r["stop_rc"] == 0),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS is held")
    ap.add_argument("--spawn-rate", type=float, default=1000.0, help="process spawns a second")
    ap.add_argument("--storm-rate", type=int, default=1_000_000, help="syscalls a second")
    ap.add_argument("--model", help="a bundle trained on this load; trained and kept there "
                    "if missing")
    ap.add_argument("--epochs", type=int, default=3, help="epochs when training here")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        loadgen, spawner = build_loadgen(tmp), build_spawner(tmp)
        bundle = Path(args.model) if args.model else tmp / "model"
        if not (bundle / "manifest.json").exists():
            train_model(loadgen, spawner, tmp, bundle, args.spawn_rate, args.epochs)
        r = run(args, tmp, bundle, loadgen, spawner)
    print(f"{r['seconds']:.0f} s: {r['spawns_per_s']:.0f} spawns/s, storm "
          f"{r['storm_syscalls_per_s']:,.0f} syscalls/s, daemon delivered "
          f"{r['delivered_per_s']:,.0f}/s, lost {r['lost']:.0f}, windows shed {r['shed']:.0f}")
    print(f"identity: {r['identity_exact']} of {r['scrapes']} scrapes exact, largest gap "
          f"{r['identity_max_gap']:.0f} (bound {r['identity_bound']}); after the load "
          f"{r['identity_after']:.0f}, read - delivered {r['read_minus_delivered']:.0f}")
    print(f"RSS after warm-up: {r['rss_at_warmup_mb']:.0f} MB, then {r['rss_min_mb']:.0f} to "
          f"{r['rss_max_mb']:.0f} MB")
    print(f"planted: {r['planted_alerted']} of {r['planted']} children alerted; share by "
          f"minute {r['alerted_share_by_minute']}")
    print(f"watchdog: {r['watchdog_pings']} pings, largest gap {r['watchdog_max_gap_s']:.2f} s "
          f"(limit {WATCHDOG_S:.0f} s); unhealthy scrapes {r['unhealthy_scrapes']}")
    failed = 0
    for what, ok in verdicts(r):
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
        failed += not ok
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
