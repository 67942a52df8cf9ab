"""The capture filters, declared once: for each, its [capture] key (also its CaptureSettings
field and its map in capture.bpf.c), its command-line flag, what one value is and how it is
checked, and how user space turns it into the map's keys.

CaptureSettings.validate() and Capture.configure() (probes/capture.py), the [capture] keys of
the configuration schema (daemon/config.py) and the filter flags of `record`, `top`, `run`
and `agent` (daemon/commands/cli.py) read this table. Adding a filter is a row here, a field of
CaptureSettings, a map and a test in capture.bpf.c's decide(), and its comment in
packaging/sysdream.toml: tests/daemon/test_config.py checks the field, the key, the flag
and the comment, and Capture.configure() fails on a missing map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COMM_LEN = 16           # TASK_COMM_LEN: names are 1 to 15 bytes and a NUL
FILTER_MAX = 1024       # entries per filter map (capture.bpf.c's FILTER_MAX)


def _id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _uid(v: Any) -> bool:
    # (uid_t)-1 is "no user" to the kernel: no process runs as it.
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 - 1


def _comm(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) < COMM_LEN


def _path(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("/") and "\0" not in v


@dataclass(frozen=True)
class Filter:
    key: str                        # [capture] key, CaptureSettings field and BPF map
    flag: str                       # command-line flag, given once per value
    type: type                      # one value: int or str
    accepts: Callable[[Any], bool]  # one value, as the configuration file gives it
    form: str                       # what the configuration expects, for its message
    help: str | None = None         # the flag's help
    metavar: str | None = None      # None: argparse's, from the flag
    map_key: str = "id"             # "id": the value itself; "comm": a name's bytes;
                                    # "exe": the (device, inode) of the file at a path
    switch: str = ""                # the struct filter_cfg byte set while the map has keys
    path: bool = False              # file paths: made absolute on the command line
    into: str = ""                  # resolved in user space into this filter's values,
                                    # not a map of its own (cgroup path patterns)
    doc: str = ""                   # what the [capture] key does (docs/configuration.md)

    @property
    def dest(self) -> str:
        """The argparse attribute the flag's values land in."""
        return self.flag.lstrip("-").replace("-", "_")


# Kinds combine with AND, values of one kind with OR (decide() in capture.bpf.c). The
# order is the [capture] section's, in the shipped file and in messages.
FILTERS: tuple[Filter, ...] = (
    Filter("include_pids", "--pid", int, _id, "a list of process ids",
           help="only this process id", switch="include_pid",
           doc="Only these processes (ids; OR). Kinds of filter combine with AND. Empty: every "
               "process; the daemon itself is always excluded."),
    Filter("exclude_pids", "--exclude-pid", int, _id, "a list of process ids",
           doc="Not these processes (ids). A process id is reused after its process exits: prefer "
               "exclude_exes or exclude_cgroup_paths for a service."),
    Filter("include_comms", "--comm", str, _comm, "a list of process names (1-15 characters)",
           help="only this process name (spoofable: any process can take a name)",
           map_key="comm", switch="include_comm",
           doc="Only processes with these names (comm). SPOOFABLE: any process can give itself any"
               " name (prctl PR_SET_NAME); the daemon warns at start when set."),
    Filter("exclude_comms", "--exclude-comm", str, _comm,
           "a list of process names (1-15 characters)",
           help="not this process name (spoofable: prefer --exclude-exe)", map_key="comm",
           doc="Not processes with these names (comm). SPOOFABLE: any process can leave the trace "
               "by taking an excluded name; prefer exclude_exes, which the kernel vouches for."),
    Filter("include_cgroups", "--cgroup", int, _id, "a list of cgroup ids",
           help="only this cgroup id (the inode number of its cgroupfs directory)",
           switch="include_cgroup",
           doc="Only processes in these cgroups (cgroup v2 ids: the inode number of the cgroupfs "
               "directory, `stat -c %i`). Its manager (systemd, a container runtime) places a "
               "process there; moving out takes write access to the cgroup tree."),
    Filter("exclude_cgroups", "--exclude-cgroup", int, _id, "a list of cgroup ids",
           doc="Not processes in these cgroups (cgroup v2 ids). Ids change when a unit restarts: "
               "prefer exclude_cgroup_paths."),
    Filter("exclude_exes", "--exclude-exe", str, _path, "a list of absolute executable paths",
           help="not processes running this executable (by device and inode)",
           metavar="PATH", map_key="exe", switch="exclude_exe", path=True),
    Filter("exclude_uids", "--exclude-uid", int, _uid, "a list of user ids",
           help="not processes of this user id", metavar="UID"),
    Filter("exclude_cgroup_paths", "--exclude-cgroup-path", str, _path,
           'a list of cgroup path patterns, e.g. "/system.slice/backup.service" or '
           '"/system.slice/docker-*.scope" (`*` and `?` stay within one path component, '
           '`**` spans several; a match covers the cgroups below)',
           help="not processes in cgroups matching this path pattern "
                "(e.g. '/system.slice/docker-*.scope')",
           metavar="PATTERN", into="exclude_cgroups"),
)

# The filters the kernel reads, each from the map of its name.
KERNEL_FILTERS: tuple[Filter, ...] = tuple(f for f in FILTERS if not f.into)
