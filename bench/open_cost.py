"""What an open for reading costs the capture, by the kernel's own count: the capture
program (acts on) and a reference capture.bpf.c (acts on too) loaded in turn, each timing
bench/open_loop.c's opens of a file that is not sensitive (half by an absolute path, half
relative). Prints the BPF run time per open (an open and its close share the sys_enter
program; a close costs the per-syscall path only) for each, best and median of the rounds.

    .venv/bin/python bench/open_cost.py --reference-source OLD.bpf.c [--opens N --rounds R]

A reference without the sensitive-tails map gets the prefixes alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

from sysdream.probes import capture as capture_module
from sysdream.probes.acts import default_sensitive
from sysdream.probes.capture import LPM_LEN, Capture, CaptureSettings, head_slot

HERE = Path(__file__).parent
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


class Reference(Capture):
    """A capture.bpf.c from another commit: its prefixes set by hand when it has no
    sensitive-tails map."""

    def _set_sensitive(self, paths):
        try:
            self.bpf[b"sensitive_tails"]
        except KeyError:
            paths = default_sensitive() if paths is None else paths
            heads, table = self.bpf[b"sensitive_heads"], self.bpf[b"sensitive"]
            wanted = {head_slot(p.encode()) for p in paths}
            for i in range(256):
                heads[heads.Key(i)] = heads.Leaf(1 if i in wanted else 0)
            for path in paths:
                data = path.encode()[:LPM_LEN - 1]
                key = table.Key()
                key.prefixlen, key.data = 8 * len(data), data
                table[key] = table.Leaf(1)
            return
        super()._set_sensitive(paths)


def load(source: bytes | None) -> Capture:
    if source is None:
        return Capture(CaptureSettings())
    own = capture_module.bpf_source
    capture_module.bpf_source = lambda: source
    try:
        return Reference(CaptureSettings())
    finally:
        capture_module.bpf_source = own


def per_open(cap: Capture, loop: Path, opens: int) -> float:
    before = cap.program_stats()["sys_enter"][1]
    subprocess.run([str(loop), str(opens)], check=True)
    after = cap.program_stats()["sys_enter"][1]
    while cap.read().size or cap.read_acts().size or cap.read_context().size:
        pass
    return (after - before) / opens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-source", metavar="FILE", required=True)
    ap.add_argument("--opens", type=int, default=400000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    ref = Path(args.reference_source).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        loop = Path(tmp) / "open_loop"
        subprocess.run(["gcc", "-O2", "-o", str(loop), str(HERE / "open_loop.c")],
                       check=True)
        old = STATS.read_text().strip()
        STATS.write_text("1")
        got: dict[str, list[float]] = {"this capture": [], "reference": []}
        try:
            for _ in range(args.rounds):
                for name, source in (("reference", ref), ("this capture", None)):
                    cap = load(source)
                    try:
                        got[name].append(per_open(cap, loop, args.opens))
                    finally:
                        cap.close()
        finally:
            STATS.write_text(old)
    print(f"BPF run time per open for reading (and its close), ns, {args.rounds} rounds of "
          f"{args.opens:,} opens")
    for name, v in got.items():
        print(f"  {name:13s} best {min(v):7.1f}  median {statistics.median(v):7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
