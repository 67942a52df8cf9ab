"""Capture overhead: a tight getppid loop untraced, under the tracing floor (a count-only
program on the same raw sys_enter hook) and under sysdream's capture, in one run.

    .venv/bin/python bench/capture.py [--calls 5000000] [--reps 7] [--strict-compat]
                                      [--loop-only] [--reference-source FILE]

Prints syscalls/s for each, the added ns per syscall over untraced, the ratio of
sysdream's added cost to the floor's (also for capture without process context records,
interleaved in the same rounds), and lost counts; --loop-only stops there. Then the
wall-time and CPU-time overhead of the floor and of sysdream's capture on a mixed
workload, part by part (find over /usr, Python start-ups, C compiles) with each part's
syscalls: one round varies by
10-14% on the reference VM, more than the target, so it prints the mean of the rounds'
ratios with its standard error. It also prints capture over the floor, the floor's added
ns per syscall by timing where syscalls are dense (the loop measures the same hook with
the kernel's tracing path hot in the caches), the reader thread's CPU time, and the
kernel's own count of BPF run time (kernel.bpf_stats_enabled), which does not drift with
the VM: per syscall of the loop, and on the mixed workload as a share of its wall time
with capture's time per program and its syscalls per record.

A reference capture runs interleaved beside it throughout (loop, mixed workload and the
kernel's run-time count): by default this program with acts off (probes/acts.py: what
the per-syscall path was before them); with --reference-source, another capture.bpf.c
(`git show main:probes/capture.bpf.c > /tmp/main.bpf.c`), compiled with acts off, so a
branch and main are compared in one run on one machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sysdream.probes import capture as capture_module
from sysdream.probes.capture import READ_INTERVAL_S, Capture, CaptureSettings

HERE = Path(__file__).resolve().parent
CPUS = os.cpu_count() or 1


def build_loop(tmp: Path) -> Path:
    exe = tmp / "getppid_loop"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "getppid_loop.c")], check=True)
    return exe


def loop_ns(exe: Path, calls: int) -> float:
    """One round: a loop per CPU at once; ns per syscall of the slowest."""
    procs = [subprocess.Popen([str(exe), str(calls)], stdout=subprocess.PIPE, text=True)
             for _ in range(CPUS)]
    return max(int(p.communicate()[0]) for p in procs) / calls


class Hook:
    """Attach or detach a loaded program's raw tracepoint handlers between rounds, so
    the configurations can be interleaved without recompiling. By default only sys_enter:
    capture's scheduler and exec/exit programs stay attached throughout (sched_switch is
    what sends a chunk before another thread takes its CPU's slot); with sys_enter off no
    thread owns a slot and they return at once, a few thousand runs a round in every
    configuration. bench/spawn.py toggles all of them (its subject is exec and exit)."""

    def __init__(self, bpf, tracepoints: tuple[str, ...] = ("sys_enter",)):
        self.bpf, self.tracepoints = bpf, tracepoints

    def on(self) -> None:
        for tp in self.tracepoints:
            self.bpf.attach_raw_tracepoint(tp=tp.encode(),
                                           fn_name=f"raw_tracepoint__{tp}".encode())

    def off(self) -> None:
        for tp in self.tracepoints:
            self.bpf.detach_raw_tracepoint(tp=tp.encode())


def program_times(bpf) -> dict[str, tuple[int, int]]:
    """(runs, ns) of each of a loaded program's functions, from /proc/self/fdinfo;
    counted only while kernel.bpf_stats_enabled is 1."""
    out = {}
    for name, fn in bpf.funcs.items():
        with open(f"/proc/self/fdinfo/{fn.fd}") as f:
            info = dict(ln.split(":", 1) for ln in f.read().splitlines() if ":" in ln)
        out[name.decode()] = (int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0)))
    return out


def run_times(bpf) -> tuple[int, int]:
    """(runs, ns) summed over a loaded program's functions."""
    times = program_times(bpf).values()
    return sum(r for r, _ in times), sum(n for _, n in times)


class ProgramClock:
    """The kernel's own count of the time spent in BPF programs (kernel.bpf_stats_enabled).
    It does not drift with the VM's speed as wall time does; it reads the clock twice per
    program run, which adds the same to every program measured."""

    PATH = Path("/proc/sys/kernel/bpf_stats_enabled")

    def __enter__(self):
        self.old = self.PATH.read_text().strip()
        self.PATH.write_text("1")
        return self

    def __exit__(self, *exc):
        self.PATH.write_text(self.old)

    @staticmethod
    def measure(bpf, hook, run) -> tuple[int, int]:
        hook.on()
        r0, n0 = run_times(bpf)
        run()
        r1, n1 = run_times(bpf)
        hook.off()
        return r1 - r0, n1 - n0


class Drain(threading.Thread):
    """Reads the ring buffer like the daemon does, so nothing backs up."""

    def __init__(self, cap: Capture, interval: float = READ_INTERVAL_S):
        super().__init__(daemon=True)
        self.cap, self.stop, self.records = cap, threading.Event(), 0
        self.interval = interval

    def run(self) -> None:
        while not self.stop.is_set():
            self.cap.wait(self.interval)
            self.drain()
        self.drain()

    def drain(self) -> None:
        # context records and acts too, as the daemon reads them: a full ring would make
        # the kernel's side cheaper than it is
        self.cap.read_context()
        if hasattr(self.cap, "read_acts"):
            self.cap.read_acts()
        self.records += self.cap.read().size

    def cpu(self) -> float:
        """This thread's CPU seconds so far: the reader's cost, which the traced
        workload shares the CPUs with."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.ident))


PARTS = ("find", "python", "gcc")


def mixed_workload(tmp: Path, after_part=None) -> dict[str, tuple[float, float]]:
    """(wall seconds, the children's CPU seconds) of each part and of the whole: a find
    over /usr, 10 Python start-ups and 5 gcc runs. CPU is user + system: a BPF program
    runs in the traced task's context, so its cost is system time of the workload."""
    src = tmp / "hello.c"
    src.write_text("#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n")
    runs = {
        "find": lambda: subprocess.run("find /usr -type f | wc -l", shell=True, check=True,
                                       capture_output=True),
        "python": lambda: [subprocess.run([sys.executable, "-c", "import json, email.parser"],
                                          check=True) for _ in range(10)],
        "gcc": lambda: [subprocess.run(["gcc", "-O1", "-o", str(tmp / f"h{i}"), str(src)],
                                       check=True) for i in range(5)],
    }
    out = {}
    for name in PARTS:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        runs[name]()
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out[name] = (wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
        if after_part:
            after_part(name)
    out["all"] = (sum(w for w, _ in out.values()), sum(c for _, c in out.values()))
    return out


def overhead(runs: list[float], base: list[float]) -> tuple[float, float, float]:
    """Per-round ratios to the paired reference round, as per cent over it: (mean, its
    standard error, median). The mean with its standard error says how sure the figure
    is; the median is kept for comparison with older runs."""
    pct = [100 * (t / u - 1) for t, u in zip(runs, base, strict=True)]
    se = statistics.stdev(pct) / len(pct) ** 0.5 if len(pct) > 1 else float("nan")
    return statistics.mean(pct), se, statistics.median(pct)


def reference_capture(settings: CaptureSettings, source: str | None) -> Capture:
    """The reference: `source` (a capture.bpf.c) or this one, with acts off."""
    settings = dataclasses.replace(settings, acts=False)
    if source is None:
        return Capture(settings)
    text = Path(source).read_bytes()
    own = capture_module.bpf_source
    capture_module.bpf_source = lambda: text
    try:
        return Capture(settings)
    finally:
        capture_module.bpf_source = own


def report_loop(args, rounds, ns, rates, counters, per_call) -> None:
    base_ns, floor_ns, cap_ns, plain_ns, ref_ns = ns
    base_rate, floor_rate, cap_rate, plain_rate, ref_rate = rates
    floor_added = floor_ns - base_ns
    print(f"getppid loop on {CPUS} CPUs, {args.calls:,} calls per CPU, "
          f"best of {args.reps} interleaved rounds"
          + (", capture with strict_compat" if args.strict_compat else ""))
    print(f"{'':28}{'syscalls/s':>14}{'ns/syscall':>12}{'added ns':>10}")
    print(f"{'untraced':28}{base_rate:>14,.0f}{base_ns:>12.1f}{0:>10.1f}")
    print(f"{'floor (count only)':28}{floor_rate:>14,.0f}{floor_ns:>12.1f}{floor_added:>10.1f}")
    for label, rate, added in (("sysdream capture", cap_rate, cap_ns - base_ns),
                               ("... without context records", plain_rate,
                                plain_ns - base_ns),
                               ("reference capture", ref_rate, ref_ns - base_ns)):
        print(f"{label:28}{rate:>14,.0f}{added + base_ns:>12.1f}{added:>10.1f}")
    for label, key, best in (("sysdream / floor", "capture", cap_ns),
                             ("without context / floor", "no context", plain_ns),
                             ("reference / floor", "reference", ref_ns)):
        ratio = (best - base_ns) / floor_added if floor_added > 0 else float("nan")
        triples = zip(rounds["untraced"], rounds["floor"], rounds[key], strict=True)
        per_round = statistics.median((c - u) / (f - u) for u, f, c in triples if f > u)
        print(f"added cost ratio, {label}: {ratio:.2f}x best of each "
              f"({per_round:.2f}x median of the rounds' own ratios)")
    print(f"lost: {counters['lost_syscalls']} syscalls to a full ring buffer, "
          f"{counters['lost_nostorage']} to no thread storage "
          f"(of {counters['traced']:,} traced)")
    if per_call:
        print(f"BPF program run time (kernel.bpf_stats_enabled, best of {max(3, args.reps)}): "
              "floor "
              f"{per_call['floor']:.1f} ns per syscall, sysdream capture "
              f"{per_call['capture']:.1f} ns: {per_call['capture'] - per_call['floor']:+.1f} "
              f"ns over the floor; reference {per_call['reference']:.1f} ns "
              f"({per_call['reference'] - per_call['floor']:+.1f})")
        print(f"run-time ratio to the floor: sysdream {per_call['capture'] / per_call['floor']:.3f}"
              f", reference {per_call['reference'] / per_call['floor']:.3f}")


def loop_run_times(exe, calls, floor, floor_hook, cap, cap_hook, ref, ref_hook,
                   rounds: int = 3) -> dict:
    """BPF run time per syscall of the loop (kernel.bpf_stats_enabled), best of `rounds`
    rounds each, the configurations interleaved."""
    per_call: dict[str, list[float]] = {"floor": [], "capture": [], "reference": []}
    with ProgramClock() as clock:
        for _ in range(rounds):
            for name, bpf, hook in (("floor", floor, floor_hook), ("capture", cap.bpf, cap_hook),
                                    ("reference", ref.bpf, ref_hook)):
                runs, ns = clock.measure(bpf, hook, lambda: loop_ns(exe, calls))
                per_call[name].append(ns / max(runs, 1))
    return {k: min(v) for k, v in per_call.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5_000_000, help="getppid calls per CPU")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--strict-compat", action="store_true",
                    help="capture with strict_compat (each syscall's table checked)")
    ap.add_argument("--read-interval", type=float, default=READ_INTERVAL_S,
                    help="the reader's timer in seconds (the daemon's: %(default)s)")
    ap.add_argument("--loop-only", action="store_true",
                    help="only the getppid loop (no mixed workload)")
    ap.add_argument("--reference-source", metavar="FILE",
                    help="a capture.bpf.c to compare against (default: this one, acts off)")
    args = ap.parse_args()
    from bcc import BPF

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = build_loop(tmp)

        floor = BPF(src_file=str(Path(__file__).resolve().parents[1] / "probes/count.bpf.c"))
        floor_hook = Hook(floor)
        floor_hook.off()
        # Every feature on: filters loaded (excluding things that are not the loop),
        # exec/exit/switch/age flushes and counters are always on.
        settings = CaptureSettings(exclude_comms=("nosuchcomm",), exclude_pids=(999999,),
                                   exclude_cgroups=(2**63 + 12345,),
                                   strict_compat=args.strict_compat)
        cap = Capture(settings)
        cap_hook = Hook(cap.bpf)
        cap_hook.off()
        drain = Drain(cap, args.read_interval)
        drain.start()
        # The same capture without process context records (what it was before them),
        # for the loop only: context records are sent per process, never per syscall.
        plain = Capture(dataclasses.replace(settings, context=False))
        plain_hook = Hook(plain.bpf)
        plain_hook.off()
        plain_drain = Drain(plain, args.read_interval)
        plain_drain.start()
        ref = reference_capture(settings, args.reference_source)
        ref_hook = Hook(ref.bpf)
        ref_hook.off()
        ref_drain = Drain(ref, args.read_interval)
        ref_drain.start()

        # Interleaved rounds: the VM's speed drifts, and drift must hit all alike; the
        # order turns each round, so that none is always the first (cold) run.
        def interleaved(run, hooks) -> dict[str, list[float]]:
            out: dict[str, list[float]] = {k: [] for k in hooks}
            n = len(hooks)
            for r in range(args.reps):
                names = list(hooks)
                for name in names[r % n:] + names[:r % n]:
                    if hooks[name]:
                        hooks[name].on()
                    out[name].append(run())
                    if hooks[name]:
                        hooks[name].off()
            return out

        hooks = {"untraced": None, "floor": floor_hook, "capture": cap_hook,
                 "reference": ref_hook}
        rounds = interleaved(lambda: loop_ns(exe, args.calls),
                             {**hooks, "no context": plain_hook})
        loop_best = tuple(min(rounds[k]) for k in ("untraced", "floor", "capture",
                                                   "no context", "reference"))
        loop_rates = tuple(CPUS * 1e9 / ns for ns in loop_best)
        counters = cap.counters()
        plain_drain.stop.set()
        plain_drain.join()
        plain.close()
        if args.loop_only:
            per_call = loop_run_times(exe, args.calls, floor, floor_hook, cap, cap_hook,
                                      ref, ref_hook, max(3, args.reps))
            floor.cleanup()
            for d, c in ((drain, cap), (ref_drain, ref)):
                d.stop.set()
                d.join()
                c.close()
            report_loop(args, rounds, loop_best, loop_rates, counters, per_call)
            return 0

        # The mixed workload, interleaved the same way; each part timed on its own.
        mixed_workload(tmp)  # warm the page and dentry caches once for all
        def mixed_round() -> dict:
            c0 = drain.cpu()
            out = mixed_workload(tmp)
            out["reader"] = drain.cpu() - c0
            return out

        mixed = interleaved(mixed_round, hooks)
        # Its syscalls per part, by the floor's own count.
        def seen() -> int:
            return sum(floor[b"seen"][0])

        floor_hook.on()
        marks = [seen()]
        mixed_workload(tmp, lambda _: marks.append(seen()))
        floor_hook.off()
        part_calls = dict(zip(PARTS, (b - a for a, b in itertools.pairwise(marks)), strict=True))
        part_calls["all"] = marks[-1] - marks[0]

        # The programs' own run time, counted by the kernel: per syscall of the loop
        # (best of the rounds) and as a share of the mixed workload's wall time.
        per_call = loop_run_times(exe, args.calls, floor, floor_hook, cap, cap_hook,
                                  ref, ref_hook, max(3, args.reps))
        with ProgramClock() as clock:
            # The mixed workload once under each: the programs' share of its wall time,
            # and for capture the time per program and what its records carried.
            def share(bpf, hook) -> float:
                t0 = time.monotonic()
                _, prog_ns = clock.measure(bpf, hook, lambda: mixed_workload(tmp))
                return prog_ns / 1e9 / (time.monotonic() - t0)

            mixed_share = {"floor": share(floor, floor_hook),
                           "reference": share(ref.bpf, ref_hook)}
            before, c0 = program_times(cap.bpf), cap.counters()
            mixed_share["capture"] = share(cap.bpf, cap_hook)
            after, c1 = program_times(cap.bpf), cap.counters()
            records = c1["emitted_records"] - c0["emitted_records"]
            carried = c1["emitted_syscalls"] - c0["emitted_syscalls"]
            mixed_programs = {k.removeprefix("raw_tracepoint__"):
                              (after[k][0] - before[k][0], after[k][1] - before[k][1])
                              for k in after if after[k][0] > before[k][0]}
        floor.cleanup()
        drain.stop.set()
        drain.join()
        ref_drain.stop.set()
        ref_drain.join()
        ref.close()
        mixed_counters = cap.counters()
        cap.close()

    report_loop(args, rounds, loop_best, loop_rates, counters, per_call)
    print(f"mixed workload (find /usr, 10 python start-ups, 5 gcc), {args.reps} interleaved "
          "rounds: per cent over the round beside it, mean +- standard error (median); "
          f"reader timer {args.read_interval * 1000:g} ms")
    print(f"{'':8}{'syscalls':>10}{'untraced':>10}{'floor':>22}{'sysdream capture':>22}"
          f"{'capture over floor':>22}{'floor ns/syscall':>18}")
    for part in (*PARTS, "all"):
        for i, what in ((0, "wall"), (1, "CPU")):
            t = {k: [r[part][i] for r in mixed[k]] for k in mixed}
            cells = [overhead(t["floor"], t["untraced"]), overhead(t["capture"], t["untraced"]),
                     overhead(t["capture"], t["floor"])]
            # The floor's added time per syscall of this part, by timing (the loop's added
            # ns above are the same hook on a hot cache); only where syscalls are dense
            # enough (over 100k/s) that a per cent of noise is not hundreds of ns.
            base = statistics.mean(t["untraced"])
            floor_per_call = (f"{(statistics.mean(t['floor']) - base) * 1e9 / part_calls[part]:.0f}"
                              if part_calls[part] > 100_000 * base else "-")
            print(f"{part + ' ' + what:8}"
                  f"{part_calls[part] if i == 0 else '':>10}"
                  f"{statistics.median(t['untraced']):>9.3f}s"
                  + "".join(f"{f'{m:+.1f} +- {se:.1f} ({md:+.1f})':>22}" for m, se, md in cells)
                  + f"{floor_per_call:>18}")
    for i, what in ((0, "wall"), (1, "CPU")):
        t = {k: [r["all"][i] for r in mixed[k]] for k in mixed}
        m, se, md = overhead(t["capture"], t["reference"])
        print(f"mixed workload {what}: sysdream capture over the reference {m:+.1f} +- {se:.1f}"
              f" ({md:+.1f})%")
    reader = {k: statistics.mean(r["reader"] for r in mixed[k]) for k in mixed}
    cap_wall = statistics.mean(r["all"][0] for r in mixed["capture"])
    print("mixed workload: the reader thread's CPU per round, mean: " + ", ".join(
        f"{k} {1000 * v:.1f} ms" for k, v in reader.items())
          + f" ({100 * reader['capture'] / cap_wall:.1f}% of a CPU under capture)")
    print(f"mixed workload: lost {mixed_counters['lost_syscalls'] - counters['lost_syscalls']}")
    print(f"mixed workload: BPF programs ran for {100 * mixed_share['floor']:.1f}% of its "
          f"wall time under the floor and {100 * mixed_share['capture']:.1f}% under sysdream "
          f"capture ({100 * (mixed_share['capture'] - mixed_share['floor']):+.1f} points), "
          f"{100 * mixed_share['reference']:.2f}% under the reference and "
          f"{100 * mixed_share['capture']:.2f}% under sysdream ("
          "kernel.bpf_stats_enabled, every program, the stats' own clock reads included)")
    print("mixed workload, sysdream's programs: " + ", ".join(
        f"{name} {runs:,} runs at {ns / runs:.0f} ns" for name, (runs, ns) in
        sorted(mixed_programs.items(), key=lambda kv: -kv[1][1])))
    print(f"mixed workload, one run under capture: {carried:,} syscalls in {records:,} "
          f"records ({carried / max(records, 1):.1f} per record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
