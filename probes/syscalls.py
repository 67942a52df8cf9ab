"""Syscall numbers to names, by architecture. Names are the portable tokens.

Tables come from the kernel's unistd headers (probes/tables/generate.py). A number
the table lacks becomes "sys_<n>", so nothing is silently merged or dropped.

A 32-bit thread on a 64-bit kernel makes syscalls by the compat table's numbers (i386
on x86_64). Capture marks them with COMPAT_BIT, and names() reads a marked number in
the compat table: the same call gets the same name either way (read is read), and what
only 32-bit code has (socketcall, mmap2, ...) keeps its own name. A compat number the
compat table lacks, or any on aarch64 (no arm table here), becomes "compat_<n>".
"""

from __future__ import annotations

import platform
from functools import lru_cache

import numpy as np

from .tables.syscall_names import TABLES

COMPAT_BIT = 0x8000                       # above every syscall number (< 1024)
COMPAT_ARCH = {"x86_64": "i386"}          # the compat table of each 64-bit arch

ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "i386": "i386", "i686": "i386",
                "x86": "i386", "aarch64": "aarch64", "arm64": "aarch64"}


def native_arch() -> str:
    return normalise_arch(platform.machine())


def normalise_arch(arch: str) -> str:
    try:
        return ARCH_ALIASES[arch]
    except KeyError:
        raise ValueError(f"no syscall table for architecture {arch!r}; "
                         f"known: {', '.join(sorted(TABLES))}") from None


def table(arch: str) -> dict[int, str]:
    return TABLES[normalise_arch(arch)]


@lru_cache(maxsize=8)
def _lookup(arch: str) -> np.ndarray:
    tab = table(arch)
    names = np.array([f"sys_{n}" for n in range(65536)], dtype=object)
    for nr, name in tab.items():
        names[nr] = name
    if arch != "i386":
        names[COMPAT_BIT:] = [f"compat_{n}" for n in range(65536 - COMPAT_BIT)]
    if arch in COMPAT_ARCH:
        for nr, name in table(COMPAT_ARCH[arch]).items():
            names[COMPAT_BIT | nr] = name
    return names


def names(ids: np.ndarray, arch: str) -> np.ndarray:
    """Vectorised: an array of syscall numbers to an object array of names."""
    return _lookup(normalise_arch(arch))[np.asarray(ids, dtype=np.int64) & 0xFFFF]


def number(name: str, arch: str) -> int:
    for nr, n in table(arch).items():
        if n == name:
            return nr
    raise KeyError(f"no syscall {name!r} on {arch}")


@lru_cache(maxsize=8)
def _numbers(arch: str) -> dict[str, int]:
    return {name: nr for nr, name in table(arch).items()}


def known_numbers(names, arch: str) -> np.ndarray:
    """The numbers of those of `names` that `arch` has (others are left out)."""
    tab = _numbers(normalise_arch(arch))
    return np.array([tab[n] for n in names if n in tab], dtype=np.int32)


def number_array(names: list[str], arch: str) -> np.ndarray:
    """Names to syscall numbers (uint16); a name the table lacks is a KeyError."""
    tab = _numbers(normalise_arch(arch))
    try:
        return np.array([tab[n] for n in names], dtype=np.uint16)
    except KeyError as exc:
        raise KeyError(f"no syscall {exc.args[0]!r} on {arch}") from None
