"""cgroup ids to paths, and the container or systemd unit a path belongs to.

The kernel names a process's cgroup by id (the inode number of its cgroupfs directory,
bpf_get_current_cgroup_id); people know it by path (/system.slice/nginx.service) and by
container. Paths come from walking the cgroup v2 hierarchy, rescanned (at most once a
second) when an id is not known yet. Container ids and runtimes come from the path
conventions of the runtimes' systemd and cgroupfs drivers.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .printable import printable

ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
RESCAN_S = 1.0
MAX_GROUPS = 100000

# (runtime, pattern on one path component or the whole path); the id is group 1.
_CONTAINERS = (
    ("docker", re.compile(r"(?:^|/)docker-([0-9a-f]{64})\.scope$")),
    ("docker", re.compile(r"/docker/([0-9a-f]{64})$")),
    ("containerd", re.compile(r"(?:^|/)cri-containerd-([0-9a-f]{64})\.scope$")),
    ("cri-o", re.compile(r"(?:^|/)crio-([0-9a-f]{64})\.scope$")),
    ("podman", re.compile(r"(?:^|/)libpod-([0-9a-f]{64})\.scope(?:/container)?$")),
    ("containerd", re.compile(r"/kubepods[^/]*/(?:[^/]+/)*?(?:pod[^/]+/)([0-9a-f]{64})$")),
    ("lxc", re.compile(r"/lxc\.payload\.([^/]+)$")),
    ("systemd-nspawn", re.compile(r"/machine\.slice/machine-([^/]+)\.scope$")),
)
_UNIT = re.compile(r"([^/]+\.(?:service|scope))(?:/|$)")


@dataclass(frozen=True)
class Group:
    path: str                   # "/system.slice/nginx.service", "" when unknown
    unit: str = ""              # the innermost systemd unit (.service or .scope)
    container_id: str = ""
    container_runtime: str = ""


def describe(path: str) -> Group:
    """What a cgroup path says: its systemd unit and its container, if any."""
    container = runtime = ""
    for name, pattern in _CONTAINERS:
        if m := pattern.search(path):
            container, runtime = m.group(1), name
            break
    units = _UNIT.findall(path)
    return Group(path, units[-1] if units else "", container, runtime)


def mount_point() -> Path | None:
    """The cgroup v2 hierarchy (the unified one on a hybrid host)."""
    for root in ROOTS:
        if os.path.exists(os.path.join(root, "cgroup.procs")) and \
                os.path.exists(os.path.join(root, "cgroup.controllers")):
            return Path(root)
    return None


class CgroupPaths:
    """id -> Group, from the cgroup v2 hierarchy."""

    def __init__(self, root: Path | None = None):
        self.root = root if root is not None else mount_point()
        self.ids: dict[int, str] = {}
        self._scanned = 0.0

    def scan(self) -> None:
        self._scanned = time.monotonic()
        if self.root is None:
            return
        found: dict[int, str] = {}
        base = str(self.root)
        for dirpath, dirnames, _files in os.walk(base):
            try:
                found[os.stat(dirpath).st_ino] = dirpath[len(base):] or "/"
            except OSError:
                continue
            if len(found) >= MAX_GROUPS:
                dirnames.clear()
        self.ids = found

    def path(self, cgroup_id: int) -> str:
        p = self.ids.get(cgroup_id)
        if p is None and time.monotonic() - self._scanned >= RESCAN_S:
            self.scan()
            p = self.ids.get(cgroup_id)
        return p or ""

    def group(self, cgroup_id: int) -> Group:
        """What the id's path says, escaped (whoever makes a cgroup names it)."""
        return describe(printable(self.path(cgroup_id))) if cgroup_id else Group("")

    def matching(self, patterns: tuple[str, ...]) -> set[int]:
        """Ids of every cgroup whose path matches one of the glob `patterns` (a pattern
        also matches what lies below: "/system.slice/x.service" covers its children)."""
        if not patterns:
            return set()
        self.scan()
        return {i for i, p in self.ids.items()
                if any(path_match(p, pat, below=True) for pat in patterns)}


@functools.lru_cache(maxsize=256)
def _path_regex(pattern: str, below: bool) -> re.Pattern:
    """A glob over a path as a regex: `*` and `?` stay inside one component (they never
    match "/"), `**` spans components, `[...]` is one character other than "/"."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 2:]:
            j = pattern.index("]", i + 2)
            body = pattern[i + 1:j]
            neg = body[:1] == "!"
            body = re.escape(body[1:] if neg else body).replace("\\-", "-")
            out.append(f"(?!/)[{'^' if neg else ''}{body}]")
            i = j + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + ("(?:/.*)?" if below else ""), re.S)


def path_match(path: str, pattern: str, below: bool = False) -> bool:
    """Whether `path` matches the glob `pattern` component by component; `below`: or lies
    under a path that does ("/system.slice/x.service" covers its children)."""
    return _path_regex(pattern, below).fullmatch(path) is not None
