"""Trace files: what `sysdream record` writes and `train`, `eval` and replay read.

Layout (little-endian):

    header   b"SDTRACE\\0"  u16 version  u16 0  u32 n  then n bytes of JSON
             (host, kernel release, arch, syscall table, chunk width, capture settings),
             then (version 2 on) u32 crc32 of those n bytes
    blocks   b"SDBK"  u32 kind  u32 length  u32 crc32(payload)  then the payload
             kind 1: records, raw `record_dtype(chunk)` rows (versions 1 and 2)
             kind 2: kernel counters as JSON (written at every flush and at close)
             kind 3: process context records, `CONTEXT_DTYPE` rows compressed with zlib
                     (mostly padding: about a tenth of their 1,464 bytes); the header's
                     `context_record_size` says their size, and a reader that finds
                     another size skips them with a warning and keeps the rest
             kind 4: records, `record_dtype(chunk)` rows compressed with zlib at level
                     1 (version 3 on; a chunk's unused slots and the repeats of a
                     program's syscalls make them several times smaller: what a
                     baseline costs on disk and on a fleet agent's link)

Each block goes out in one write and is flushed, so a crash or SIGKILL loses at most
the block being written. A reader that meets a damaged block (bad magic, length or
checksum) looks for the next block magic and goes on from there, warning once with what
it skipped; a truncated last block ends the file. A damaged header (checksum mismatch)
makes the file unusable: its syscall table names every syscall. Version 1 files (no
header checksum) and version 2 files (raw records) still read.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import stat
import struct
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import syscalls
from .errors import TraceFileError
from .layout import CONTEXT_DTYPE, check_chunk, record_dtype

MAGIC = b"SDTRACE\0"
VERSION = 3
_HEADER_CRC = struct.Struct("<I")   # version 2 on: after the header's JSON
BLOCK_MAGIC = b"SDBK"
KIND_RECORDS = 1
KIND_COUNTERS = 2
KIND_CONTEXT = 3
KIND_RECORDS_Z = 4
RECORDS_LEVEL = 1       # zlib level of records blocks: fast enough for a baseline at 1M/s
_HEAD = struct.Struct("<8sHHI")
_BLOCK = struct.Struct("<4sIII")
MAX_HEADER = 16 << 20
MAX_BLOCK = 1 << 30
MAX_FILE = 8 << 30       # a trace file, read whole
MAX_RECORDS = 16 << 30   # its records once inflated (a small file of blocks that inflate
#                          far is refused, not followed into the machine's memory)


class TraceDamageWarning(UserWarning):
    """A trace file was cut short or damaged; records before the damage were kept."""


def host_header(chunk: int, settings: dict | None = None) -> dict:
    arch = syscalls.native_arch()
    return {
        "host": socket.gethostname(),
        "kernel_release": platform.release(),
        "arch": arch,
        "syscall_table": {str(k): v for k, v in syscalls.table(arch).items()},
        "chunk": chunk,
        "context_record_size": CONTEXT_DTYPE.itemsize,
        "capture_settings": settings or {},
        "created_unix": time.time(),
        "writer": "sysdream",
    }


def _create(path: Path) -> int:
    """A new file at `path`, for writing. Never through a symbolic link and never into
    anything but a regular file (the daemon runs privileged: `-o /etc/shadow` via a link
    must not truncate it); an existing regular file is replaced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            return os.open(path, flags, 0o640)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise TraceFileError(f"{path}: exists and is not a regular file (a link or "
                                     "a device); refusing to write there, name another "
                                     "output") from None
            os.unlink(path)
        except OSError as exc:
            raise TraceFileError(f"{path}: cannot create: {exc.strerror}; name a writable "
                                 "output file") from None
    raise TraceFileError(f"{path}: replaced while being created; try again")


class TraceWriter:
    """Append records to a new trace file, one block per `write_records` call.

    A write that fails (the disk full) raises its OSError after cutting the file back to
    its last whole block: what was written before stays readable, with no torn block at
    the end; `syscalls` and `records` count what the file holds. The writer takes no more
    blocks after that."""

    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.chunk = check_chunk(int(header["chunk"]))
        self.dtype = record_dtype(self.chunk)
        body = json.dumps(header, sort_keys=True).encode()
        self._fd = -1
        self._fd = _create(self.path)
        self.size = 0            # bytes of the header and whole blocks on file
        self.failed: OSError | None = None
        self._append(_HEAD.pack(MAGIC, VERSION, 0, len(body)) + body
                     + _HEADER_CRC.pack(zlib.crc32(body)))
        self.records = 0
        self.syscalls = 0

    def _append(self, data: bytes) -> None:
        if self.failed is not None:
            raise self.failed
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self.failed = exc
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(data)

    def _block(self, kind: int, payload: bytes) -> None:
        self._append(_BLOCK.pack(BLOCK_MAGIC, kind, len(payload), zlib.crc32(payload))
                     + payload)

    def write_records(self, records: np.ndarray) -> None:
        if records.size == 0:
            return
        if records.dtype != self.dtype:
            raise ValueError(f"records have dtype {records.dtype}, this trace holds {self.dtype}")
        self._block(KIND_RECORDS_Z, zlib.compress(np.ascontiguousarray(records).tobytes(),
                                                  RECORDS_LEVEL))
        self.records += records.size
        self.syscalls += int(records["count"].sum())

    def write_context(self, records: np.ndarray) -> None:
        """Process context records (who each process was: executable, argv, parent)."""
        if records.size:
            raw = np.ascontiguousarray(records, CONTEXT_DTYPE).tobytes()
            self._block(KIND_CONTEXT, zlib.compress(raw, 1))

    def write_counters(self, counters: dict) -> None:
        self._block(KIND_COUNTERS, json.dumps(counters, sort_keys=True).encode())

    def close(self) -> None:
        """Flush to disk and close; after a failed write only close (the error was
        raised then)."""
        if self.failed is not None:
            self.abandon()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Close without flushing to disk (after a write failed)."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Trace:
    header: dict
    records: np.ndarray
    counters: dict = field(default_factory=dict)
    damaged: str | None = None   # why reading stopped early, if it did
    context: np.ndarray = field(default_factory=lambda: np.empty(0, CONTEXT_DTYPE))

    @property
    def arch(self) -> str:
        return self.header["arch"]

    @functools.cached_property
    def _names(self) -> np.ndarray:
        # once per trace: `train` names each thread's stream in turn, and a table of
        # 65,536 names made at each call was most of its time on a host's recording
        lookup = np.array([f"sys_{n}" for n in range(65536)], dtype=object)
        for nr, name in self.header.get("syscall_table", {}).items():
            lookup[int(nr) & 0xFFFF] = name
        return lookup

    def syscall_names(self, ids: np.ndarray) -> np.ndarray:
        """Names by the table the trace carries, so a trace reads alike on any host."""
        return self._names[np.asarray(ids, dtype=np.int64) & 0xFFFF]


def read_trace(path: str | os.PathLike) -> Trace:
    """Read a whole trace. Damage after a valid header warns and keeps what came before."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise TraceFileError(f"{path}: {size >> 20} MiB, over the {MAX_FILE >> 30} GiB a "
                                 "trace may hold in memory; record shorter traces")
        data = path.read_bytes()
    except OSError as exc:
        raise TraceFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(data) < _HEAD.size or data[:8] != MAGIC:
        raise TraceFileError(f"{path}: not a sysdream trace file (bad magic); "
                             "record one with `sysdream record`")
    _, version, _, hlen = _HEAD.unpack_from(data)
    if version > VERSION:
        raise TraceFileError(f"{path}: trace format {version} is newer than this sysdream "
                             f"reads ({VERSION}); upgrade sysdream")
    crc_size = _HEADER_CRC.size if version >= 2 else 0
    if hlen > MAX_HEADER or _HEAD.size + hlen + crc_size > len(data):
        raise TraceFileError(f"{path}: header truncated or damaged; the file cannot be used")
    body = data[_HEAD.size:_HEAD.size + hlen]
    if crc_size and _HEADER_CRC.unpack_from(data, _HEAD.size + hlen)[0] != zlib.crc32(body):
        raise TraceFileError(f"{path}: header checksum mismatch (damaged); the file cannot "
                             "be used")
    try:
        header = json.loads(body)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
        chunk = check_chunk(int(header["chunk"]))
        syscalls.normalise_arch(header["arch"])
        _check_table(header.get("syscall_table", {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TraceFileError(f"{path}: header is not valid ({str(exc)[:200]}); the file "
                             "cannot be used") from None
    except RecursionError:
        raise TraceFileError(f"{path}: header is JSON nested too deep to be a sysdream "
                             "trace header; the file cannot be used") from None
    dtype = record_dtype(chunk)
    blocks: list[np.ndarray] = []
    contexts: list[np.ndarray] = []
    context_size = header.get("context_record_size")
    counters: dict = {}
    damaged = None
    skipped = inflated = 0
    pos = _HEAD.size + hlen + crc_size
    while pos < len(data):
        why = None
        if pos + _BLOCK.size > len(data):
            why = f"truncated block header at byte {pos}"
        else:
            magic, kind, length, crc = _BLOCK.unpack_from(data, pos)
            start = pos + _BLOCK.size
            if magic != BLOCK_MAGIC or length > MAX_BLOCK:
                why = f"damaged block header at byte {pos}"
            elif start + length > len(data):
                why = f"truncated block at byte {pos} ({len(data) - start} of {length} bytes)"
            elif zlib.crc32(data[start:start + length]) != crc:
                why = f"checksum mismatch in block at byte {pos}"
            elif kind == KIND_RECORDS and length % dtype.itemsize:
                why = f"records block at byte {pos} is not a whole number of records"
            elif kind == KIND_RECORDS_Z:
                raw = _inflate(data[start:start + length], MAX_BLOCK)
                if raw is None or len(raw) % dtype.itemsize:
                    why = f"records block at byte {pos} does not inflate to whole records"
                elif (inflated := inflated + len(raw)) > MAX_RECORDS:
                    raise TraceFileError(f"{path}: records inflate to over "
                                         f"{MAX_RECORDS >> 30} GiB; record shorter traces")
        if why is not None:
            # resynchronise on the next block magic; none: the rest is lost
            damaged = damaged or why
            nxt = data.find(BLOCK_MAGIC, pos + 1)
            skipped += (nxt if nxt >= 0 else len(data)) - pos
            if nxt < 0:
                break
            pos = nxt
            continue
        payload = data[start:start + length]
        if kind == KIND_RECORDS:
            blocks.append(np.frombuffer(payload, dtype=dtype))
        elif kind == KIND_RECORDS_Z:
            blocks.append(np.frombuffer(raw, dtype=dtype))
        elif kind == KIND_CONTEXT and context_size is not None:
            raw = _inflate(payload, MAX_BLOCK)
            if context_size != CONTEXT_DTYPE.itemsize or raw is None \
                    or len(raw) % CONTEXT_DTYPE.itemsize:
                warnings.warn(f"{path}: process context at byte {pos} skipped (another "
                              f"layout, or not readable); the syscalls are kept",
                              TraceDamageWarning, stacklevel=2)
                context_size = None     # warn once, skip the rest of it
            else:
                contexts.append(np.frombuffer(raw, dtype=CONTEXT_DTYPE))
        elif kind == KIND_COUNTERS:
            try:
                got = json.loads(payload)
            except (ValueError, RecursionError):
                got = None
            if not isinstance(got, dict) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in got.values()):
                damaged = damaged or f"counters block at byte {pos} is not a JSON object " \
                    "of counts"
                skipped += _BLOCK.size + length
            else:
                counters = got
        pos = start + length
    if damaged:
        damaged += f" ({skipped} bytes skipped in all)"
        warnings.warn(f"{path}: {damaged}; kept every whole block around it",
                      TraceDamageWarning, stacklevel=2)
    records = np.concatenate(blocks) if blocks else np.empty(0, dtype)
    over = records["count"] > chunk
    if over.any():   # no kernel writes these: a record claiming more than it can hold
        warnings.warn(f"{path}: {int(over.sum())} records claim more syscalls than a chunk "
                      f"of {chunk} holds; dropped, the rest kept", TraceDamageWarning,
                      stacklevel=2)
        records = records[~over]
    context = np.concatenate(contexts) if contexts else np.empty(0, CONTEXT_DTYPE)
    return Trace(header, records, counters, damaged, context)


def _check_table(table) -> None:
    """A header's syscall table: an object of numbers (as text) to names."""
    if not isinstance(table, dict):
        raise ValueError("syscall_table is not an object of numbers to names")
    for nr, name in table.items():
        if not (nr.isdigit() and int(nr) < 1 << 32) or not isinstance(name, str):
            raise ValueError(f"syscall_table entry {str(nr)[:20]!r} is not a number and a "
                             "name")


def _inflate(payload: bytes, limit: int) -> bytes | None:
    """zlib-decompressed payload, or None when it is not zlib or would exceed `limit`."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, limit)
    except zlib.error:
        return None
    return None if d.unconsumed_tail or not d.eof else out


class TraceReplay:
    """A recorded trace behind the live capture's reader interface (wait/read/counters)."""

    def __init__(self, path: str | os.PathLike, batch: int = 4096):
        self.trace = read_trace(path)
        self.dtype = self.trace.records.dtype
        self.batch = batch
        self._pos = 0
        self._context_read = False

    def wait(self, timeout: float = 0.0) -> None:
        """Replay never waits: records are there already."""

    def read(self, limit: int | None = None) -> np.ndarray:
        n = self.batch if limit is None else min(limit, self.batch)
        out = self.trace.records[self._pos:self._pos + n]
        self._pos += out.size
        return out

    def read_context(self) -> np.ndarray:
        """The trace's process context records (all of them, once)."""
        if self._context_read:
            return np.empty(0, CONTEXT_DTYPE)
        self._context_read = True
        return self.trace.context

    @property
    def exhausted(self) -> bool:
        return self._pos >= self.trace.records.size

    def counters(self) -> dict:
        return dict(self.trace.counters)

    def close(self) -> None:
        self._pos = self.trace.records.size
