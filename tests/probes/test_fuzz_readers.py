"""Fuzzing the readers of files other people can write (hypothesis): a trace file damaged
anywhere (bytes flipped, cut, inserted; a header of any JSON), and dataset files of any
bytes. The property is always the same: a Trace (with what could be read, `damaged`
saying why reading stopped) or a TraceFileError naming the file; never another exception.

`make test` runs a bounded number of examples; SYSDREAM_FUZZ_EXAMPLES=N runs N each
(e.g. 20000, for minutes)."""

from __future__ import annotations

import json
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysdream.probes import datasets
from sysdream.probes.errors import TraceFileError
from sysdream.probes.layout import CONTEXT_DTYPE, record_dtype
from sysdream.probes.tracefile import (
    MAGIC,
    TraceDamageWarning,
    TraceWriter,
    host_header,
    read_trace,
)

EXAMPLES = int(os.environ.get("SYSDREAM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)


def good_trace() -> bytes:
    """A small valid trace: records of two threads, context records and counters."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.sdtrace"
        recs = np.zeros(6, record_dtype(64))
        for i, r in enumerate(recs):
            r["tid"], r["tgid"], r["seq"] = 10 + i % 2, 10, i // 2
            r["count"] = 5
            r["ids"][:5] = [0, 1, 2, 3, 257]
            r["first_ns"] = r["last_ns"] = 1000 + i
            r["comm"] = b"worker"
        ctx = np.zeros(2, CONTEXT_DTYPE)
        ctx["kind"], ctx["tgid"], ctx["ns"] = 1, 10, 999
        with TraceWriter(path, host_header(64)) as w:
            w.write_context(ctx)
            w.write_records(recs[:3])
            w.write_records(recs[3:])
            w.write_counters({"traced": 30, "emitted_syscalls": 30})
        return path.read_bytes()


GOOD = good_trace()


def read_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", TraceDamageWarning)
        path = Path(d) / "t.sdtrace"
        path.write_bytes(data)
        try:
            t = read_trace(path)
        except TraceFileError as exc:
            assert str(path) in str(exc)
            return None
        assert t.records.dtype.names and len(t.records) <= 6
        assert bool(t.damaged) == any(issubclass(w.category, TraceDamageWarning)
                                      for w in warned), "damage is said, and only then"
        return t


def test_the_good_trace_reads_whole():
    t = read_bytes(GOOD)
    assert t is not None and len(t.records) == 6 and len(t.context) == 2 and not t.damaged


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), min_size=1,
                max_size=8))
def test_flipped_bytes_give_a_trace_or_one_error(flips):
    data = bytearray(GOOD)
    for at, mask in flips:
        data[at] ^= mask
    read_bytes(bytes(data))


@FUZZ
@given(st.integers(0, len(GOOD)), st.binary(max_size=64))
def test_cut_or_grown_files_give_a_trace_or_one_error(cut, extra):
    read_bytes(GOOD[:cut] + extra)


@FUZZ
@given(JSON)
def test_any_json_header_gives_a_trace_or_one_error(header):
    body = json.dumps(header).encode()
    # magic, version, flags, header length, header, its crc32; then the good blocks
    version, flags, hlen = struct.unpack_from("<HHI", GOOD, len(MAGIC))
    rest = GOOD[len(MAGIC) + 8 + hlen + 4:]
    assert read_bytes(MAGIC + struct.pack("<HHI", version, flags, len(body)) + body
                      + struct.pack("<I", zlib.crc32(body)) + rest) is None or \
        isinstance(header, dict)


@FUZZ
@given(st.binary(max_size=512))
def test_dataset_files_of_any_bytes_give_sequences_or_one_error(data):
    with tempfile.TemporaryDirectory() as d:
        for name, reader in (("a.txt", datasets.read_adfa_file),
                             ("u.int", datasets.read_unm_file),
                             ("l.sc", datasets.read_lidds_sc)):
            path = Path(d) / name
            path.write_bytes(data)
            try:
                got = reader(path)
            except TraceFileError as exc:
                assert str(path) in str(exc)
                continue
            seqs = got if isinstance(got, list) else [got]
            assert all(isinstance(s, datasets.Sequence) for s in seqs)
