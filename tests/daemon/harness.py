"""Real parts for the service tests: the daemon as a child process, a NOTIFY_SOCKET, a
systemd-journald in a private mount namespace, a Prometheus server on 127.0.0.1, and a
workload program with its own process name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for bench/ too
from speed import scaled, slowness  # noqa: E402  (tests/speed.py)

JOURNALD = "/lib/systemd/systemd-journald"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def probe_endpoint(address: str = "127.0.0.1", **kw):
    """The metrics endpoint (serve_http) on a registry of one counter, serving
    `sysdream_probe_total 1.0`: yields (server, port, held); at the end the sockets the
    test put in `held` are closed, then the server."""
    from prometheus_client import CollectorRegistry, Counter

    from sysdream.daemon.metrics import server as msrv

    reg = CollectorRegistry()
    Counter("sysdream_probe", "a probe", registry=reg).inc()
    srv = msrv.serve_http(reg, address, 0, **kw)
    held: list = []
    try:
        yield srv, (0 if isinstance(srv.server_address, str) else srv.server_address[1]), held
    finally:
        for s in held:
            s.close()
        srv.shutdown()
        srv.server_close()


def wait_for(pred, timeout: float, what: str, step: float = 0.2):
    """Poll `pred` until it returns something true; `timeout` is for the developers'
    machine and stretched by `slowness()` on a slower one."""
    limit = timeout * slowness()
    end = time.monotonic() + limit
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out after {limit:.0f} s ({timeout:.0f} s at slowness "
                         f"{slowness():.2f}) waiting for {what}")


class NotifySocket:
    """A test-made $NOTIFY_SOCKET: every datagram, with its arrival time."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, value: str | None = None) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in list(self.messages)
                if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def scrape(port: int, netns: str | None = None) -> dict[str, float]:
    """A Prometheus exposition on 127.0.0.1:port (inside network namespace `netns`, when
    given), as {series: value}; {} when unreachable."""
    url = f"http://127.0.0.1:{port}/metrics"
    if netns:
        code = ("import sys, urllib.request\ntry:\n sys.stdout.write(urllib.request.urlopen("
                f"{url!r}, timeout=5).read().decode())\nexcept OSError:\n pass")
        r = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                            code], capture_output=True, text=True, timeout=scaled(30))
        text = r.stdout
    else:
        try:
            with urllib.request.urlopen(url, timeout=scaled(5)) as r:
                text = r.read().decode()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class PtyOutput:
    """A pseudo-terminal for a child's stderr (`slave`), drained into `text()`: what a
    user at a terminal would see."""

    def __init__(self):
        import pty
        self.master, self.slave = pty.openpty()
        self.got = bytearray()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.got.extend(chunk)

    def text(self) -> str:
        return self.got.decode("utf-8", "replace")

    def close(self) -> None:
        os.close(self.slave)
        self.thread.join(5)
        os.close(self.master)


class Daemon:
    """`sysdream run` as a child process (optionally inside a mount namespace)."""

    def __init__(self, args: list[str], tmp: Path, notify: NotifySocket | None = None,
                 env: dict | None = None, prefix: list[str] | None = None,
                 launcher: list[str] | None = None):
        self.port = free_port()
        self.err_path = tmp / f"daemon-{self.port}.err"
        self.out_path = tmp / f"daemon-{self.port}.out"
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        e.pop("NOTIFY_SOCKET", None)
        if notify:
            e["NOTIFY_SOCKET"] = notify.path
        cmd = [*(prefix or []), *(launcher or [sys.executable, "-m", "sysdream.daemon"]), "run",
               "--metrics-port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.out_path.open("w"),
                                     stderr=self.err_path.open("w"), env=e)
        self.started = time.monotonic()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def metrics(self) -> dict[str, float]:
        """The daemon's own exposition, as {series: value}."""
        return scrape(self.port)

    def health(self) -> tuple[int, dict]:
        """(HTTP status, JSON body) of the daemon's /healthz; (0, {}) when unreachable."""
        import json
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz",
                                        timeout=scaled(5)) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def metric(self, series: str) -> float:
        return self.metrics().get(series, float("nan"))

    def wait_phase(self, phase: str, timeout: float) -> None:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr}")
            return self.metrics().get(f'sysdream_phase{{phase="{phase}"}}') == 1.0
        wait_for(ok, timeout, f"phase {phase}\n{self.stderr[-3000:]}")

    def wait_attached(self, timeout: float = 90) -> None:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.stderr}")
            return "probes attached" in self.stderr
        wait_for(ok, timeout, "the probes to attach")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> tuple[int, float]:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9, time.monotonic() - t0
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class JournalNamespace:
    """systemd-journald by hand in a private mount namespace (tmpfs over its directories);
    commands enter the namespace with nsenter."""

    DIRS = ("/run/systemd/journal", "/run/log/journal", "/var/log/journal")

    def __init__(self):
        for d in self.DIRS:
            os.makedirs(d, exist_ok=True)
        mounts = " && ".join(f"mount -t tmpfs tmpfs {d}" for d in self.DIRS)
        self.holder = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"{mounts} && echo ready && exec sleep 100000"], stdout=subprocess.PIPE,
            text=True)
        line = self.holder.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError("could not make the private mount namespace for journald")
        self.prefix = ["nsenter", "-t", str(self.holder.pid), "-m", "--"]
        self.journald = None
        self.start_journald()

    def start_journald(self) -> None:
        self.journald = subprocess.Popen([*self.prefix, JOURNALD], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        wait_for(lambda: self.run(["test", "-S", "/run/systemd/journal/socket"]).returncode
                 == 0 and self.socket_accepts(), 10, "journald's socket")

    def socket_accepts(self) -> bool:
        return self.run([sys.executable, "-c", "import socket; s=socket.socket("
                         "socket.AF_UNIX, socket.SOCK_DGRAM); "
                         "s.connect('/run/systemd/journal/socket')"]).returncode == 0

    def stop_journald(self) -> None:
        self.journald.terminate()
        self.journald.wait(10)
        self.journald = None

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *cmd], capture_output=True, text=True,
                              timeout=scaled(60), **kw)

    def entries(self, **match) -> list[dict]:
        cmd = ["journalctl", "-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=sysdream"]
        cmd += [f"{k}={v}" for k, v in match.items()]
        out = self.run(cmd)
        return [json.loads(ln) for ln in out.stdout.splitlines() if ln.strip()]

    def close(self) -> None:
        if self.journald is not None:
            self.journald.kill()
            self.journald.wait()
        self.holder.kill()
        self.holder.wait()


class Prometheus:
    """A real Prometheus server on 127.0.0.1 scraping `target` every second (`job`: more
    lines of its scrape config, indented as its keys, e.g. a scheme and a tls_config)."""

    def __init__(self, tmp: Path, target: str, job: str = ""):
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus is missing: `make setup` installs it")
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                       "scrape_configs:\n  - job_name: sysdream\n    static_configs:\n"
                       f"      - targets: ['{target}']\n{job}")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "prometheus.log").open("w"))

    def query(self, expr: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=scaled(5)) as r:
                data = json.loads(r.read())
        except OSError:
            return []
        return data.get("data", {}).get("result", [])

    def status(self, expr: str) -> str:
        """The API's status for an expression: "success", or "error" for one that does not
        parse or evaluate."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            with urllib.request.urlopen(url, timeout=scaled(5)) as r:
                return json.loads(r.read()).get("status", "")
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read()).get("status", "error")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def workload(tmp: Path, name: str = "sdwork") -> Path:
    """A copy of bash under its own name: its process name is `name`."""
    path = tmp / name
    shutil.copy("/bin/bash", path)
    path.chmod(0o755)
    return path


BENIGN = ("for i in $(seq 120); do read -r x < /etc/hostname; echo \"$x\" > /dev/null; "
          "cd /tmp; done")
# Something new for the same program: a shell, a file it never read, a socket.
ODD = ("for i in $(seq 30); do read -r x < /etc/hostname; y=$(sh -c 'cat /etc/passwd' | "
       "wc -l); exec 3<>/dev/tcp/127.0.0.1/9; done 2>/dev/null")


def run_script(program: Path, script: str, times: int = 1, prefix=None) -> None:
    for _ in range(times):
        subprocess.run([*(prefix or []), str(program), "-c", script], timeout=scaled(60),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def learn_benign(d: Daemon, program: Path, seconds: float = 15, pause: float = 0.0) -> None:
    """A learning daemon records `program` running BENIGN for `seconds` (with `pause`
    between runs), then trains and detects."""
    d.wait_attached()
    d.wait_phase("learning", 30)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run_script(program, BENIGN)
        time.sleep(pause)
    d.wait_phase("detecting", 300)
