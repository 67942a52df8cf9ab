"""Field offsets of the running kernel's structures, read from its BTF (/sys/kernel/btf/vmlinux).

The capture program is compiled by bcc against whatever headers the host has, which need
not be the running kernel's (the reference machine builds against Debian's 6.1 headers on a
6.18 kernel): a `task->real_parent` compiled from those headers would read the wrong bytes.
The kernel describes its own layout in BTF, so the few offsets the context records need are
taken from there at load time and handed to the program as -D constants (what libbpf's CO-RE
relocations do, done once in user space). A field the kernel does not have (loginuid without
CONFIG_AUDIT) comes out as -1 and the program leaves it unknown.

Only the parts of the format needed to walk struct members are decoded (linux
Documentation/bpf/btf.rst): the type section is a sequence of `struct btf_type` records,
each followed by kind-specific data whose size depends on the kind and vlen.
"""

from __future__ import annotations

import struct
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, \
    _FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(1, 20)
_QUALIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
_TAIL = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
_PER_MEMBER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}

# (macro, struct, member path): the offsets capture.bpf.c reads. A path descends through
# named members (anonymous structs and unions on the way are found by the search).
FIELDS = (
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_GROUP_LEADER", "task_struct", "group_leader"),
    ("OFF_TASK_START_TIME", "task_struct", "start_time"),
    ("OFF_TASK_CRED", "task_struct", "cred"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_LOGINUID", "task_struct", "loginuid"),
    ("OFF_TASK_SESSIONID", "task_struct", "sessionid"),
    ("OFF_CRED_UID", "cred", "uid"),
    ("OFF_CRED_GID", "cred", "gid"),
    ("OFF_CRED_EUID", "cred", "euid"),
    ("OFF_CRED_EGID", "cred", "egid"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_MM_EXE_FILE", "mm_struct", "exe_file"),
    ("OFF_FILE_PATH_MNT", "file", "f_path.mnt"),
    ("OFF_FILE_PATH_DENTRY", "file", "f_path.dentry"),
    ("OFF_FILE_INODE", "file", "f_inode"),
    ("OFF_DENTRY_NAME", "dentry", "d_name.name"),
    ("OFF_DENTRY_PARENT", "dentry", "d_parent"),
    ("OFF_VFSMOUNT_ROOT", "vfsmount", "mnt_root"),
    ("OFF_MOUNT_MNT", "mount", "mnt"),
    ("OFF_MOUNT_PARENT", "mount", "mnt_parent"),
    ("OFF_MOUNT_MOUNTPOINT", "mount", "mnt_mountpoint"),
    ("OFF_INODE_INO", "inode", "i_ino"),
    ("OFF_INODE_NLINK", "inode", "__i_nlink"),
    ("OFF_INODE_SB", "inode", "i_sb"),
    ("OFF_SB_DEV", "super_block", "s_dev"),
    ("OFF_SB_MAGIC", "super_block", "s_magic"),
    ("OFF_SB_FLAGS", "super_block", "s_flags"),
    ("OFF_VFSMOUNT_FLAGS", "vfsmount", "mnt_flags"),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename"),
    # program identity: the task's mount namespace, the executable's mount's namespace and
    # the user namespace owning that (a mount made inside `unshare -Urm`)
    ("OFF_TASK_NSPROXY", "task_struct", "nsproxy"),
    ("OFF_NSPROXY_MNT_NS", "nsproxy", "mnt_ns"),
    ("OFF_MNT_NS_INUM", "mnt_namespace", "ns.inum"),
    ("OFF_MNT_NS_USER_NS", "mnt_namespace", "user_ns"),
    ("OFF_USER_NS_INUM", "user_namespace", "ns.inum"),
    ("OFF_MOUNT_MNT_NS", "mount", "mnt_ns"),
    # acts: the socket behind a file descriptor (listen, accept)
    ("OFF_TASK_FILES", "task_struct", "files"),
    ("OFF_FILES_FDT", "files_struct", "fdt"),
    ("OFF_FDT_MAX", "fdtable", "max_fds"),
    ("OFF_FDT_FD", "fdtable", "fd"),
    ("OFF_FILE_PRIVATE", "file", "private_data"),
    ("OFF_INODE_MODE", "inode", "i_mode"),
    ("OFF_SOCKET_SK", "socket", "sk"),
    ("OFF_SK_FAMILY", "sock_common", "skc_family"),
    ("OFF_SK_NUM", "sock_common", "skc_num"),
    ("OFF_SK_RCV_SADDR", "sock_common", "skc_rcv_saddr"),
    ("OFF_SK_V6_RCV_SADDR", "sock_common", "skc_v6_rcv_saddr"),
)
# Without these the context records cannot be made at all (the rest are optional).
REQUIRED = ("OFF_TASK_PID", "OFF_TASK_TGID", "OFF_TASK_REAL_PARENT", "OFF_TASK_GROUP_LEADER",
            "OFF_TASK_START_TIME")


class BtfError(Exception):
    """The kernel's BTF is missing or not readable as BTF."""


class _Types:
    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BtfError("BTF shorter than its header")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data)
        if magic != _MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        base = hdr_len
        self.strings = data[base + str_off:base + str_off + str_len]
        self.kinds: list[int] = [0]
        self.names: list[int] = [0]
        self.refs: list[int] = [0]          # size_or_type
        self.members: list[int] = [0]       # offset of the member array, or -1
        self.vlens: list[int] = [0]
        self.kflags: list[int] = [0]
        self.by_name: dict[tuple[int, int], int] = {}
        self.data = data
        pos, end = base + type_off, base + type_off + type_len
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, ref = unpack("<III", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += 12
            tid = len(self.kinds)
            self.kinds.append(kind)
            self.names.append(name_off)
            self.refs.append(ref)
            self.vlens.append(vlen)
            self.kflags.append(info >> 31)
            self.members.append(pos if kind in (_STRUCT, _UNION) else -1)
            if kind in (_STRUCT, _UNION) and name_off:
                self.by_name.setdefault((kind, name_off), tid)
            pos += _TAIL.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
        self._name_index: dict[str, int] | None = None

    def name(self, off: int) -> str:
        end = self.strings.index(b"\0", off)
        return self.strings[off:end].decode()

    def struct_id(self, name: str) -> int | None:
        if self._name_index is None:
            self._name_index = {}
            for (kind, off), tid in self.by_name.items():
                if kind == _STRUCT:
                    self._name_index.setdefault(self.name(off), tid)
        return self._name_index.get(name)

    def resolve(self, tid: int) -> int:
        while self.kinds[tid] in _QUALIFIERS:
            tid = self.refs[tid]
        return tid

    def member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of member `name` of struct/union `tid`, looking through
        anonymous members."""
        tid = self.resolve(tid)
        if self.kinds[tid] not in (_STRUCT, _UNION):
            return None
        pos = self.members[tid]
        for i in range(self.vlens[tid]):
            name_off, mtype, moff = struct.unpack_from("<III", self.data, pos + 12 * i)
            bits = moff & 0xFFFFFF if self.kflags[tid] else moff
            if name_off and self.name(name_off) == name:
                return bits // 8, mtype
            if not name_off:
                inner = self.member(mtype, name)
                if inner is not None:
                    return bits // 8 + inner[0], inner[1]
        return None


def offsets_from(data: bytes) -> dict[str, int]:
    """{macro: byte offset, or -1 where the kernel lacks the field} for FIELDS."""
    types = _Types(data)
    out: dict[str, int] = {}
    for macro, struct_name, path in FIELDS:
        tid = types.struct_id(struct_name)
        off = 0
        for part in path.split("."):
            found = types.member(tid, part) if tid is not None else None
            if found is None:
                off = -1
                break
            off += found[0]
            tid = found[1]
        out[macro] = off
    return out


@lru_cache(maxsize=1)
def kernel_offsets(path: str = VMLINUX) -> dict[str, int]:
    """The running kernel's offsets; BtfError when its BTF is absent or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BtfError(f"{path}: {exc.strerror or exc}") from None
    try:
        return offsets_from(data)
    except (struct.error, ValueError, IndexError) as exc:
        raise BtfError(f"{path}: not readable as BTF ({exc})") from None
