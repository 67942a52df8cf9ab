"""Start-up: bcc's compile of the probes, and `sysdream run --model` from its start to
detecting.

    .venv/bin/python bench/startup.py --model BUNDLE [--runs 3] [--json FILE]

1. Compile: a fresh interpreter imports the probes, builds the Capture (bcc compiles
   probes/capture.bpf.c with clang in-process, loads and attaches it) and closes it;
   it reports the seconds the build took and its peak RSS (ru_maxrss) before the build
   (the imports) and after it (the compile's peak), and the RSS once the compiler's
   memory is given back. bcc has no interface to load a program it compiled earlier
   (its issues 534, 2564 and 3120 are open; the way out is libbpf and CO-RE, another
   loader), so this is what each start costs.
2. Start to detecting: `sysdream run --model BUNDLE` (the shipped defaults, a state
   directory of its own, no journald), from the process's start to "probes attached" on
   stderr, and to the first metrics scrape after it that says phase "detecting" (the
   phase says so as soon as the model is in, while the probes may still compile).

Each `--runs` times; every run is printed, then the median. BUNDLE: any bundle the
daemon loads (bench/daemon.py --model DIR trains one on its load and keeps it). Run it
alone: the figures are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "daemon"))
from harness import Daemon  # noqa: E402  (real parts, shared)

COMPILE = r"""
import json, resource, time
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
from sysdream.probes.capture import Capture
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.monotonic()
cap = Capture()
took = time.monotonic() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
after = rss_mb()
cap.close()
print(json.dumps({"compile_s": took, "peak_before_mb": before, "peak_after_mb": peak,
                  "rss_after_mb": after}))
"""


def compile_once() -> dict:
    r = subprocess.run([sys.executable, "-c", COMPILE], capture_output=True, text=True,
                       timeout=300, check=True)
    return json.loads(r.stdout.splitlines()[-1])


def start_once(model: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="sysdream-startup-") as tmp:
        tmp = Path(tmp)
        d = Daemon(["--model", str(model), "--state-dir", str(tmp / "state"),
                    "--no-journald"], tmp)
        try:
            attached = detecting = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and detecting is None:
                if d.proc.poll() is not None:
                    raise SystemExit(f"the daemon exited {d.proc.returncode}:\n{d.stderr}")
                now = time.monotonic() - d.started
                if attached is None and "probes attached" in d.stderr:
                    attached = now
                try:       # the phase says starting until the probes are attached
                    if attached is not None and \
                            d.metrics().get('sysdream_phase{phase="detecting"}') == 1.0:
                        detecting = time.monotonic() - d.started
                except OSError:
                    pass
                time.sleep(0.05)
            if detecting is None:
                raise SystemExit(f"not detecting after 120 s:\n{d.stderr[-2000:]}")
            return {"attached_s": attached, "detecting_s": detecting}
        finally:
            d.proc.terminate()
            d.proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a bundle the daemon loads")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if not (args.model / "manifest.json").is_file():
        print(f"startup: {args.model} is not a model bundle (no manifest.json): train one "
              "with bench/daemon.py --model DIR", file=sys.stderr)
        return 2
    compiles = [compile_once() for _ in range(args.runs)]
    starts = [start_once(args.model) for _ in range(args.runs)]
    for i, c in enumerate(compiles, 1):
        print(f"compile {i}: {c['compile_s']:.2f} s; peak RSS {c['peak_before_mb']:.0f} MB "
              f"before, {c['peak_after_mb']:.0f} MB after; RSS after {c['rss_after_mb']:.0f} MB")
    for i, s in enumerate(starts, 1):
        print(f"start {i}: probes attached {s['attached_s']:.2f} s, detecting "
              f"{s['detecting_s']:.2f} s")

    def med(rows, key):
        return statistics.median(r[key] for r in rows)
    print(f"median: compile {med(compiles, 'compile_s'):.2f} s, its peak "
          f"+{med(compiles, 'peak_after_mb') - med(compiles, 'peak_before_mb'):.0f} MB; "
          f"start to detecting {med(starts, 'detecting_s'):.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"compile": compiles, "start": starts}, indent=1)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
