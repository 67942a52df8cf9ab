"""Process start cost: fork + exec + wait of a small program, untraced, under sysdream's
capture without process context records, and under capture with them, in one run.

    .venv/bin/python bench/spawn.py [--spawns 500] [--reps 15] [--program /bin/true]

A round spawns the program `--spawns` times from a C driver (bench/spawn_loop.c) and
takes the time per spawn. The configurations take turns, round by round, with every
program of a capture attached only during its own rounds (sys_enter, the scheduler, exec
and exit, since exec and exit are where context records are made). Prints per-spawn
microseconds (best and mean of the rounds) and the per cent that context records add to
capture's per-spawn cost: the mean of the rounds' paired ratios with its standard error.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from sysdream.probes.capture import READ_INTERVAL_S, Capture, CaptureSettings

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from capture import Hook  # noqa: E402  (the sibling benchmark's attach/detach helper)

TRACEPOINTS = ("sys_enter", "sched_switch", "sched_process_exec", "sched_process_exit")


class Reader(threading.Thread):
    """Drains both ring buffers the way the daemon does."""

    def __init__(self, cap: Capture):
        super().__init__(daemon=True)
        self.cap, self.stop, self.contexts = cap, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.cap.wait(READ_INTERVAL_S)
            self.contexts += self.cap.read_context().size
            self.cap.read()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=500)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--program", default="/bin/true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        driver = Path(d) / "spawn_loop"
        subprocess.run(["gcc", "-O2", "-o", str(driver), str(HERE / "spawn_loop.c")],
                       check=True)
        caps, hooks, readers = {}, {"untraced": None}, []
        for name, context in (("capture, no context", False), ("capture, context", True)):
            cap = Capture(CaptureSettings(context=context))
            if context and not cap.context:
                print(f"process context is unavailable here: {cap.context_missing}")
                return 1
            hooks[name] = Hook(cap.bpf, TRACEPOINTS)
            hooks[name].off()
            caps[name] = cap
            readers.append(Reader(cap))
            readers[-1].start()

        def one() -> float:
            out = subprocess.run([str(driver), str(args.spawns), args.program], check=True,
                                 capture_output=True, text=True).stdout
            return int(out) / args.spawns / 1000  # us per spawn

        one()  # warm the page cache and the driver
        rounds: dict[str, list[float]] = {k: [] for k in hooks}
        names = list(hooks)
        for r in range(args.reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if hooks[name]:
                    hooks[name].on()
                rounds[name].append(one())
                if hooks[name]:
                    hooks[name].off()
        for reader in readers:
            reader.stop.set()
            reader.join()
        ctx = caps["capture, context"].counters()
        for cap in caps.values():
            cap.close()

    print(f"{args.spawns} spawns of {args.program} per round, {args.reps} interleaved rounds")
    print(f"{'':24}{'best us/spawn':>15}{'mean us/spawn':>15}")
    for name, values in rounds.items():
        print(f"{name:24}{min(values):>15.1f}{statistics.mean(values):>15.1f}")
    pct = [100 * (c / p - 1) for c, p in zip(rounds["capture, context"],
                                              rounds["capture, no context"], strict=True)]
    se = statistics.stdev(pct) / len(pct) ** 0.5
    over_untraced = [100 * (p / u - 1) for p, u in zip(rounds["capture, no context"],
                                                        rounds["untraced"], strict=True)]
    print(f"context records add {statistics.mean(pct):+.1f} +- {se:.1f}% to capture's "
          f"per-spawn cost (median {statistics.median(pct):+.1f}%); capture without them "
          f"costs {statistics.mean(over_untraced):+.1f}% over untraced")
    print(f"context records sent: {ctx['ctx_records']:,}, lost {ctx['ctx_lost']} "
          f"({ctx['ctx_records'] / (args.spawns * args.reps):.1f} per spawn)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
