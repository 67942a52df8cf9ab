"""Acts: what a process did that says what it is, from the kernel's act records.

The capture program (capture.bpf.c, `struct act_rec`; numpy mirror `layout.ACT_DTYPE`)
sends one record, into its own ring buffer (`acts`), per

- file written or created: open/openat/openat2/creat with a write or create flag
  (`write`), rename (`rename`), link/symlink (`link`), unlink/rmdir (`unlink`), the chmod
  family (`chmod`), the chown family (`chown`), truncate/ftruncate (`truncate`);
- open for reading of a path under a sensitive prefix (`read`; the prefixes are set
  with CaptureSettings.sensitive_paths, default `default_sensitive()`);
- network: connect (`connect`) and sendto/sendmsg to an explicit address (`send`), once
  per process and peer; bind (`bind`); listen (`listen`) and accept (`accept`, once per
  process and listening port), with the socket's own family and port;
- privilege: setuid/setgid/setre*/setres*/setfs* (`setid`, ids in `args`), capset
  (`capset`), ptrace (`ptrace`: request, target pid), mount (`mount`), init_module /
  finit_module (`module`), bpf (`bpf`, once per process and command), memfd_create
  (`memfd`, its name);
- exec (`exec`): the file exec was given and a hash of the new argv (`argv_hash`).

Records are taken at syscall entry: they say what was asked, not whether it succeeded
(exec excepted: it is sent once the new program runs). Only traced threads' acts are sent
(the capture filters apply), and only for native 64-bit x86 calls.

Nothing is cut silently: `truncated` / `truncated2` say a path was longer than 255 bytes,
`fault` that user memory could not be read at the call (the field is then empty),
`relative` that a path is relative to the process's cwd (or, with `dirfd`, to the
directory descriptor in the call's first argument: `args[0]`); relative paths are not
resolved here. An open for reading is matched against the sensitive prefixes only when
its path is absolute. Records lost to a full ring buffer are counted in
Capture.counters()["act_lost"] (sent: "act_records").

Use (the daemon):

    cap = Capture(CaptureSettings(...))           # acts=True by default
    ...
    for act in acts.decode(cap.read_acts()):      # oldest first, per pass
        act.kind, act.tgid, act.start_ns, act.path, act.peer ...

`Act.process` is the (tgid, start_ns) key that context records (layout.CONTEXT_DTYPE)
use, so an act joins its process's exe, parent and lineage. Read context records first
in a pass: a process's CTX_NEW record is sent before its acts.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import pwd
import socket
from dataclasses import dataclass

import numpy as np

from .layout import ACT_DTYPE, ACT_PATH

# struct act_rec.kind
KINDS = {1: "write", 2: "read", 3: "rename", 4: "link", 5: "unlink", 6: "chmod",
         7: "chown", 8: "truncate", 9: "connect", 10: "bind", 11: "listen", 12: "accept",
         13: "send", 14: "setid", 15: "capset", 16: "ptrace", 17: "mount", 18: "module",
         19: "bpf", 20: "memfd", 21: "exec"}
KIND_OF = {v: k for k, v in KINDS.items()}

# struct act_rec.flags
TRUNCATED = 0x001
TRUNCATED2 = 0x002
RELATIVE = 0x004
RELATIVE2 = 0x008
DIRFD = 0x010
FAULT = 0x020
BY_FD = 0x040
LOCAL = 0x080
ARGV_CUT = 0x100
NOT_SOCK = 0x200
BY_TAIL = 0x400     # a read sent for its path's tail: user space resolves it (resolve_read)

ARGV_HASH_MAX = 4096

# Read by every program that authenticates or holds keys; user homes are added by
# default_sensitive().
SENSITIVE_SYSTEM = (
    "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers",
    "/etc/security/opasswd", "/etc/ssh/ssh_host_", "/etc/ssl/private/",
    "/etc/pki/tls/private/", "/etc/krb5.keytab", "/var/lib/sss/secrets/",
    "/root/.ssh/", "/root/.gnupg/", "/root/.aws/", "/root/.kube/", "/root/.docker/config",
    "/root/.netrc", "/root/.pgpass", "/root/.bash_history",
)
SENSITIVE_IN_HOME = (".ssh/", ".gnupg/", ".aws/", ".kube/", ".docker/config", ".netrc",
                     ".pgpass", ".bash_history", ".config/gcloud/")
_PREFIX_MAX = 127   # bytes the kernel matches (capture.LPM_LEN - 1)


def default_sensitive(max_entries: int = 1024) -> tuple[str, ...]:
    """The system's credential and key files, and the same under each user's home (from
    the password database; homes that are "/" or too long to match are left out)."""
    out = list(SENSITIVE_SYSTEM)
    homes = set()
    try:
        entries = pwd.getpwall()
    except OSError:
        entries = []
    for e in entries:
        home = e.pw_dir.rstrip("/")
        if home and home != "/root" and home.startswith("/") and home not in homes:
            homes.add(home)
            out += [f"{home}/{p}" for p in SENSITIVE_IN_HOME
                    if len(f"{home}/{p}".encode()) <= _PREFIX_MAX]
    return tuple(dict.fromkeys(out))[:max_entries]


# Key files in a sensitive folder (…/.ssh/) whose names the kernel also matches at the end
# of a path, as it cannot match "any file in that folder" there.
KEY_NAMES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk")
GENERIC_NAMES = {"config"}      # too common a name to send every read of it
TAIL_LEN = 7


def tail_key(name: str | bytes) -> int:
    """The kernel's key of a path's end: its last (up to) 7 bytes, left-aligned,
    zero-padded, as a little-endian u64 (capture.bpf.c sensitive_tails)."""
    data = name.encode() if isinstance(name, str) else name
    return int.from_bytes(data[-TAIL_LEN:].ljust(8, b"\0"), "little")


def sensitive_names(paths: tuple[str, ...]) -> set[str]:
    """The file names whose ends the kernel matches beside the prefixes: each sensitive
    file's name, the files a name prefix (/etc/ssh/ssh_host_) holds now, and the key
    files of a .ssh folder; the other folders' files are matched by prefix alone."""
    names = set()
    for p in paths:
        if p.endswith("/"):
            if p.endswith("/.ssh/"):
                names.update(KEY_NAMES)
            continue
        base = p.rsplit("/", 1)[-1]
        if base.endswith("_"):          # a name prefix: the files it names now
            names.update(f.rsplit("/", 1)[-1] for f in glob.glob(glob.escape(p) + "*"))
        elif base:
            names.add(base)
    return {n for n in names if n not in GENERIC_NAMES}


def sensitive_tails(paths: tuple[str, ...]) -> set[int]:
    """tail_key() of every way sensitive_names() ends a path: after a "/", or alone (a
    name relative to the cwd)."""
    return {k for n in sensitive_names(paths) for k in (tail_key("/" + n), tail_key(n))}


def resolve_read(path: bytes, cwd: str, sensitive: tuple[str, ...]) -> bytes | None:
    """A BY_TAIL read's path made absolute (`cwd` for a relative one, "" when unknown)
    and normal ("..", "." and "//" taken out as the kernel walks them, symlinks
    aside), or None when that is not under a sensitive prefix after all."""
    text = os.fsdecode(path)
    if not text.startswith("/"):
        if not cwd:
            return None
        text = f"{cwd.rstrip('/')}/{text}"
    text = "/" + os.path.normpath(text).lstrip("/")
    return os.fsencode(text) if text.startswith(sensitive) else None


def argv_hash(argv: bytes) -> int:
    """The kernel's hash of an argv (its NUL-separated bytes as the process's memory
    holds them, the final NUL included): 64-bit little-endian words of the first
    ARGV_HASH_MAX bytes zero-padded to whole ACT_PATH-byte blocks, FNV-1a's constants."""
    data = argv[:ARGV_HASH_MAX]
    h = 0xCBF29CE484222325
    for off in range(0, len(data), ACT_PATH):
        block = data[off:off + ACT_PATH].ljust(ACT_PATH, b"\0")
        for (word,) in np.frombuffer(block, "<u8").reshape(-1, 1).tolist():
            h = ((h ^ word) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Act:
    """One act. Paths are bytes as the kernel saw them (no encoding is promised); the
    raw syscall arguments are in `args` (open flags, modes, ids, ptrace request and
    target pid, bpf command, ...: their meaning is the syscall's, `nr`)."""

    kind: str
    nr: int                 # syscall number (x86_64)
    ns: int                 # CLOCK_MONOTONIC ns of the call
    tgid: int
    tid: int
    start_ns: int           # with tgid, the process's key (as in context records)
    cgroup_id: int
    uid: int
    euid: int
    comm: bytes
    flags: int
    args: tuple[int, ...]
    path: bytes             # write/read/...: the path; memfd: its name; mount: source
    path2: bytes            # rename/link: the new name; mount: target; unix socket path
    family: int             # socket.AF_* or 0
    address: str            # the peer's (or bound) address, "" when none
    port: int
    aux: int                # openat2: open_how.flags; capset: effective | permitted << 32;
    aux2: int               # capset: inheritable; exec: argv bytes hashed

    @property
    def process(self) -> tuple[int, int]:
        return self.tgid, self.start_ns

    @property
    def truncated(self) -> bool:
        return bool(self.flags & (TRUNCATED | TRUNCATED2))

    @property
    def relative(self) -> bool:
        return bool(self.flags & (RELATIVE | RELATIVE2))

    @property
    def open_flags(self) -> int | None:
        """O_* flags of an open (write/read acts); None for other kinds."""
        if self.kind not in ("write", "read"):
            return None
        return {2: self.args[1], 85: os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 257: self.args[2],
                437: self.aux}.get(self.nr)

    @property
    def argv_hash(self) -> int | None:
        return self.aux if self.kind == "exec" else None

    @property
    def peer(self) -> tuple[int, str, int] | None:
        """(family, address, port) of a connect, send, bind, listen or accept."""
        return (self.family, self.address, self.port) if self.family else None


def _cut(raw: bytes, n: int) -> bytes:
    return raw[:min(n, len(raw))].split(b"\0", 1)[0]


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


def decode(records: np.ndarray) -> list[Act]:
    """Act records (layout.ACT_DTYPE rows, as Capture.read_acts returns) as Acts, in
    order. A kind this version does not know is named "unknown:N"."""
    records = np.asarray(records, ACT_DTYPE)
    out = []
    for r in records:
        family, flags = int(r["family"]), int(r["flags"])
        out.append(Act(
            kind=KINDS.get(int(r["kind"]), f"unknown:{int(r['kind'])}"),
            nr=int(r["nr"]), ns=int(r["ns"]), tgid=int(r["tgid"]), tid=int(r["tid"]),
            start_ns=int(r["start_ns"]), cgroup_id=int(r["cgroup_id"]),
            uid=int(r["uid"]), euid=int(r["euid"]), comm=bytes(r["comm"]),
            flags=flags, args=tuple(int(a) for a in r["args"]),
            path=_cut(bytes(r["path"]), int(r["path_len"])),
            path2=_cut(bytes(r["path2"]), int(r["path2_len"])),
            family=family, address=_address(family, bytes(r["addr"])),
            port=int(r["port"]), aux=int(r["aux"]), aux2=int(r["aux2"])))
    return out
