"""The syscall tables: generated from the kernel's uapi headers (probes/tables/generate.py),
checked against numbers every kernel fixes and against this host's own headers."""

import sys
from pathlib import Path

import numpy as np
import pytest

from sysdream.probes import syscalls

HOST_HEADERS = Path("/usr/include/x86_64-linux-gnu/asm")


@pytest.mark.parametrize("arch,name,nr", [
    ("x86_64", "read", 0), ("x86_64", "execve", 59), ("x86_64", "clone3", 435),
    ("x86_64", "openat2", 437), ("x86_64", "io_uring_setup", 425),
    ("x86_64", "uretprobe", 335), ("x86_64", "mseal", 462), ("x86_64", "file_setattr", 469),
    ("i386", "execve", 11), ("i386", "socketcall", 102), ("i386", "clone3", 435),
    ("aarch64", "execve", 221), ("aarch64", "openat", 56), ("aarch64", "clone3", 435),
    ("aarch64", "sync_file_range", 84), ("aarch64", "io_uring_enter", 426),
])
def test_known_numbers(arch, name, nr):
    assert syscalls.table(arch)[nr] == name
    assert syscalls.number(name, arch) == nr


def test_no_32_bit_only_calls_in_64_bit_tables():
    """The time64 calls (403-423) exist only for 32-bit ABIs: i386 has them, x86_64 and
    arm64 do not (an older generator gave arm64 asm-generic's 32-bit branch)."""
    for arch in ("x86_64", "aarch64"):
        assert not any(n.endswith("_time64") for n in syscalls.table(arch).values()), arch
    assert syscalls.table("i386")[422] == "futex_time64"
    assert syscalls.names(np.array([403]), "aarch64")[0] == "sys_403"


def test_unknown_numbers_keep_their_number():
    out = syscalls.names(np.array([1000, syscalls.COMPAT_BIT | 1000]), "x86_64").tolist()
    assert out == ["sys_1000", "compat_1000"]
    assert syscalls.names(np.array([syscalls.COMPAT_BIT | 5]), "aarch64")[0] == "compat_5"


@pytest.mark.skipif(not (HOST_HEADERS / "unistd_64.h").exists(),
                    reason="linux-libc-dev's x86 headers are not installed")
def test_agrees_with_this_hosts_headers():
    """Every syscall in the installed (older) uapi headers has the same number here."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "probes" / "tables"))
    try:
        from generate import parse_flat
    finally:
        sys.path.pop(0)
    for header, arch in (("unistd_64.h", "x86_64"), ("unistd_32.h", "i386")):
        host = parse_flat(HOST_HEADERS / header)
        ours = syscalls.table(arch)
        wrong = {nr: (name, ours.get(nr)) for nr, name in host.items() if ours.get(nr) != name}
        assert not wrong, f"{arch}: {wrong}"
        assert max(ours) >= max(host)
