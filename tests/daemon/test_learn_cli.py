"""`sysdream train`, `score` and `eval` from the command line, on small synthetic traces in
ADFA-LD's format (i386 numbers), with their bad inputs; `--format json` on train, eval and
record."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from speed import scaled

TINY = ["--epochs", "2", "--hidden", "8", "--embed", "8", "--window", "8", "--threads", "1"]
# i386: 5 open, 108 fstat, 3 read, 6 close, 192 mmap2, 4 write, 91 munmap
LOOP = [5, 108, 3, 3, 6, 192, 4, 91]
SHELL = [120, 11, 102, 102, 63, 63, 11]  # clone, execve, socketcall, dup2


def sysdream(*args, check=False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysdream.daemon", *map(str, args)],
                          capture_output=True, text=True, timeout=scaled(300), check=check)


def write_traces(folder: Path, n: int, attack: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(n):
        seq = LOOP * int(rng.integers(8, 20))
        if attack:
            k = len(seq) // 2
            seq = seq[:k] + SHELL * 3 + seq[k:]
        (folder / f"T-{i:03d}.txt").write_text(" ".join(map(str, seq)) + " \n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("traces")
    return {"normal": write_traces(base / "normal", 30, False, 1),
            "attack": write_traces(base / "attack", 6, True, 2), "base": base}


@pytest.fixture(scope="module")
def bundle(data):
    out = data["base"] / "model"
    r = sysdream("train", "--input", data["normal"], "-o", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "written to" in r.stderr
    return out


def test_train_writes_a_bundle_that_scores_traces(bundle, data):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["model_id"]) == 16
    attack = sysdream("score", "--input", data["attack"], "--model", bundle, "--exit-status")
    assert attack.returncode == 16, attack.stdout + attack.stderr   # Exit.ANOMALOUS
    none = sysdream("score", "--model", bundle)             # nothing to score: usage, 2
    assert none.returncode == 2 and "--input" in none.stderr and "Traceback" not in none.stderr
    assert "ANOMALOUS" in attack.stdout and "most surprising" in attack.stdout
    one = sysdream("score", data["attack"] / "T-000.txt", "--model", bundle, "--format", "json")
    line = json.loads(one.stdout.splitlines()[0])
    assert line["anomalous_windows"] >= 1
    assert line["alerts"][0]["surprises"][0]["observed"] in {
        "clone", "execve", "socketcall", "dup2", "read", "open", "fstat64", "close"}


def test_score_format_json_is_json(bundle, data):
    a = sysdream("score", data["attack"], "--model", bundle, "--format", "json")
    b = sysdream("score", data["attack"], "--model", bundle, "--format", "json")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    docs = [json.loads(x) for x in b.stdout.splitlines()]
    assert len(docs) == len(a.stdout.splitlines()) == 6
    assert [d.keys() for d in docs] == [json.loads(x).keys() for x in a.stdout.splitlines()]


def test_corrupt_bundle_exits_11(bundle, tmp_path, data):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    (bad / "calibration.json").write_text("{}")
    r = sysdream("score", data["attack"], "--model", bad)
    assert r.returncode == 11
    assert "sha256" in r.stderr and "Traceback" not in r.stderr
    r = sysdream("score", data["attack"], "--model", tmp_path / "nothing")
    assert r.returncode == 11 and "sysdream train" in r.stderr


def test_labels_add_a_transfer_classifier_that_score_reports(data, tmp_path):
    labels = tmp_path / "labels.txt"
    labelled = [data["attack"] / f"T-{i:03d}.txt" for i in range(3)]
    labels.write_text("# labelled anomalies, one input per line\n"
                      + "".join(f"adfa:{p}\n" for p in labelled))
    out = tmp_path / "m"
    r = sysdream("train", "--input", data["normal"], "--labels", labels, "-o", out, *TINY)
    assert r.returncode == 0, r.stderr
    assert "transfer.json" in json.loads((out / "manifest.json").read_text())["files"]
    r = sysdream("score", data["normal"], data["attack"], "--model", out, "--format", "json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    p = {ln["source"]: ln["transfer_probability"] for ln in lines}
    attack = [v for k, v in p.items() if "/attack/" in k]
    normal = [v for k, v in p.items() if "/normal/" in k]
    assert len(attack) == 6 and len(normal) == 30
    # the three attack traces it never saw rank above every normal trace too
    unseen = [v for k, v in p.items() if "/attack/" in k and Path(k).name >= "T-003"]
    assert len(unseen) == 3 and min(unseen) > max(normal), (unseen, max(normal))
    text = sysdream("score", labelled[0], "--model", out)
    assert "like the labelled anomalies: p=" in text.stdout
    plain = sysdream("score", labelled[0], "--model", data["base"] / "model")
    assert "labelled" not in plain.stdout  # no classifier, no probability


def test_bad_labels_and_an_inconsistent_transfer_classifier(data, tmp_path):
    import hashlib

    r = sysdream("train", "--input", data["normal"], "--labels", tmp_path / "none.txt",
                 "-o", tmp_path / "m", *TINY)
    assert r.returncode == 2 and "--labels" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing labelled yet\n")
    r = sysdream("train", "--input", data["normal"], "--labels", empty, "-o", tmp_path / "m",
                 *TINY)
    assert r.returncode == 2 and "lists no anomalous traces" in r.stderr
    assert not (tmp_path / "m").exists()
    labels = tmp_path / "labels.txt"
    labels.write_text(f"adfa:{data['attack'] / 'T-000.txt'}\n")
    out = tmp_path / "m"
    assert sysdream("train", "--input", data["normal"], "--labels", labels, "-o", out,
                    *TINY).returncode == 0
    # a classifier for another network, with its checksum resealed: refused at load
    doc = json.loads((out / "transfer.json").read_text())
    doc["weight"] = doc["weight"][:-1]
    (out / "transfer.json").write_text(json.dumps(doc))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["transfer.json"] = hashlib.sha256(
        (out / "transfer.json").read_bytes()).hexdigest()
    from sysdream.model.bundle import model_id_of
    manifest["model_id"] = model_id_of(manifest["files"])   # resealed whole
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = sysdream("score", data["attack"], "--model", out)
    assert r.returncode == 11 and "transfer classifier" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_training_inputs(tmp_path):
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("5 3 3\n6 hello 4\n")
    r = sysdream("train", "--input", garbage, "-o", tmp_path / "m", *TINY)
    assert r.returncode == 10 and "garbage.txt:2" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(3):
        (empty / f"E-{i}.txt").write_text("")
    r = sysdream("train", "--input", empty, "-o", tmp_path / "m", *TINY)
    assert r.returncode == 2 and "empty" in r.stderr
    r = sysdream("train", "--input", tmp_path / "missing", "-o", tmp_path / "m", *TINY)
    assert r.returncode == 10 and "no such file" in r.stderr
    r = sysdream("train", "--input", garbage, "-o", tmp_path / "m", "--arch", "gpt")
    assert r.returncode == 2 and "arch must be one of" in r.stderr
    assert not (tmp_path / "m").exists()


def test_one_syscall_traces_train_and_score(tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    for i in range(5):
        (folder / f"S-{i}.txt").write_text(f"{LOOP[i % len(LOOP)]}\n")
    r = sysdream("train", "--input", folder, "-o", tmp_path / "m", *TINY)
    assert r.returncode == 2 and "too little calibration data" in r.stderr
    assert "epoch" not in r.stderr  # refused before any training time is spent
    for i in range(5, 12):
        (folder / f"S-{i}.txt").write_text(f"{LOOP[i % len(LOOP)]}\n")
    r = sysdream("train", "--input", folder, "-o", tmp_path / "m", *TINY)
    assert r.returncode == 0, r.stderr
    r = sysdream("score", folder, "--model", tmp_path / "m")
    assert r.returncode == 0 and r.stdout.count("windows above the bound") == 12


def test_eval_prints_every_method_and_writes_json_and_plot(data, tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "roc.png"
    r = sysdream("eval", "--dataset", "files", "--normal", data["normal"], "--attack",
                 data["attack"], "--arch", "dream,em", "--json", out, "--plot", png,
                 "--transfer-fraction", "0.5", *TINY)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    t = report["transfer"]
    assert t["labelled_attack_traces"] == 3 and t["test_attack_traces"] == 3
    assert t["transfer"]["roc_auc"] > 0.9 and "transfer step" in r.stdout
    methods = [m["method"] for m in report["results"]]
    assert methods == ["dream", "em", "stide", "n-gram", "DeepLog", "covering"]
    for m in report["results"]:
        assert 0 <= m["roc_auc"] <= 1 and m["windows_per_second"] > 0
        if m["method"] != "DeepLog":  # top-9 of this 10-name vocabulary misses nothing
            assert m["roc_auc"] > 0.9, m  # the shell payload is far from the loop
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in methods:
        assert name in r.stdout
    # not silent for minutes: a line per method with the time left (no terminal here)
    done = [ln for ln in r.stderr.splitlines() if ln.startswith("eval: ")]
    assert len(done) == 6 and done[0].startswith("eval: dream done (1 of 6, ")
    assert all("s left)" in ln for ln in done) and "about 0 s left" in done[-1]


def test_eval_combine_adds_rows_with_intervals_and_refuses_an_unknown_baseline(data,
                                                                               tmp_path):
    out = tmp_path / "c.json"
    r = sysdream("eval", "--dataset", "files", "--normal", data["normal"], "--attack",
                 data["attack"], "--baselines", "stide", "--combine", "--json", out,
                 "--plot", "", *TINY)
    assert r.returncode == 0, r.stderr
    rows = {m["method"]: m for m in json.loads(out.read_text())["results"]}
    assert list(rows) == ["dream", "stide", "dream, worst position", "2-gram", "dream, max",
                          "dream, top-10% mean", "dream, max of a sliding mean of 8",
                          "z: dream + stide", "LR: dream / 2-gram"]
    assert rows["dream"]["roc_auc_minus_first"] == []
    assert all(len(m["roc_auc_minus_first"]) == 2 for k, m in rows.items() if k != "dream")
    assert "dAUC 95%" in r.stdout and "z: dream + stide" in r.stdout
    bad = sysdream("eval", "--dataset", "files", "--normal", data["normal"], "--attack",
                   data["attack"], "--baselines", "stide,snort", "--json", out, *TINY)
    assert bad.returncode == 2 and "no snort (there are stide, n-gram, DeepLog, " \
        "covering)" in bad.stderr and "Traceback" not in bad.stderr


def test_training_shows_a_bar_with_the_time_left_on_a_terminal(data):
    """On a real terminal (a pty) the epochs show a tqdm bar with rate and time left, and
    the epoch lines; through a pipe, the epoch lines alone; to a supervisor (the daemon's
    learner, --progress-fd), JSON lines: each epoch, then the model written."""
    from harness import PtyOutput

    tty = PtyOutput()
    p = subprocess.run([sys.executable, "-m", "sysdream.daemon", "train", "--input",
                        str(data["normal"]), "-o", str(data["base"] / "pty-model"), *TINY],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=tty.slave,
                       timeout=scaled(300))
    tty.close()
    text = tty.text()
    assert p.returncode == 0, text[-2000:]
    assert "batch/s" in text or "s/batch" in text, text[-2000:]
    assert re.search(r"epoch 1/2: .*\[\d\d:\d\d<(\d\d:\d\d|\?)", text), text[-2000:]
    assert "epoch 1: train" in text and "epoch 2: train" in text
    rd, wr = os.pipe()
    piped = subprocess.run([sys.executable, "-m", "sysdream.daemon", "train", "--input",
                            str(data["normal"]), "-o", str(data["base"] / "pipe-model"),
                            "--progress-fd", str(wr), *TINY], pass_fds=(wr,),
                           capture_output=True, text=True, timeout=scaled(300))
    os.close(wr)
    with open(rd) as f:
        events = [json.loads(ln) for ln in f]
    assert piped.returncode == 0 and "batch" not in piped.stderr
    assert [ln for ln in piped.stderr.splitlines() if ln.startswith("epoch")] == [
        ln for ln in piped.stderr.splitlines() if re.match(r"epoch \d+: train", ln)]
    epochs = [e for e in events if "epoch" in e]
    assert [(e["stage"], e["epoch"], e["epochs"]) for e in epochs] == [("model", 1, 2),
                                                                     ("model", 2, 2)]
    assert all(e["validation_loss"] > 0 for e in epochs)
    model_id = json.loads((data["base"] / "pipe-model" / "manifest.json").read_text())[
        "model_id"]
    assert events[-1] == {"stage": "written", "model_id": model_id}
    bad = sysdream("train", "--input", data["normal"], "-o", data["base"] / "no-model",
                   "--progress-fd", "999", *TINY)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--progress-fd 999" in \
        bad.stderr and "Traceback" not in bad.stderr


def test_capture_verbs_do_not_pay_for_torch():
    # `sysdream record` must attach within its first second; importing torch takes ~2 s here.
    code = ("import sys, sysdream.daemon.commands.cli as c; c.build_parser(); "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("verb", ["", "run", "train", "score", "record", "doctor", "allow"])
def test_version_on_every_verb(verb):
    """`sysdream --version` and `sysdream VERB --version`: the installed version, exit 0,
    before any required argument is asked for."""
    from importlib.metadata import version

    r = sysdream(*([verb] if verb else []), "--version")
    assert r.returncode == 0 and r.stdout.startswith(f"sysdream {version('sysdream')} ("), r


def test_max_share_keeps_one_input_from_dominating_the_training_data():
    """A fleet role's hosts: with --max-share 0.5 the big host gives no more syscalls than
    the rest together, its sequences kept in order; equal hosts keep everything; one
    input is never cut."""
    from sysdream.daemon.commands.train import _shared
    from sysdream.probes.datasets import Sequence

    def host(name, n, parts=4):
        return [Sequence(f"{name}{i}", np.arange(n // parts), "normal", "g")
                for i in range(parts)]

    def given(got, name):
        return sum(len(s.tokens) for s in got if s.source.startswith(name))
    got = _shared([host("big", 100_000), host("small", 4_000), host("other", 6_000)], 0.5)
    assert (given(got, "big"), given(got, "small"), given(got, "other")) == \
        (10_000, 4_000, 6_000)
    assert [s.source for s in got if s.source.startswith("big")] == ["big0"]
    assert given(_shared([host("a", 800), host("b", 800)], 0.2), "") == 1600
    assert given(_shared([host("big", 100_000)], 0.1), "") == 100_000


def test_train_and_eval_format_json_put_one_object_on_stdout(data, tmp_path):
    """--format json: the summary a script reads is one JSON object on stdout (progress
    stays on stderr), its figures the bundle's and the results file's own."""
    out = tmp_path / "m"
    r = sysdream("train", "--input", data["normal"], "-o", out, "--format", "json", *TINY)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert got["model_id"] == manifest["model_id"] and got["output"] == str(out)
    assert got["sequences"] == 30 and got["syscalls"] > 30 * 8 and got["vocabulary"] >= 7
    assert got["bound"] > 0 and got["confidence"] == 0.999 and not got["signed"]
    assert "written to" not in r.stderr
    res = tmp_path / "r.json"
    r = sysdream("eval", "--dataset", "files", "--normal", data["normal"], "--attack",
                 data["attack"], "--no-baselines", "--json", res, "--plot", "",
                 "--format", "json", *TINY)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads(res.read_text())
    assert [m["method"] for m in report["results"]] == ["dream"]
    assert report["results"][0]["roc_auc"] > 0.9 and f"results: {res}" in r.stderr


def test_record_format_json_reports_what_it_wrote(ebpf_ready, tmp_path):
    trace = tmp_path / "t.sdtrace"
    r = sysdream("record", "--seconds", "0.3", "-o", trace, "--format", "json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["output"] == str(trace) and got["seconds_asked"] == 0.3
    assert got["syscalls"] > 0 and got["records"] > 0 and got["threads"] > 0
    assert got["lost"] >= 0 and got["stopped_early"] is False
    from sysdream.probes.tracefile import read_trace
    assert len(read_trace(trace).records) == got["records"]
