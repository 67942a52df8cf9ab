"""Trace files: round trip, append safety, and every kind of bad file."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from speed import scaled

from sysdream.probes.errors import TraceFileError
from sysdream.probes.layout import record_dtype
from sysdream.probes.tracefile import (
    TraceDamageWarning,
    TraceReplay,
    TraceWriter,
    host_header,
    read_trace,
)

SYSDREAM = str(Path(sys.executable).parent / "sysdream")


def make_records(n: int, chunk: int = 64, tid: int = 42) -> np.ndarray:
    recs = np.zeros(n, record_dtype(chunk))
    recs["tid"] = recs["tgid"] = tid
    recs["seq"] = np.arange(n)
    recs["count"] = chunk
    recs["ids"] = np.arange(n * chunk).reshape(n, chunk) % 300
    recs["comm"] = b"worker"
    return recs


def write(path: Path, blocks: list[np.ndarray], chunk: int = 64) -> None:
    with TraceWriter(path, host_header(chunk)) as w:
        for b in blocks:
            w.write_records(b)
            w.write_counters({"traced": int(b["count"].sum())})


def test_round_trip_keeps_records_header_and_counters(tmp_path):
    path = tmp_path / "t.sdtrace"
    blocks = [make_records(10), make_records(5)]
    write(path, blocks)
    trace = read_trace(path)
    assert trace.damaged is None
    assert np.array_equal(trace.records, np.concatenate(blocks))
    assert trace.header["chunk"] == 64 and trace.header["kernel_release"] == os.uname().release
    assert trace.counters == {"traced": 5 * 64}
    assert trace.syscall_names(np.array([59]))[0] in ("execve", "sys_59")


def test_truncated_file_reads_up_to_the_damage_with_a_warning(tmp_path):
    path = tmp_path / "t.sdtrace"
    write(path, [make_records(10), make_records(7)])
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # cut into the last (counters) block
    with pytest.warns(TraceDamageWarning, match="truncated"):
        trace = read_trace(path)
    assert trace.records.size == 17
    path.write_bytes(data[:-(31 + 500)])  # cut into the second records block
    with pytest.warns(TraceDamageWarning):
        trace = read_trace(path)
    assert trace.records.size == 10


def test_corrupted_block_is_caught_by_its_checksum(tmp_path):
    path = tmp_path / "t.sdtrace"
    write(path, [make_records(3), make_records(3)])
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the final counters block
    path.write_bytes(bytes(data))
    with pytest.warns(TraceDamageWarning, match="checksum"):
        trace = read_trace(path)
    assert trace.records.size == 6 and trace.counters == {"traced": 3 * 64}
    data[-5] ^= 0xFF
    first_payload = data.find(b"SDBK") + 16
    data[first_payload + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    # the damaged block is skipped, the reader finds the next block magic and goes on
    with pytest.warns(TraceDamageWarning, match=r"checksum.*bytes skipped"):
        trace = read_trace(path)
    assert trace.records.size == 3 and trace.counters == {"traced": 3 * 64}
    assert "checksum mismatch" in trace.damaged
    # garbage between blocks (a torn write) is skipped the same way
    second = data.find(b"SDBK", first_payload)
    data[first_payload + 30] ^= 0xFF
    torn = bytes(data[:second]) + b"\x00junk\xff" * 7 + bytes(data[second:])
    path.write_bytes(torn)
    with pytest.warns(TraceDamageWarning, match="damaged block header"):
        assert read_trace(path).records.size == 6


def as_version_1(d: bytes, body: bytes | None = None) -> bytes:
    """The same trace in format 1 (no header checksum), its header JSON replaced by
    `body` if given: what older sysdreams wrote, still read."""
    hlen = struct.unpack_from("<I", d, 12)[0]
    old = d[16:16 + hlen]
    body = old if body is None else body
    return d[:8] + struct.pack("<HHI", 1, 0, len(body)) + body + d[16 + hlen + 4:]


def test_a_format_1_trace_still_reads(tmp_path):
    path = tmp_path / "t.sdtrace"
    write(path, [make_records(2)])
    path.write_bytes(as_version_1(path.read_bytes()))
    assert read_trace(path).records.size == 2


def test_records_are_stored_compressed_and_a_format_2_trace_of_raw_records_reads(tmp_path):
    import zlib

    from sysdream.probes.tracefile import KIND_RECORDS, KIND_RECORDS_Z
    recs = make_records(400)
    recs["ids"] = np.tile([0, 1, 3, 0, 1, 3, 257, 232] * 8, (400, 1))  # a loop's syscalls
    path = tmp_path / "t.sdtrace"
    write(path, [recs])
    data = path.read_bytes()
    assert struct.unpack_from("<H", data, 8)[0] == 3
    assert struct.unpack_from("<I", data, data.index(b"SDBK") + 4)[0] == KIND_RECORDS_Z
    assert len(data) < recs.nbytes / 5
    assert np.array_equal(read_trace(path).records, recs)
    # what sysdream wrote before: format 2, the same records raw
    hlen = struct.unpack_from("<I", data, 12)[0]
    raw = recs.tobytes()
    old = (data[:8] + struct.pack("<HHI", 2, 0, hlen) + data[16:16 + hlen + 4]
           + b"SDBK" + struct.pack("<III", KIND_RECORDS, len(raw), zlib.crc32(raw)) + raw)
    (tmp_path / "old.sdtrace").write_bytes(old)
    assert np.array_equal(read_trace(tmp_path / "old.sdtrace").records, recs)


def test_a_records_block_that_does_not_inflate_is_skipped_with_a_warning(tmp_path):
    import zlib
    path = tmp_path / "t.sdtrace"
    write(path, [make_records(3), make_records(4)])
    data = bytearray(path.read_bytes())
    first = data.index(b"SDBK")
    length = struct.unpack_from("<I", data, first + 8)[0]
    junk = bytes(length)                    # not zlib, but its checksum right
    data[first + 16:first + 16 + length] = junk
    struct.pack_into("<I", data, first + 12, zlib.crc32(junk))
    path.write_bytes(bytes(data))
    with pytest.warns(TraceDamageWarning, match="does not inflate"):
        assert read_trace(path).records.size == 4


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"NOTATRACE" + d[9:], "not a sysdream trace file"),
    (lambda d: d[:8] + struct.pack("<H", 99) + d[10:], "newer than this sysdream"),
    (lambda d: d[:20], "header truncated"),
    (lambda d: d[:16] + b"x" + d[17:], "header checksum mismatch"),
    (lambda d: as_version_1(d, b"x" + d[17:16 + struct.unpack_from("<I", d, 12)[0]]),
     "header is not valid"),
    (lambda d: b"", "not a sysdream trace file"),
])
def test_bad_files_are_refused_with_a_clear_error(tmp_path, mutate, message):
    path = tmp_path / "t.sdtrace"
    write(path, [make_records(2)])
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(TraceFileError, match=message):
        read_trace(path)


def test_cli_reports_bad_trace_in_one_line_with_its_exit_code(tmp_path):
    path = tmp_path / "t.sdtrace"
    path.write_bytes(b"\x00garbage" * 10)
    r = subprocess.run([SYSDREAM, "top", "--replay", str(path)], capture_output=True, text=True)
    assert r.returncode == 10
    assert r.stderr.strip().splitlines() == [
        f"sysdream: error: {path}: not a sysdream trace file (bad magic); "
        "record one with `sysdream record`"]


def test_top_replay_as_json_gives_the_whole_file(tmp_path):
    path = tmp_path / "t.sdtrace"
    recs = make_records(5)
    write(path, [recs])
    r = subprocess.run([SYSDREAM, "top", "--replay", str(path), "--format", "json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    doc = json.loads(line)
    assert doc["delivered"] == int(recs["count"].sum()) and not doc["per_second"]
    assert sum(p["syscalls"] for p in doc["processes"]) == doc["delivered"]


def test_replay_serves_the_reader_interface_in_batches(tmp_path):
    path = tmp_path / "t.sdtrace"
    recs = make_records(10)
    write(path, [recs])
    replay = TraceReplay(path, batch=4)
    got = []
    while not replay.exhausted:
        replay.wait(0.01)
        got.append(replay.read())
    assert [g.size for g in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate(got), recs)
    assert replay.counters() == {"traced": 640}


def test_record_cli_captures_a_child(ebpf_ready, tmp_path):
    """The child runs until the test ends, so it is there however long record takes to
    attach on a busy machine."""
    out = tmp_path / "rec.sdtrace"
    child = subprocess.Popen([sys.executable, "-c",
                              "import os, time\nwhile True:\n"
                              " [os.getppid() for _ in range(100)]; time.sleep(0.05)"])
    r = subprocess.run([SYSDREAM, "record", "--seconds", "1.5", "--pid", str(child.pid),
                        "-o", str(out)], capture_output=True, text=True)
    child.kill()
    assert r.returncode == 0, r.stderr
    trace = read_trace(out)
    assert set(np.unique(trace.records["tgid"])) == {child.pid}
    assert trace.counters["emitted_syscalls"] == int(trace.records["count"].sum()) > 0
    assert "recorded" in r.stderr and "lost 0" in r.stderr


def test_sigint_and_sigterm_stop_record_under_load_and_keep_the_capture(ebpf_ready,
                                                                      tmp_path):
    """Ctrl-C (SIGINT, as from a terminal) or SIGTERM while records stream in: record
    stops at once, keeps what it captured and exits 130 (Ctrl-C, the man page's code) or 0
    (SIGTERM, a requested stop)."""
    busy = subprocess.Popen([sys.executable, "-c",
                             "import os\nwhile True: os.getppid()"])
    try:
        for sig in (signal.SIGINT, signal.SIGTERM) * 2:
            out = tmp_path / f"stopped-{int(sig)}.sdtrace"
            # a terminal's foreground job: SIGINT at its default even if this test runs
            # as a background job (where the shell leaves SIGINT ignored)
            rec = subprocess.Popen([SYSDREAM, "record", "--seconds", "120", "--pid",
                                    str(busy.pid), "-o", str(out)],
                                   stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
            assert "probes attached" in rec.stderr.readline()
            time.sleep(0.5)
            rec.send_signal(sig)
            _, err = rec.communicate(timeout=scaled(20))
            assert rec.returncode == (130 if sig == signal.SIGINT else 0), err
            trace = read_trace(out)
            assert trace.records["count"].sum() > 1000 and "lost 0" in err, (sig, err)
    finally:
        busy.kill()


def test_record_started_with_sigint_ignored_keeps_ignoring_it(ebpf_ready, tmp_path):
    """A background job of a shell inherits SIGINT ignored: Ctrl-C at the terminal must
    not stop it (the shell convention); SIGTERM still does."""
    out = tmp_path / "background.sdtrace"
    rec = subprocess.Popen([SYSDREAM, "record", "--seconds", "120", "-o", str(out)],
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert "probes attached" in rec.stderr.readline()
    rec.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert rec.poll() is None
    rec.send_signal(signal.SIGTERM)
    _, err = rec.communicate(timeout=scaled(20))
    assert rec.returncode == 0 and "recorded" in err


def test_sigkill_during_record_loses_at_most_the_last_block(ebpf_ready, tmp_path):
    out = tmp_path / "killed.sdtrace"
    rec = subprocess.Popen([SYSDREAM, "record", "--seconds", "60", "-o", str(out)],
                           stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    # Wait until at least two blocks (about two seconds of capture) are on disk.
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if out.exists() and out.read_bytes().count(b"SDBK") >= 4:
            break
    rec.send_signal(signal.SIGKILL)
    rec.wait()
    blocks_on_disk = out.read_bytes().count(b"SDBK")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        trace = read_trace(out)
    assert trace.records.size > 0
    assert trace.counters  # the last complete counters block survived
    # Counters are read after each records block is written, so they cover it.
    assert trace.records.size <= trace.counters["emitted_records"]
    # Whatever damage there is lies in the final block, the one being written.
    if trace.damaged:
        damaged_at = int(trace.damaged.rsplit("byte ", 1)[1].split()[0].rstrip(")"))
        assert out.read_bytes().find(b"SDBK", damaged_at + 1) == -1
    assert blocks_on_disk >= 4
