"""The scenario suite's benign workload: what the host normally does.

    python3 benign.py ROOT PORT SEED

Runs until SIGTERM, all of it in the caller's cgroup:
- the web application (webapp.py), restarted every 60-150 s as a deploy would;
- clients: three threads of requests (pages, static files, database queries, lookups,
  reports, uploads);
- a worker pool whose processes compress, write, read back and hash data, replaced after
  a number of tasks, the whole pool recycled every 60-180 s (a graceful reload);
- cron-like jobs through /bin/sh -c: tar, find, sha256sum, gzip, du;
- an administrator's commands through bash -c: ps, grep, sort, ls, id, cat, df, uptime,
  xargs, journalctl;
- now and then a package-manager-like burst: 150 files written, synced, renamed into place,
  their modes set, the previous version removed.

SEED draws every choice (which request, which job, which command, the pauses), so a run
with another seed is the same kind of activity, not the same sequence.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
USERS = ["root", "daemon", "nobody", "bin", "sys", "www-data", "mail"]
STATIC = ["style.css", "app.js"]

JOBS = [
    "tar czf {root}/backup.tgz -C {root} uploads access.log 2>/dev/null",
    "find {root} -name '*.log' -size +1k -type f",
    "sha256sum {root}/app.db {root}/backup.tgz 2>/dev/null",
    "gzip -kf {root}/access.log",
    "du -s {root}",
    "find {root}/uploads -type f -mmin +2 -delete",
]
ADMIN = [
    "ps aux | grep -c python",
    "ls -la {root} | sort -k5 -n | tail -3",
    "id",
    "cat /etc/os-release | head -2",
    "df -h {root}",
    "uptime",
    "find {root}/uploads -type f | head -20 | xargs -r wc -c | tail -1",
    "journalctl -n 5 --no-pager -q",
    "tail -n 3 {root}/access.log",
    "ls /proc | wc -l",
]


def _work(task: tuple[int, int, str]) -> str:
    """A worker pool task: compress, write, read back, hash."""
    seed, size, root = task
    data = random.Random(seed).randbytes(size)
    path = Path(root) / "work" / f"{os.getpid()}-{seed}.z"
    path.write_bytes(zlib.compress(data, 6))
    back = zlib.decompress(path.read_bytes())
    path.unlink()
    return f"{zlib.crc32(back):08x}"


class Workload:
    def __init__(self, root: Path, port: int, seed: int):
        self.root, self.port, self.rng = root, port, random.Random(seed)
        self.stop = threading.Event()
        self.app: subprocess.Popen | None = None
        self.lock = threading.Lock()
        for d in ("uploads", "work", "pkg"):
            (root / d).mkdir(parents=True, exist_ok=True)

    def pause(self, lo: float, hi: float) -> bool:
        with self.lock:
            t = self.rng.uniform(lo, hi)
        return not self.stop.wait(t)

    def pick(self, items):
        with self.lock:
            return self.rng.choice(items)

    # -- the web application and its clients ---------------------------------------------
    def start_app(self) -> None:
        self.app = subprocess.Popen([sys.executable, str(HERE / "webapp.py"), str(self.port),
                                     str(self.root)], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        self.app.stdout.readline()      # "ready"

    def stop_app(self) -> None:
        if self.app is not None:
            self.app.terminate()
            try:
                self.app.wait(10)
            except subprocess.TimeoutExpired:
                self.app.kill()
                self.app.wait()

    def deploys(self) -> None:
        while self.pause(60, 150):
            self.stop_app()
            self.start_app()

    def client(self) -> None:
        base = f"http://127.0.0.1:{self.port}"
        while self.pause(0.05, 0.6):
            kind = self.pick(["page", "page", "items", "items", "lookup", "report", "upload",
                              "static"])
            try:
                if kind == "page":
                    urllib.request.urlopen(base + "/", timeout=10).read()
                elif kind == "items":
                    urllib.request.urlopen(base + "/items", timeout=10).read()
                elif kind == "lookup":
                    urllib.request.urlopen(f"{base}/lookup?user={self.pick(USERS)}",
                                           timeout=10).read()
                elif kind == "report":
                    urllib.request.urlopen(base + "/report", timeout=10).read()
                elif kind == "static":
                    urllib.request.urlopen(f"{base}/static/{self.pick(STATIC)}",
                                           timeout=10).read()
                else:
                    with self.lock:
                        body = self.rng.randbytes(self.rng.randint(100, 20000))
                    urllib.request.urlopen(urllib.request.Request(base + "/upload", body),
                                           timeout=10).read()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass    # a deploy in progress: clients retry, as real ones do

    # -- the rest of the host ------------------------------------------------------------
    def pool(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                until = time.monotonic() + self.rng.uniform(60, 180)
            with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=25) as pool:
                while time.monotonic() < until and self.pause(0.1, 0.5):
                    with self.lock:
                        task = (self.rng.randrange(1 << 30), self.rng.randint(1000, 200000),
                                str(self.root))
                    pool.apply_async(_work, (task,))
                pool.terminate()

    def cron(self) -> None:
        while self.pause(3, 12):
            job = self.pick(JOBS).format(root=self.root)
            subprocess.run(["/bin/sh", "-c", job], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)

    def admin(self) -> None:
        while self.pause(5, 20):
            cmd = self.pick(ADMIN).format(root=self.root)
            subprocess.run(["/bin/bash", "-c", cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)

    def packages(self) -> None:
        version = 0
        while self.pause(30, 90):
            version += 1
            staging = self.root / "pkg" / ".staging"
            staging.mkdir(exist_ok=True)
            for i in range(150):
                with (staging / f"file-{i}").open("wb") as f:
                    with self.lock:
                        f.write(self.rng.randbytes(self.rng.randint(200, 4000)))
                    os.fsync(f.fileno())
            target = self.root / "pkg" / f"v{version}"
            staging.rename(target)
            for p in target.iterdir():
                p.chmod(0o644)
            shutil.rmtree(self.root / "pkg" / f"v{version - 1}", ignore_errors=True)

    def run(self) -> None:
        self.start_app()
        parts = [self.deploys, self.client, self.client, self.client, self.pool, self.cron,
                 self.admin, self.packages]
        threads = [threading.Thread(target=p, daemon=True) for p in parts]
        for t in threads:
            t.start()
        self.stop.wait()
        for t in threads:
            t.join(15)
        self.stop_app()
        for child in multiprocessing.active_children():   # a pool that did not finish
            child.kill()


def main() -> int:
    root, port, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    w = Workload(root, port, seed)
    signal.signal(signal.SIGTERM, lambda *_: w.stop.set())
    signal.signal(signal.SIGINT, lambda *_: w.stop.set())
    print("started", flush=True)
    w.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
