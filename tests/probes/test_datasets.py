"""Dataset readers on the real public data (small slices) and on bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sysdream.probes import datasets
from sysdream.probes.errors import TraceFileError

# The shared datasets sit beside the repository (../shared/datasets) or where
# SYSDREAM_DATASETS points.
DATA = Path(os.environ.get("SYSDREAM_DATASETS",
                           Path(__file__).resolve().parents[3] / "shared" / "datasets"))
ADFA = DATA / "ADFA-LD"
UNM = DATA / "UNM"
needs_data = pytest.mark.skipif(not ADFA.is_dir(), reason=f"datasets not at {DATA}")


@needs_data
def test_adfa_ld_training_split_matches_its_provenance():
    train = datasets.read_adfa_ld(ADFA, "train")
    assert len(train) == 833
    assert sum(len(s.tokens) for s in train) == 308_077
    # i386 numbers become names: UTD-0001 starts "6 6 63 6 42" = close close dup2 close pipe.
    assert list(train[0].tokens[:5]) == ["close", "close", "dup2", "close", "pipe"]
    assert all(s.label == "normal" for s in train)


@needs_data
def test_adfa_ld_attacks_carry_their_six_types():
    attacks = datasets.read_adfa_ld(ADFA, "attack")
    assert len(attacks) == 746
    assert {s.group for s in attacks} == {"Adduser", "Hydra_FTP", "Hydra_SSH",
                                          "Java_Meterpreter", "Meterpreter", "Web_Shell"}


@needs_data
def test_unm_groups_by_pid():
    sets = datasets.read_unm(UNM, "synthetic-sendmail")
    assert len(sets["normal"]) == 199 and len(sets["attack"]) == 25
    assert all(s.tokens[0].startswith("unm_") for s in sets["attack"])


def test_unm_sequences_keep_pid_order(tmp_path):
    f = tmp_path / "x.int"
    f.write_text("7 1\n3 2\n7 4\n3 5\n7 6\n")
    seqs = datasets.read_unm_file(f)
    assert [list(s.tokens) for s in seqs] == [["unm_1", "unm_4", "unm_6"], ["unm_2", "unm_5"]]


def test_garbage_in_a_dataset_file_names_file_and_line(tmp_path):
    f = tmp_path / "UTD-9999.txt"
    f.write_text("6 6 63\n6 oops 120\n")
    with pytest.raises(TraceFileError, match=r"UTD-9999.txt:2: 'oops' is not a syscall number"):
        datasets.read_adfa_file(f)
    g = tmp_path / "odd.int"
    g.write_text("1 2\n3\n")
    with pytest.raises(TraceFileError, match="odd number of fields"):
        datasets.read_unm_file(g)


def test_empty_and_unknown_numbers_are_kept_not_dropped(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    assert datasets.read_adfa_file(f).tokens.size == 0
    f.write_text("3 999")
    assert list(datasets.read_adfa_file(f).tokens) == ["read", "sys_999"]


def test_lidds_sc_enter_events_per_thread(tmp_path):
    f = tmp_path / "run.sc"
    f.write_text(
        "1631610083294465052 33 10 httpd 11 open > path=/etc/x\n"
        "1631610083294465100 33 10 httpd 11 open < fd=3\n"
        "1631610083294465200 33 10 httpd 12 read > fd=3\n"
        "1631610083294465300 33 10 httpd 11 close > fd=3\n")
    seqs = {s.source.rsplit(":", 1)[1]: list(s.tokens) for s in datasets.read_lidds_sc(f)}
    assert seqs == {"11": ["open", "close"], "12": ["read"]}
    f.write_text("not a lid-ds line\n")
    with pytest.raises(TraceFileError, match="run.sc:1: not a LID-DS line"):
        datasets.read_lidds_sc(f)


def test_trace_file_sequences_use_the_trace_table(tmp_path):
    from sysdream.probes.layout import record_dtype
    from sysdream.probes.tracefile import TraceWriter, host_header

    recs = np.zeros(2, record_dtype(8))
    recs["tid"] = [5, 6]
    recs["count"] = [3, 1]
    recs["ids"][0, :3] = [0, 1, 3]
    recs["ids"][1, 0] = 39
    path = tmp_path / "t.sdtrace"
    header = host_header(8)
    header["syscall_table"] = {"0": "read", "1": "write", "3": "close", "39": "getpid"}
    with TraceWriter(path, header) as w:
        w.write_records(recs)
    seqs = {s.source.rsplit(":", 1)[1]: list(s.tokens)
            for s in datasets.read_trace_sequences(path)}
    assert seqs == {"5": ["read", "write", "close"], "6": ["getpid"]}
