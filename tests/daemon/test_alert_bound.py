"""Alert-level calibration (daemon/detect/evidence.py): the Gaussian over held-out excursion peaks,
its expected false alerts an hour, the default confidence that keeps them at or under one,
a hostile alerting.json refused, and `sysdream train` on a host recording fitting the
bound with a model that never saw the held-out part, which the daemon's pipeline then
uses at the configured confidence."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from daemon_helpers import context_record, records, sample_normal
from speed import scaled

from sysdream.daemon.detect.evidence import (
    MIN_PEAKS,
    AlertBound,
    default_confidence,
    fit_alert_bound,
)
from sysdream.daemon.detect.queue import Counters, WindowQueue
from sysdream.daemon.detect.scorer import Scorer
from sysdream.daemon.detect.view import DEFAULT_EVIDENCE, ModelView
from sysdream.probes.layout import CTX_NEW
from sysdream.probes.tracefile import TraceWriter, host_header


def test_the_bound_expects_the_interval_tail_and_the_default_keeps_one_an_hour():
    rng = np.random.default_rng(3)
    # 4000 excursions in 2 hours, of programs with fewer than MIN_PEAKS each: one fit
    peaks = [(f"/bin/p{i}", float(p)) for i, p in enumerate(np.exp(rng.normal(0.5, 0.4,
                                                                                4000)))]
    a = fit_alert_bound(peaks, 7200, None, 0.999)
    assert a.excursions_per_hour == pytest.approx(2000)
    assert a.confidence == pytest.approx(0.999)             # 1 - 2 * 1 / 2000
    assert a.expected_per_hour() == pytest.approx(1.0)
    assert a.fit.transform == "log" and a.fit.ks_statistic < 0.05
    assert a.bound == pytest.approx(math.exp(0.5 + a.fit.z * 0.4), rel=0.1)
    assert 0 < np.mean(np.array([p for _, p in peaks]) > a.bound) < 0.003 and not a.programs
    busy = fit_alert_bound(peaks, 720, None, 0.999)         # ten times the excursions
    assert busy.expected_per_hour() == pytest.approx(1.0) and busy.bound > a.bound
    quiet = fit_alert_bound(peaks[:100], 7200, None, 0.999)  # 50 an hour: the floor holds
    assert quiet.confidence == 0.999 and quiet.expected_per_hour() < 1
    chosen = fit_alert_bound(peaks, 7200, 0.99, 0.999)      # the user's knob
    assert chosen.expected_per_hour() == pytest.approx(10) and chosen.bound < a.bound
    assert fit_alert_bound(peaks[:MIN_PEAKS - 1], 7200, None, 0.999) is None
    assert default_confidence(0.0, 0.999) == 0.999 and default_confidence(1e12, 0.9) < 1
    again = AlertBound.from_json(json.loads(json.dumps(a.to_json())))
    assert again.bound == pytest.approx(a.bound)
    assert again.with_confidence(0.9999).bound > a.bound


def test_the_bound_is_never_below_one_window_at_the_window_bound():
    peaks = [("", 1e-3 * (1 + i % 7)) for i in range(200)]
    assert fit_alert_bound(peaks, 3600, 0.6, 0.6).bound == 1.0


def test_peaks_no_normal_fits_give_no_bound_and_the_default_rule():
    """A loop repeating one pattern peaks at the same evidence every time: a normal "fit"
    puts the bound at that very peak and the loop alerts on itself (seen: 52 peaks of
    1.34 in 2 s, KS 0.84). No bound is fitted from such peaks; a program's own that far
    off goes back to the pool."""
    same = [("/bin/loop", 1.34)] * 45 + [("/bin/loop", 1.35)] * 7
    assert fit_alert_bound(same, 2, None, 0.999) is None
    rng = np.random.default_rng(2)
    varied = [(f"/usr/bin/u{i % 9}", float(p)) for i, p in
              enumerate(np.exp(rng.normal(0.3, 0.3, 40)))]
    a = fit_alert_bound(same + varied, 3600, None, 0.999)
    assert a is None or "/bin/loop" not in a.programs


def test_a_program_with_enough_excursions_gets_its_own_bound():
    """A noisy interpreter's evidence swings wide, a shell utility's does not: the
    interpreter's own bound sits above its peaks, the others share a lower one, which is
    also the bound of a program the held-out part never showed."""
    rng = np.random.default_rng(5)
    noisy = [("/usr/bin/python3", float(p)) for p in np.exp(rng.normal(1.5, 0.8, 60))]
    quiet = [(f"/usr/bin/u{i % 9}", float(p)) for i, p in
             enumerate(np.exp(rng.normal(0.3, 0.3, 40)))]
    a = fit_alert_bound(noisy + quiet, 3600, None, 0.999)
    assert set(a.programs) == {"/usr/bin/python3"} and a.fit.samples == 40
    own = a.bounds()["/usr/bin/python3"]
    assert own > max(p for _, p in noisy) * 0.8 and a.bound < 5 < own
    again = AlertBound.from_json(json.loads(json.dumps(a.to_json())))
    assert again.bounds() == pytest.approx(a.bounds()) and again.bound == pytest.approx(a.bound)
    assert again.with_confidence(0.99).bounds()["/usr/bin/python3"] < own
    from sysdream.daemon.detect.evidence import Evidence
    ev = Evidence(a.bound, 8, bounds=a.bounds())
    assert ev.add_many("p", np.array([a.bound + 0.1]), "/usr/bin/python3") == []
    assert ev.add_many("q", np.array([a.bound + 0.1]), "/usr/bin/new") != []
    # too few of the others for a fit of their own: the shared fit takes every peak
    few = fit_alert_bound(noisy + quiet[:5], 3600, None, 0.999)
    assert few.fit.samples == 65 and set(few.programs) == {"/usr/bin/python3"}


@pytest.mark.parametrize("doc, why", [
    ([], "not an object"),
    ({"fit": []}, "not an object"),
    ({"excursions_per_hour": 1, "seconds": 1}, "not an object"),
    ({"fit": {"mean": 0, "std": 1e300, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": 1}, "out of range"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 1.5, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": 1}, "confidence"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": float("nan"), "seconds": 1}, "excursions_per_hour"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": "1"}, "seconds"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": 1, "programs": []}, "programs"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": 1, "programs": {"/bin/x": 3}}, "not a fit"),
    ({"fit": {"mean": 0, "std": 1, "confidence": 0.999, "transform": "log",
              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50},
      "excursions_per_hour": 1, "seconds": 1,
      "programs": {"/bin/x": {"mean": 0, "std": 1, "confidence": 0.99, "transform": "log",
                              "ks_statistic": 0, "ks_pvalue": 1, "samples": 50}}},
     "different confidences"),
])
def test_a_hostile_alert_calibration_is_refused(doc, why):
    with pytest.raises(ValueError, match=why):
        AlertBound.from_json(doc)


def host_trace(path, seed: int, processes: int = 600, changed: float = 0.75) -> None:
    """A host recording: `processes` short processes of one program over 6 s, each with
    its context record; from `changed` of the time on (the last quarter) the program has
    changed a little: each makes a few calls it never made before (what a held-out part is
    there to catch)."""
    from sysdream.probes import syscalls

    rng = np.random.default_rng(seed)
    odd = sorted(syscalls.table(syscalls.native_arch()).values())[:200]
    recs, ctx = [], []
    for k in range(processes):
        pid, t0 = 1000 + k, 10_000_000 * k + 1
        names = sample_normal(seed * 10_000 + k, int(rng.integers(40, 120))).tolist()
        if k >= changed * processes:
            for i in rng.choice(len(names), 3, replace=False):
                names[int(i)] = odd[int(rng.integers(len(odd)))]
        recs.append(records(pid, names, exit=True, t0=t0, chunk=64))
        ctx.append(context_record(CTX_NEW, pid, t0, "/usr/bin/worker", 7))
    with TraceWriter(path, host_header(64)) as w:
        w.write_context(np.concatenate(ctx))
        w.write_records(np.concatenate(recs))


def train_side_by_side(*cmds: list[str]) -> list[subprocess.CompletedProcess]:
    """Independent `sysdream train` runs (each its own output, one thread each) at once:
    on a machine with a core for each, the test waits for one training, not several."""
    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(600))
    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(run, cmds))


def train_cmd(trace) -> list[str]:
    return [sys.executable, "-m", "sysdream.daemon", "train", "--input", f"trace:{trace}",
            "--window", "8", "--embed", "8", "--hidden", "8", "--epochs", "2", "--threads",
            "1"]


@pytest.fixture(scope="module")
def host_models(tmp_path_factory):
    """One host recording trained the three ways the tests below compare (plain, with
    --retrain, with --sequences), side by side: ({way: its run}, the folder holding each
    way's model under its name). Each test checks the runs it reads."""
    tmp = tmp_path_factory.mktemp("host-models")
    trace = tmp / "baseline.sdtrace"
    host_trace(trace, 1)
    ways = {"plain": [], "retrain": ["--retrain"], "sequences": ["--sequences"]}
    runs = train_side_by_side(*([*train_cmd(trace), "-o", str(tmp / way), *extra]
                                for way, extra in ways.items()))
    return dict(zip(ways, runs, strict=True)), tmp


def test_train_fits_the_alert_bound_on_the_held_out_quarter_and_the_daemon_uses_it(
        host_models):
    from sysdream.model.detector import Detector

    runs, models = host_models
    out = runs["plain"]
    assert out.returncode == 0, out.stderr
    assert "training on the first three quarters" in out.stderr, out.stderr
    assert out.stderr.count("epoch 1:") == 1, "one model trained: the held-out one"
    model = models / "plain"
    replay = json.loads((model / "training.json").read_text())["heldout_alerts"]
    assert replay["seconds"] == pytest.approx(1.5, abs=0.1)
    assert replay["excursions"] >= MIN_PEAKS, out.stderr
    a = AlertBound.from_json(json.loads((model / "alerting.json").read_text()))
    assert a.fit.samples == replay["excursions"]
    assert a.confidence >= 0.999 and a.expected_per_hour() <= 1.0 + 1e-6
    assert replay["confidence"] == pytest.approx(a.confidence)
    assert f"alert bound {a.bound:.2f} at {a.confidence:.3%}" in out.stderr

    det = Detector.load(model)
    view = ModelView(det)
    assert view.alert is not None and view.evidence_bound() == pytest.approx(a.bound)
    assert view.evidence_bound(2.5) == 2.5                    # evidence_exceedances wins
    lower = ModelView(det, confidence=0.9)
    assert lower.alert.bound < a.bound and lower.bound.bound == view.bound.bound
    assert lower.alert.expected_per_hour() > a.expected_per_hour()
    scorer = Scorer(view, WindowQueue(100, Counters()), Counters(), lambda d: None)
    assert scorer.evidence.k == pytest.approx(a.bound)
    det.alerting = None
    plain = ModelView(det)
    scorer.set_model(plain)
    assert scorer.evidence.k == DEFAULT_EVIDENCE and plain.alert is None


def test_two_folds_fit_the_bound_on_twice_the_held_out_time(tmp_path):
    """--folds 2: a second network (and lineage profile) that never saw the quarter before
    the last replays it, and the bound is fitted on the peaks of both quarters; the model
    kept is the first, trained on the first three quarters."""
    from sysdream.model.detector import Detector

    trace = tmp_path / "baseline.sdtrace"
    host_trace(trace, 4, changed=0.5)      # both held-out quarters have their excursions
    cmd = train_cmd(trace)
    one, two = train_side_by_side([*cmd, "-o", str(tmp_path / "one")],
                                  [*cmd, "-o", str(tmp_path / "two"), "--folds", "2"])
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert one.stderr.count("epoch 1:") == 1 and two.stderr.count("epoch 1:") == 2
    assert "the quarter before the last" in two.stderr
    r1, r2 = (json.loads((tmp_path / n / "training.json").read_text())["heldout_alerts"]
              for n in ("one", "two"))
    assert r1["folds"] == 1 and r2["folds"] == 2
    assert r2["seconds"] == pytest.approx(2 * r1["seconds"], rel=0.05)
    assert r2["excursions"] > r1["excursions"] >= MIN_PEAKS
    a = AlertBound.from_json(json.loads((tmp_path / "two" / "alerting.json").read_text()))
    assert a.fit.samples == r2["excursions"] and a.seconds == pytest.approx(r2["seconds"])
    assert Detector.load(tmp_path / "two").vocab.names == \
        Detector.load(tmp_path / "one").vocab.names, "the model kept is the first fold's"
    bad = subprocess.run([*cmd, "-o", str(tmp_path / "bad"), "--folds", "4"],
                         capture_output=True, text=True, timeout=scaled(60))
    assert bad.returncode == 2 and "--folds" in bad.stderr


def test_retrain_learns_everything_and_keeps_the_bound(host_models):
    """--retrain: a second model, trained on the whole recording (so it knows the calls of
    the last quarter), carries the bound the held-out model fitted."""
    from sysdream.model.detector import Detector

    runs, models = host_models
    kept, again = runs["plain"], runs["retrain"]
    assert kept.returncode == 0 and again.returncode == 0, kept.stderr + again.stderr
    assert again.stderr.count("epoch 1:") == 2 and "--retrain" in again.stderr
    one, both = Detector.load(models / "plain"), Detector.load(models / "retrain")
    assert len(both.vocab) > len(one.vocab), "the last quarter's calls were learnt"
    assert both.alerting == one.alerting is not None


def test_train_learns_each_program_s_sequences_when_asked(host_models):
    """--sequences: lineage.json holds the program's sequence hashes and the rate of runs
    of new ones in the held-out quarter (its last processes make odd calls), the daemon's
    judge uses them, and the alert bound was fitted with them; without it, none."""
    from sysdream.daemon.training.profile import GRAM
    from sysdream.model.detector import Detector

    runs, models = host_models
    on, off = runs["sequences"], runs["plain"]
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "distinct 6-syscall sequences" in on.stderr
    assert "6-syscall" not in off.stderr
    seq = json.loads((models / "sequences" / "lineage.json").read_text())["sequences"]
    assert seq["length"] == GRAM and list(seq["hashes"]) == ["/usr/bin/worker"]
    assert 0 < seq["p"]["/usr/bin/worker"] < 1 and 0 < seq["default_p"] < 1
    held = json.loads((models / "sequences" / "lineage.json").read_text())["heldout"]
    assert held["kinds"].get("new_sequence", 0) > 0, "the odd calls of the last quarter"
    assert json.loads((models / "plain" / "lineage.json").read_text())["sequences"] is None
    judge = ModelView(Detector.load(models / "sequences")).lineage
    assert len(judge.profile.grams["/usr/bin/worker"]) > 100
    assert not ModelView(Detector.load(models / "plain")).lineage.profile.grams
