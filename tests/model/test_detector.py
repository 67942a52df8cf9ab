import json
import shutil

import numpy as np
import pytest
import torch

from sysdream.model import bundle, calibration, metrics
from sysdream.model.bundle import BundleError
from sysdream.model.detector import Detector


def test_trained_detector_separates_attacks_at_the_calibrated_bound(trained, corpus):
    normal, _ = trained.trace_scores(corpus["normal"])
    attack, _ = trained.trace_scores(corpus["attack"])
    assert metrics.roc_auc(normal, attack) > 0.95
    flagged_attack = [trained.score_sequence(s, detail=False).exceeds.any()
                      for s in corpus["attack"]]
    flagged_normal = [trained.score_sequence(s, detail=False).exceeds.any()
                      for s in corpus["normal"]]
    assert np.mean(flagged_attack) >= 0.9
    assert np.mean(flagged_normal) <= 0.1


def test_explanation_names_the_surprising_syscalls(trained, corpus):
    seq = corpus["attack"][0]
    r = trained.score_sequence(seq)
    worst = int(np.argmax(r.scores.score))
    ex = trained.explain(r, worst)
    assert ex["score"] > ex["bound"]
    top = ex["surprises"][0]
    assert top["observed"] in {"clone", "execve", "socket", "connect", "dup2", "read", "write"}
    assert top["observed_p"] < top["expected_p"]
    assert sum(a["weight"] for a in ex["attention"]) <= 1.0 + 1e-6
    assert len(ex["attention"]) > 0


def test_unknown_syscalls_are_reported(trained):
    seq = np.array(["openat", "fstat", "read", "io_uring_enter", "close"], dtype=object)
    r = trained.score_sequence(seq)
    assert r.unknown == ["io_uring_enter"]
    assert len(r.scores.score) == 1  # shorter than the window: one padded window


def test_empty_and_single_syscall_sequences(trained):
    assert len(trained.score_sequence(np.array([], dtype=object)).scores.score) == 0
    one = trained.score_sequence(np.array(["read"], dtype=object))
    assert len(one.scores.score) == 1 and np.isfinite(one.scores.score[0])


def test_training_is_reproducible_with_a_seed(corpus):
    from synthetic_corpus import quick_settings, tiny_config

    a = Detector.train(corpus["train"][:10], corpus["calibrate"][:5], tiny_config(),
                       quick_settings(epochs=2))
    b = Detector.train(corpus["train"][:10], corpus["calibrate"][:5], tiny_config(),
                       quick_settings(epochs=2))
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert a.bound.bound == b.bound.bound


def test_empty_training_data_is_refused():
    from synthetic_corpus import quick_settings, tiny_config

    with pytest.raises(ValueError, match="no training data"):
        Detector.train([np.array([], dtype=object)], [np.array(["read"], dtype=object)],
                       tiny_config(), quick_settings())


def test_bundle_round_trip_scores_identically(trained, corpus, tmp_path):
    path = tmp_path / "model"
    model_id = trained.save(path)
    loaded = Detector.load(path, runtime="torch")   # ONNX Runtime's: test_export.py
    assert loaded.model_id == model_id and len(model_id) == 16
    seq = corpus["attack"][3]
    assert np.array_equal(trained.score_sequence(seq).scores.score,
                          loaded.score_sequence(seq).scores.score)
    assert loaded.bound.bound == trained.bound.bound
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) >= set(bundle.FILES)
    info = json.loads((path / "training.json").read_text())
    assert info["data"]["sequences"] == len(corpus["train"]) and info["versions"]["torch"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "version", "pickle"])
def test_damaged_bundles_are_refused(trained, tmp_path, damage):
    path = tmp_path / "model"
    trained.save(path)
    weights = path / "weights.pt"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete":
        (path / "vocabulary.json").unlink()
    elif damage == "version":
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(m))
    elif damage == "pickle":
        # a consistent manifest over weights that are an arbitrary pickle: weights_only
        # refuses to run it
        class Evil:
            def __reduce__(self):
                return (shutil.rmtree, (str(tmp_path),))
        torch.save({"x": Evil()}, weights)
        m = json.loads((path / "manifest.json").read_text())
        m["files"]["weights.pt"] = bundle._sha256(weights)
        (path / "manifest.json").write_text(json.dumps(m))
    # torch's loader reads weights.pt (ONNX Runtime's never unpickles it)
    with pytest.raises(BundleError) as err:
        Detector.load(path, runtime="torch" if damage == "pickle" else "auto")
    assert str(path) in str(err.value)
    assert tmp_path.exists()


def test_calibration_picks_the_honest_transform():
    rng = np.random.default_rng(0)
    scores = np.exp(rng.normal(0.2, 0.4, 100_000))   # log-normal, as NLL scores tend to be
    b = calibration.fit(scores, 0.999)
    assert b.transform == "log" and b.ks_statistic < 0.03
    z = 3.2905  # two-sided 99.9 %
    assert b.bound == pytest.approx(np.exp(b.mean + z * b.std), rel=1e-3)
    assert 0.0002 < b.exceeds(scores).mean() < 0.002  # 0.05 % expected above
    chi = rng.chisquare(4, 100_000) / 4            # skewed: the kept transform's bound puts
    c = calibration.fit(chi, 0.999)                # about the nominal 0.05 % above it
    assert 0.0002 < c.exceeds(chi).mean() < 0.002
    same = calibration.fit(np.full(10, 0.5), 0.99)
    assert same.exceeds(np.array([0.5, 0.6])).tolist() == [False, True]
    with pytest.raises(ValueError, match="confidence"):
        calibration.fit(scores, 1.5)
    assert calibration.GaussianBound.from_json(b.to_json()) == b


def test_a_bound_far_above_every_calibration_window_is_not_chosen():
    """Near-perfect windows (a third of them) stretch the log fit's spread until its bound
    sits thousands of times above the highest normal score: no window could ever exceed it.
    It used to win whenever the other transforms were off by more than "none above" is;
    now the sqrt fit, with a few windows above it, is kept."""
    rng = np.random.default_rng(1)
    scores = np.concatenate([np.exp(rng.normal(-8, 1.5, 3000)),
                             np.exp(rng.normal(-0.5, 1.0, 7000))])
    b = calibration.fit(scores, 0.999)
    assert b.transform != "log" and b.bound < scores.max()
    assert 0 < b.exceeds(scores).mean() < 0.01


def test_calibration_fits_distinct_windows_so_a_busy_loop_does_not_tighten_it():
    """A loop repeats one near-perfect window; counted per occurrence it is a spike that
    drags the bound below ordinary normal windows. Fitted on distinct windows it is not."""
    rng = np.random.default_rng(1)
    varied = np.exp(rng.normal(-1.5, 0.5, 400))          # 400 distinct normal windows
    loop = np.full(40_000, 0.002)                        # one window, repeated
    scores = np.concatenate([varied, loop])
    distinct = np.arange(401)                            # each distinct window once
    per_occurrence = calibration.fit(scores, 0.999)
    per_window = calibration.fit(scores, 0.999, distinct)
    assert per_occurrence.exceeds(varied).mean() > 0.05  # the spike's bound: 5%+ alarms
    assert per_window.exceeds(varied).mean() < per_occurrence.exceeds(varied).mean() / 3
    assert per_window.exceeds(scores).mean() < 0.001
    assert per_window.samples == 401


def test_the_worst_position_row_scores_each_window_by_its_most_surprising_call(trained,
                                                                               corpus):
    """eval's "worst position" row: the network's per-call NLL, its maximum over each
    window's real positions, on the same windows the mean is taken over."""
    from sysdream.model.evaluation import NeuralMethod, WorstPosition
    from sysdream.model.scoring import score
    from sysdream.model.windows import cut

    base = NeuralMethod(trained.cfg, None)
    base.detector = trained
    worst = WorstPosition(base)
    assert worst.name == "dream, worst position"
    seqs = corpus["attack"][:3] + corpus["normal"][:3]
    got = worst.window_scores(seqs)
    means = trained.trace_scores(seqs)[1]
    for s, g, m in zip(seqs, got, means, strict=True):
        w = cut(trained.vocab.encode(s), trained.cfg.window, trained.cfg.stride,
                trained.cfg.task)
        nll = score(trained.net, w, 64, detail=True).nll
        assert len(g) == len(m) == len(w)
        assert np.allclose(g, [row[mask].max() for row, mask in zip(nll, w.mask,
                                                                     strict=True)], atol=1e-5)
        assert (g >= m - 1e-6).all()        # a maximum is never below the mean
    bound = worst.fit([], corpus["calibrate"], 0.999)
    assert bound.bound > 0
