"""Daemon test helpers: chunk records built the way the kernel lays them out, and samples of
the synthetic corpus (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "probes"))

from harness import Daemon, JournalNamespace  # noqa: E402
from synthetic_corpus import (  # noqa: E402, F401 (re-exported for the daemon tests)
    attack_sequence,
    normal_sequence,
    program_loop,
    quick_settings,
    tiny_config,
)

from sysdream.daemon.alerting.kinds import MESSAGE_IDS
from sysdream.probes import syscalls  # noqa: E402
from sysdream.probes.layout import REC_EXIT, record_dtype  # noqa: E402


def records(tid: int, names, tgid: int | None = None, comm: str = "worker", seq0: int = 0,
            chunk: int = 64, exit: bool = False, t0: int = 1) -> np.ndarray:
    """The chunk records a thread making `names` would produce (full chunks, the rest in a
    partial one; the last flagged EXIT when `exit`)."""
    ids = syscalls.number_array(list(names), syscalls.native_arch())
    n = max(1, -(-len(ids) // chunk))
    out = np.zeros(n, record_dtype(chunk))
    for i in range(n):
        part = ids[i * chunk:(i + 1) * chunk]
        r = out[i]
        r["tid"], r["tgid"], r["seq"] = tid, tgid or tid, seq0 + i
        r["count"] = len(part)
        r["ids"][:len(part)] = part
        r["comm"] = comm.encode()
        r["first_ns"] = r["last_ns"] = t0 + i
        r["cgroup_id"] = 1
    if exit:
        out[-1]["flags"] |= REC_EXIT
    return out


def sample_normal(seed: int, n: int) -> np.ndarray:
    return normal_sequence(np.random.default_rng(seed), n)


def sample_attack(seed: int, n: int) -> np.ndarray:
    return attack_sequence(np.random.default_rng(seed), n)


def context_record(kind: int, tgid: int, ns: int, path: str, ino: int) -> np.ndarray:
    """A kernel context record of `tgid` (started at ns 1) running `path`."""
    from sysdream.probes.layout import CONTEXT_DTYPE

    r = np.zeros(1, CONTEXT_DTYPE)
    r["kind"], r["tgid"], r["tid"], r["start_ns"], r["ns"] = kind, tgid, tgid, 1, ns
    r["exe_ino"], r["exe_dev"] = ino, 1
    parts = path.strip("/").split("/")
    r["exe_name"] = parts[-1].encode()
    r["path_depth"] = len(parts)
    for i, part in enumerate(reversed(parts)):
        r["path"][0, i] = part.encode()
    return r


# -- a daemon tracing a test cgroup, alerts to a journald of the test's own --------------
DATA = Path(__file__).parent / "data"
PROBE_DATA = Path(__file__).parents[1] / "probes" / "data"
ANOMALY = {"MESSAGE_ID": MESSAGE_IDS["anomaly"]}


def start_in(cgroup_dir: Path, cmd: list[str], **kw) -> subprocess.Popen:
    """Start `cmd` inside the cgroup (it moves itself there before it executes)."""
    procs = str(cgroup_dir / "cgroup.procs")

    def enter():
        with open(procs, "w") as f:
            f.write("0")
    return subprocess.Popen(cmd, preexec_fn=enter, **kw)


def run_in(cgroup_dir: Path, cmd: list[str], timeout: float = 60) -> subprocess.Popen:
    """Run a test program (which waits for a byte on stdin) inside the cgroup, to its end."""
    proc = start_in(cgroup_dir, cmd, stdin=subprocess.PIPE)
    proc.communicate(b"g", timeout=timeout)
    assert proc.returncode == 0
    return proc


def remove_cgroup(d: Path) -> None:
    """rmdir a test cgroup once its last process has left (that takes a moment)."""
    import time
    for _ in range(50):
        try:
            d.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def gcc(tmp_path: Path, source: Path) -> Path:
    exe = tmp_path / source.stem
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(source)], check=True)
    return exe


def config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sysdream.toml"
    p.write_text("[detection]\nevidence_windows = 1\nevidence_exceedances = 1\n" + text)
    return p


def start_daemon(tmp_path: Path, cfg: Path, bundle: Path, cgroup_id: int,
                 journal: JournalNamespace, *extra: str) -> Daemon:
    """The daemon with the tiny model, tracing the test's cgroup only, alerts to journald."""
    d = Daemon(["--config", str(cfg), "--model", str(bundle), "--state-dir",
                str(tmp_path / "state"), "--cgroup", str(cgroup_id), *extra], tmp_path,
               prefix=journal.prefix)
    d.wait_attached()
    return d


def entries_for(journal: JournalNamespace, **match) -> list[dict]:
    return journal.entries(**ANOMALY, **match)
