"""Behaviour news: each act the kernel reports (probes/acts.py), as features of the program
that did it, judged against that program's profile (daemon/training/behaviour.py).

Features are "KIND VALUE" strings, made so that what a program does again looks the same:

    write PATTERN     a file written or created (also rename's new name, link, chmod,
                      chown, truncate); unlink PATTERN for a removal
    read PATTERN      a sensitive file opened for reading
    peer CLASS:PORT   connect / sendto: loopback, private, public (or unix:PATTERN)
    listen PORT       bind / listen / accept on a port of its own (ports from 32768 up,
                      the kernel's ephemeral range, as `ephemeral`)
    priv OPERATION    setid, capset, ptrace, mount, module, bpf CMD, memfd
    child PROGRAM     a program it started (from the child's exec)
    parent PROGRAM    the program that started it

Paths are normalised (`pattern`): the directory is kept, pids, numbers, hex and random
or temporary name parts become `*`, so /tmp/tmp3k9x_ab/run.12345.lock is
/tmp/*/run.*.lock, and fan-out folders of two hex digits before a hex name
(.git/objects/4f/0a1b...) are `*`.
In scratch folders (/tmp, /var/tmp, /dev/shm, /run/user) made names
are read more broadly: eight lower-case letters, digits and underscores, five or more
with a digit, or six or more in mixed case are a made name (/dev/shm/sem.mp-abcdefgh
and /dev/shm/sem.wfwPGG are /dev/shm/sem.mp-* and /dev/shm/sem.*).

Some news is dangerous whatever the program has done before: a module load, a fileless
exec (memfd, a deleted file, /dev/fd or /proc/PID/fd), a shell or interpreter exec'd
with its standard input on an IPv4 or IPv6 socket (a bind or reverse shell: the kernel
says so in the exec record), ptrace of a process that is not its child, an exec of a
file that a process which had talked to a network peer wrote in the last
`DOWNLOAD_SPAN_S` (downloaded, then run). A first read of the password hashes
(/etc/shadow, /etc/gshadow) is dangerous in any program whose profile never showed it,
settled or not: login, sshd's PAM helper and passwd read them every time and learn it.
So is a first write where the system finds what to run later or whom to let in
(`[profiles] persistence_paths`: cron, systemd units, init scripts, the loader's preload
list, authorized_keys), except by a package manager or what it started
(`[profiles] package_managers`: packages install units and cron files). A relative
path is resolved through /proc/PID/cwd while its process lives; one written by a
process gone by then is matched by its name only (docs/architecture.md).
The consumer takes acts through `ActSource` (the capture, or a test's list), so new act
kinds plug in where `features` learns to name them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sysdream.probes.acts import BY_TAIL, DIRFD, default_sensitive, resolve_read
from sysdream.probes.layout import (
    EXE_DELETED,
    EXE_FOREIGN_MNT,
    EXE_MEMFD,
    EXE_USERNS_MNT,
    STDIN_INET,
)

from ..context.processes import INTERPRETERS, program_label
from ..context.procfs import START_SLACK_NS, start_of
from ..training.behaviour import HeldOut, Profiles, ProgramId, kind_of

PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
FILE_KINDS = {"write": "write", "rename": "write", "link": "write", "chmod": "write",
              "chown": "write", "truncate": "write", "unlink": "unlink"}
PRIV_KINDS = ("setid", "capset", "ptrace", "mount", "module", "bpf", "memfd")

_HEXISH = re.compile(r"^(?=.*\d)[0-9a-fA-F]{6,}$")
_NUM = re.compile(r"\d+")
# two hex digits before a hex name: the fan-out folders of content-addressed stores
# (git's objects/4f/0a1b..., ccache's), one pattern for the 256 of them
_FANOUT = re.compile(r"^[0-9a-f]{2}$")
_WORD = re.compile(r"^[A-Za-z0-9_]{6,}$")
INLINE = (" -c", " -e", " --eval")     # program_label's inline-code options
EPHEMERAL = 32768   # ports from here up are the kernel's to hand out: one pattern
MAX_UNITS = 4096    # cgroup id -> service remembered
MAX_FETCHED = 4096  # files written by processes that talked to a network peer
DOWNLOAD_SPAN_S = 600
PASSWORD_HASHES = {f"read {p}" for p in ("/etc/shadow", "/etc/gshadow", "/etc/shadow-",
                                          "/etc/gshadow-")}
# Where the system finds what to run later, or whom to let in: a first write there is how
# an intruder stays. "~/" is every home (the password database's, and /root).
PERSISTENCE = (
    "/etc/cron.d/", "/etc/cron.hourly/", "/etc/cron.daily/", "/etc/cron.weekly/",
    "/etc/cron.monthly/", "/etc/crontab", "/etc/anacrontab", "/var/spool/cron/",
    "/etc/systemd/system/", "/etc/systemd/user/", "/lib/systemd/system/",
    "/usr/lib/systemd/system/", "/etc/init.d/", "/etc/rc.local", "/etc/ld.so.preload",
    "/etc/profile.d/", "/etc/update-motd.d/", "/etc/sudoers.d/", "~/.ssh/authorized_keys",
    "~/.config/systemd/user/",
)
PERSISTENCE_FORM = 'a list of absolute path prefixes ("~/" for every home), at most 256'
# Programs whose writes there, and their children's, are routine: a package's files
PACKAGE_MANAGERS = ("/usr/bin/dpkg", "/usr/bin/rpm")


def persistence_ok(paths) -> bool:
    """[profiles] persistence_paths' check (PERSISTENCE_FORM)."""
    return len(paths) <= 256 and all(isinstance(x, str) and x.startswith(("/", "~/"))
                                     and len(x) > 2 and "\0" not in x for x in paths)
_TRANSIENT = re.compile(r"^run-[a-z]?[0-9a-f]+\.service$")
_SWITCH = re.compile(r"(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
# a temporary name: tmp/temp and a suffix (tempfile, mkstemp), an editor's lock file
_TEMP_PREFIX = re.compile(r"^(tmp|temp)[._-]?[A-Za-z0-9_]{3,}$|^\.?#.+$")


_CASE = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[a-z])")
# folders where programs make uniquely named files and folders (tempfile, sem_open,
# multiprocessing): there a name's made part is never the program's own
SCRATCH = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/")
_MADE = re.compile(r"^[a-z0-9_]{8}$")
_HAS_DIGIT = re.compile(r"\d")
_WORD_CHARS = re.compile(r"^[A-Za-z0-9_]+$")
# glibc's sem_open makes its semaphore as sem.XXXXXX (six letters and digits, any case:
# all lower case one time in 200) before it links it to its name
_SEM_TEMP = re.compile(r"^/dev/shm/sem\.[A-Za-z0-9]{6}$")


def _random(name: str) -> bool:
    """Letters and digits alternating three times or more (3k9x_ab, a1b2c3), or case
    changing three times or more in six characters or more (acXwqX, as mkstemp and
    sem_open make), is random; python3, x86_64, sha256sums, README are not."""
    if not _WORD.match(name):
        return False
    return len(_SWITCH.findall(name)) >= 3 or len(_CASE.findall(name)) >= 3


class ActSource(Protocol):
    """Where acts come from: Capture.read_acts() decoded, or a test's list."""

    def __call__(self) -> Iterable: ...


def _word(w: str) -> str:
    if _HEXISH.match(w) or _random(w) or _TEMP_PREFIX.match(w):
        return "*"
    return _NUM.sub("*", w)


def _scratch_word(w: str) -> str:
    """In a scratch folder every name is made to be unique: a word of eight lower-case
    letters, digits and underscores (tempfile's and multiprocessing's suffix), of five or
    more with a digit, or of six or more in mixed case (mkstemp's XXXXXX, glibc's
    sem.wfwPGG) is a made name."""
    if _MADE.match(w) or (_WORD_CHARS.match(w) and (
            (len(w) >= 5 and _HAS_DIGIT.search(w)) or
            (len(w) >= 6 and w.lower() != w and w.upper() != w))):
        return "*"
    return _word(w)


def _part(name: str, scratch: bool = False) -> str:
    """One path component: each dot- and dash-separated part on its own (sem.acXw3kX:
    sem.*; sem.mp-k3h_9x2a: sem.mp-*)."""
    if _TEMP_PREFIX.match(name):
        return "*"
    word = _scratch_word if scratch else _word
    return ".".join("-".join(word(w) for w in d.split("-")) for d in name.split("."))


def pattern(path: bytes | str) -> str:
    """A path as the profile keeps it: directory kept, variable parts as `*`."""
    text = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
    if text.startswith("/proc/") or text.startswith("/dev/fd/"):
        head, _, rest = text.partition("/")[2].partition("/")
        rest = "/".join(_part(p) for p in rest.split("/"))
        return f"/{head}/{rest}"
    if _SEM_TEMP.match(text):
        return "/dev/shm/sem.*"
    scratch = text.startswith(SCRATCH)
    parts = text.split("/")
    return "/".join(
        "*" if _FANOUT.match(p) and i + 1 < len(parts) and
        _HEXISH.match(parts[i + 1].split(".")[0]) else (_part(p, scratch) if p else p)
        for i, p in enumerate(parts))


def peer_class(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "other"
    if ip.is_loopback:
        return "loopback"
    if ip.is_private or ip.is_link_local:
        return "private"
    return "public"


def _port(port: int) -> str:
    return "ephemeral" if port >= EPHEMERAL else str(port)


def features(act) -> list[str]:
    """What one act says of the program that did it (exec's parent/child pair excepted:
    `Watch` makes those, as they need the process table)."""
    k = act.kind
    if k in FILE_KINDS:
        path = act.path2 if k in ("rename", "link") and act.path2 else act.path
        return [f"{FILE_KINDS[k]} {pattern(path)}"]
    if k == "read":
        return [f"read {pattern(act.path)}"]
    if k in ("connect", "send"):
        if act.family == socket.AF_UNIX:
            return [f"peer unix:{pattern(act.path2 or act.path)}"]
        if act.family in (socket.AF_INET, socket.AF_INET6):
            return [f"peer {peer_class(act.address)}:{_port(act.port)}"]
        return []
    if k in ("bind", "listen", "accept"):
        if act.family in (socket.AF_INET, socket.AF_INET6) and act.port:
            return [f"listen {_port(act.port)}"]
        return []
    if k == "bpf":
        return [f"priv bpf {act.args[0] if act.args else 0}"]
    if k == "ptrace":
        return [f"priv ptrace {act.args[0] if act.args else 0}"]
    if k in PRIV_KINDS:
        return [f"priv {k}"]
    return []


@dataclass
class News:
    """A feature the program's profile did not hold."""
    program: ProgramId
    feature: str
    settled: bool        # the profile and this kind of feature had settled: evidence
    dangerous: str       # "" or why this is dangerous whatever the profile says
    process: tuple       # (tgid, start ns)
    lineage: list        # ancestors' keys, nearest first
    session: object      # the lineage root: the login session, else the oldest ancestor
    ns: int
    pid: int
    comm: str
    learnt: bool = False     # learnt already (news of an unsettled profile)
    cgroup_id: int = 0

    @property
    def kind(self) -> str:
        return kind_of(self.feature)


class Watch:
    """Acts in, news out. `learning`: every feature is learnt and nothing is news (the
    baseline); else features the profile holds are counted, news of an unsettled
    profile learnt quietly, and news of a settled one returned unlearnt: the caller
    learns it (`learn`) only when the incident it joined stayed low."""

    def __init__(self, profiles: Profiles, processes,
                 persistence: Iterable[str] = PERSISTENCE,
                 package_managers: Iterable[str] = PACKAGE_MANAGERS,
                 sensitive: tuple[str, ...] | None = None):
        self.profiles, self.processes = profiles, processes
        self.configure(persistence, package_managers)
        # the capture's sensitive prefixes: a read the kernel sent for its name's end
        # (BY_TAIL) counts only when its resolved path is under one
        self.sensitive = sensitive if sensitive is not None else default_sensitive()
        self.unresolved_reads = 0
        self.learning = True
        self.held_out = HeldOut()
        self.acts = 0
        self.unknown_process = 0
        self._units: dict[int, str] = {}
        self._online: dict[tuple, None] = {}    # processes that talked to a network peer
        self._fetched: dict[str, tuple[str, int]] = {}   # path: (writer's program, ns)

    def configure(self, persistence: Iterable[str], package_managers: Iterable[str]) -> None:
        """The persistence paths ("~/" expanded over the homes) and the package managers;
        at start and at a reload."""
        self.persistence = expand_homes(persistence)
        self.package_managers = frozenset(package_managers)

    def program_of(self, tgid: int, ns: int) -> tuple[ProgramId | None, object]:
        """(program, process) running `tgid` at kernel time `ns`."""
        p = self.processes.lookup(tgid, ns)
        img = p.image_at(ns) if p is not None else None
        if img is None or not named(img):
            return None, p
        return self._identity(p, img, ns), p

    def _identity(self, p, img, ns: int) -> ProgramId:
        """identity(), and for inline code (python3 -c, sh -c) the program that started
        it: `python3 -c` run by a web application, by a cron job and by an administrator
        are three programs, each settling on its own; host-wide they would be one that
        never settles, whose news stays low."""
        prog = identity(img, self._service(p.cgroup_id))
        if not inline(prog.label):
            return prog
        parent = self.processes.parent(p)
        pimg = parent.image_at(ns) if parent is not None else None
        if pimg is None or not named(pimg):
            return prog
        by = program_label(pimg.exe, pimg.args, bool(pimg.flags & EXE_MEMFD))
        return dataclasses.replace(prog, label=f"{prog.label} by {by}")

    def _service(self, cgroup_id: int) -> str:
        """The systemd service of a cgroup ("" outside one), remembered once its path is
        known (a cgroup made since the last scan is looked up again later)."""
        unit = self._units.get(cgroup_id)
        if unit is not None:
            return unit
        cgroups = getattr(self.processes, "cgroups", None)
        if not cgroup_id or cgroups is None:
            return ""
        group = cgroups.group(cgroup_id)
        unit = service_unit(group.unit)
        if group.path:
            if len(self._units) >= MAX_UNITS:
                self._units.clear()
            self._units[cgroup_id] = unit
        return unit

    def take(self, acts: Iterable) -> list[News]:
        out = []
        for act in acts:
            self.acts += 1
            prog, proc = self.program_of(act.tgid, act.ns)
            if prog is None:
                self.unknown_process += 1
                continue
            if act.kind == "read" and act.flags & BY_TAIL:
                act = self._resolved(act, proc)
                if act is None:
                    continue
            feats = features(act)
            self._follow(act, prog, proc)
            danger = self._danger(act, proc)
            if act.kind == "exec":
                parent = self.processes.parent(proc)
                pimg = parent.image_at(act.ns) if parent is not None else None
                if pimg is not None and named(pimg):
                    pprog = self._identity(parent, pimg, act.ns)
                    feats.append(f"parent {pprog.label}")
                    out += self._judge(pprog, f"child {prog.label}", parent, act, "")
            for f in feats:
                out += self._judge(prog, f, proc, act, danger)
            if danger and not feats:
                out += self._judge(prog, f"exec {danger}", proc, act, danger)
        return out

    def _follow(self, act, prog: ProgramId, proc) -> None:
        """Which processes talked to a network peer, and the files they wrote since."""
        if proc is None:
            return
        if act.kind in ("connect", "send", "accept") and \
                act.family in (socket.AF_INET, socket.AF_INET6):
            if len(self._online) >= MAX_FETCHED:
                self._online.pop(next(iter(self._online)))
            self._online[proc.key] = None
        elif FILE_KINDS.get(act.kind) == "write" and proc.key in self._online:
            path = act.path2 if act.kind in ("rename", "link") and act.path2 else act.path
            if len(self._fetched) >= MAX_FETCHED:
                self._fetched.pop(next(iter(self._fetched)))
            text = path.decode("utf-8", "surrogateescape")
            self._fetched.pop(text, None)
            self._fetched[text] = (prog.label, act.ns)

    def _danger(self, act, proc) -> str:
        if act.kind == "module":
            return "module load"
        if act.kind == "exec" and proc is not None:
            img = proc.image_at(act.ns)
            path = act.path.decode("utf-8", "replace")
            if (img is not None and img.flags & (EXE_MEMFD | EXE_DELETED)) or \
                    path.startswith(("/dev/fd/", "/proc/")):
                return "fileless exec"
            if img is not None and img.flags & STDIN_INET and \
                    INTERPRETERS.match(img.exe.rsplit("/", 1)[-1]):
                return "a shell or interpreter reading its input from a network connection"
            # the file exec'd: its path as given (a script's, when the image is its
            # interpreter's) or the image's
            got = self._fetched.get(act.path.decode("utf-8", "surrogateescape")) or \
                (self._fetched.get(img.exe) if img is not None else None)
            if got is not None and 0 <= act.ns - got[1] <= DOWNLOAD_SPAN_S * 1e9:
                return (f"exec of a file {got[0]} wrote {(act.ns - got[1]) / 1e9:.0f} s "
                        "before, after talking to a network peer")
        if act.kind == "ptrace" and act.args and act.args[0] in (PTRACE_ATTACH, PTRACE_SEIZE):
            target = self.processes.lookup(int(act.args[1]), 0) if len(act.args) > 1 else None
            if target is None or target.ppid != act.tgid:
                return "ptrace of a process not its child"
        return ""

    def _persists(self, feature: str, act, proc) -> str:
        """Why a write is dangerous as persistence ("" when it is not): under a persistence
        path, by neither a package manager nor anything it started. Only writes reach the
        lineage walk, and only when the program's profile did not hold the write."""
        if not feature.startswith("write ") or proc is None:
            return ""
        path = act.path2 if act.kind in ("rename", "link") and act.path2 else act.path
        text = path.decode("utf-8", "surrogateescape")
        if not text.startswith("/"):
            if act.flags & DIRFD or not (cwd := self._cwd(proc)):
                return ""
            text = f"{cwd.rstrip('/')}/{text}"
        text = "/" + os.path.normpath(text).lstrip("/")    # "//etc" is /etc to the kernel
        if not any(text.startswith(p) or text == p.rstrip("/") for p in self.persistence):
            return ""
        for q in [proc, *self.processes.lineage(proc)]:
            img = q.image_at(act.ns) if q is proc else (q.images[-1] if q.images else None)
            if img is not None and img.exe in self.package_managers and \
                    not img.flags & (EXE_FOREIGN_MNT | EXE_USERNS_MNT):
                return ""
        return f"a first write where the system runs or trusts what it finds ({text})"

    def _resolved(self, act, proc):
        """A read sent for its path's end, with the path it names (None when that is no
        sensitive file, or relative to a directory descriptor or to the cwd of a process
        gone by now: counted in `unresolved_reads`)."""
        relative = not act.path.startswith(b"/")
        if relative and (act.flags & DIRFD or proc is None):
            self.unresolved_reads += 1
            return None
        cwd = self._cwd(proc) if relative else ""
        if relative and not cwd:
            self.unresolved_reads += 1
            return None
        path = resolve_read(act.path, cwd, self.sensitive)
        return dataclasses.replace(act, path=path) if path is not None else None

    @staticmethod
    def _cwd(proc) -> str:
        """A live process's working directory now ("" once it is gone). Read at each
        relative write that is news (rare), never kept: a process that moved since would
        have its writes placed where it was."""
        try:
            cwd = os.readlink(f"/proc/{proc.tgid}/cwd")
        except OSError:
            return ""
        # the same process still, not a later one given its pid
        return cwd if abs(start_of(proc.tgid) - proc.start_ns) <= START_SLACK_NS else ""

    def _judge(self, prog: ProgramId, feature: str, proc, act, danger: str) -> list[News]:
        if self.learning:
            if self.held_out.since_ns is not None:
                self.held_out.judge(prog, feature, lambda: self.session(proc))
            self.profiles.learn(prog, feature)
            return []
        known = self.profiles.knows(prog, feature)
        if known and not danger:
            self.profiles.learn(prog, feature)
            return []
        if not danger and feature in PASSWORD_HASHES:
            danger = "a first read of the password hashes"
        elif not danger:
            danger = self._persists(feature, act, proc)
        # the ancestors only for news: known acts, the bulk, cost a lookup and a count
        lineage = self.processes.lineage(proc) if proc is not None else []
        session = session_of(proc, lineage)
        settled = self.profiles.settled(prog, feature)    # and this kind of feature
        quiet = not settled and not danger
        if quiet:       # counted, kept low
            self.profiles.learn(prog, feature)
            self.profiles.profile(prog).news_learnt += 1
        return [News(prog, feature, settled, danger, proc.key if proc is not None else (),
                     [q.key for q in lineage], session, act.ns, act.tgid,
                     act.comm.decode("utf-8", "replace"), quiet, act.cgroup_id)]

    def session(self, proc) -> object:
        return session_of(proc, self.processes.lineage(proc) if proc is not None else [])

    def learn(self, news: News) -> None:
        """News an operator allowed becomes part of the profile."""
        if news.learnt:
            return
        news.learnt = True
        if not self.profiles.knows(news.program, news.feature):
            self.profiles.profile(news.program).news_learnt += 1
        self.profiles.learn(news.program, news.feature)


def expand_homes(paths: Iterable[str]) -> tuple[str, ...]:
    """Persistence paths with "~/" entries made one per home (/root and the password
    database's, "/" left out), as probes/acts.py makes the sensitive reads."""
    out, homes = [], ["/root"]
    try:
        homes += [e.pw_dir.rstrip("/") for e in pwd.getpwall()]
    except OSError:
        pass
    homes = [h for h in dict.fromkeys(homes) if h.startswith("/") and h != ""]
    for p in paths:
        out += [f"{h}/{p[2:]}" for h in homes] if p.startswith("~/") else [p]
    return tuple(dict.fromkeys(out))


def named(img) -> bool:
    """The image's executable is known by its path (or is a memfd): a bare name, left when
    neither the kernel's walk nor /proc gave the path, names no file a profile could
    hold (`getent` would be news to a shell that ran /usr/bin/getent a thousand times)."""
    return img.exe.startswith(("/", "...", "memfd:")) or bool(img.flags & EXE_MEMFD)


def inline(label: str) -> bool:
    """The label of an interpreter running code from its command line (-c, -e)."""
    return label.endswith(INLINE)


def service_unit(unit: str) -> str:
    """A unit that names a workload: a .service, not a scope (a login session, a
    container's scope) and not a transient systemd-run service (run-u123.service), whose
    names are made per run."""
    if not unit.endswith(".service") or _TRANSIENT.match(unit):
        return ""
    return unit


def identity(img, unit: str = "") -> ProgramId:
    """The program of a process image: its file, its mount namespace when that is not the
    initial one, its label, and the service it runs in."""
    foreign = bool(img.flags & (EXE_FOREIGN_MNT | EXE_USERNS_MNT))
    label = program_label(img.exe, img.args, bool(img.flags & EXE_MEMFD))
    return ProgramId(img.dev, img.ino, img.mntns if foreign else 0, label, foreign, unit)


def session_of(proc, lineage: list) -> object:
    """The lineage root: the login session where there is one, else the oldest ancestor
    below init."""
    if proc is not None and 0 < proc.sessionid < 0xFFFFFFFF:
        return ("session", proc.sessionid)
    roots = [q for q in lineage if q.tgid > 1]
    return roots[-1].key if roots else (proc.key if proc is not None else ())
