import numpy as np
import pytest

from sysdream.model import metrics
from sysdream.model.baselines import DeepLog, NGram, SequenceCovering, Stide


def test_stide_counts_mismatches_in_its_locality_frame():
    normal = [np.tile(np.arange(2, 8), 10)]
    s = Stide(10, n=3, frame=5).fit(normal)
    assert s.token_scores(np.tile(np.arange(2, 8), 3)).max() == 0
    odd = np.concatenate([np.tile(np.arange(2, 8), 2), [9, 9, 9], np.tile(np.arange(2, 8), 2)])
    lfc = s.token_scores(odd)
    assert lfc.max() > 0 and lfc[:12].max() == 0
    assert s.window_scores(odd, 8, 8).max() == lfc.max()


def test_ngram_is_a_proper_distribution():
    rng = np.random.default_rng(0)
    V = 7
    m = NGram(V, n=3).fit([rng.integers(2, V, 300)])
    for ctx in ([2, 3], [6, 6], [5, 2]):
        total = 0.0
        for w in range(V):
            total += np.exp(-m.token_nll(np.array(ctx + [w]))[-1])
        assert total == pytest.approx(1.0, abs=1e-6)


def test_sequence_covering_takes_the_longest_pieces_seen_in_normal_data():
    c = SequenceCovering(10, longest=4).fit([np.array([2, 3, 4, 5, 6, 7])])
    # from each start: the longest run that occurs in the normal sequence, at most 4
    assert c.piece_lengths(np.array([2, 3, 4, 5, 6, 9, 7])).tolist() == [4, 4, 3, 2, 1, 0, 1]
    # greedy: 2345 | 6 | 9 | 7: four pieces over seven syscalls
    assert c.token_scores(np.array([2, 3, 4, 5, 6, 9, 7])).tolist() == \
        [1, 0, 0, 0, 1, 1, 1]
    normal = np.tile(np.arange(2, 9), 12)
    c = SequenceCovering(10).fit([normal])
    odd = normal.copy()
    odd[30:40] = np.array([9, 2, 9, 3, 9, 4, 9, 5, 9, 6])
    assert c.window_scores(normal, 16, 16).max() <= 1 / 16 + 1e-9
    assert c.window_scores(odd, 16, 16).max() >= 8 / 16


def test_deeplog_misses_only_what_it_never_saw():
    normal = [np.tile([2, 3, 4, 5], 40)]
    d = DeepLog(8, history=4, hidden=16, top_g=1, epochs=15, batch=16).fit(normal)
    assert d.token_miss(np.tile([2, 3, 4, 5], 5))[4:].sum() == 0
    miss = d.token_miss(np.array([2, 3, 4, 5, 2, 3, 7, 5, 2, 3]))
    assert miss[6] == 1


def test_auc_and_detection_rate():
    normal = np.array([0.1, 0.2, 0.3, 0.4])
    attack = np.array([0.35, 0.5, 0.6])
    assert metrics.roc_auc(normal, attack) == pytest.approx(11 / 12)
    assert metrics.roc_auc(normal, normal) == pytest.approx(0.5)
    assert metrics.detection_at_fpr(normal, attack, 0.0) == pytest.approx(2 / 3)
    assert metrics.detection_at_fpr(normal, attack, 0.25) == 1.0
    fpr, tpr = metrics.roc_curve(normal, attack)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert metrics.pr_auc(normal, np.array([0.9, 0.95])) == pytest.approx(1.0)


def test_an_intrusion_file_counts_as_detected_when_any_of_its_traces_is_flagged():
    """UNM labels per file: an intrusion file also holds ordinary processes."""
    from sysdream.model.evaluation import BaselineMethod, Split, run_method

    loop = np.array(["read", "write", "poll", "close"] * 40, dtype=object)
    odd = loop.copy()
    odd[60:64] = ["ptrace", "setuid", "execve", "chmod"]
    split = Split([loop] * 3, [loop] * 2, [loop] * 2, [loop, odd, loop], ["x"] * 3, "t",
                  attack_sources=["a.int", "a.int", "b.int"])
    r = run_method(BaselineMethod(lambda v: Stide(v), 16), split, 0.999)
    assert r.intrusions_detected_at_bound == {"a.int": True, "b.int": False}
    assert r.dr_at_bound == pytest.approx(1 / 3) and r.fpr_at_bound == 0


def _synthetic_split(seed: int):
    """Normal traces drawn from one Markov chain, attacks from a shifted one: n-gram
    models tell them apart; a 2-gram background knows the pairs of both kinds."""
    from sysdream.model.evaluation import Split

    rng = np.random.default_rng(seed)
    names = np.array(["read", "write", "poll", "close", "openat", "mmap", "futex", "ioctl"],
                     dtype=object)

    def trace(odd: float):
        n = int(rng.integers(60, 120))
        t = rng.choice(4, n)                      # mostly the first four calls
        swap = rng.random(n) < odd
        t[swap] = rng.choice(np.arange(4, 8), int(swap.sum()))
        return names[t]
    return Split([trace(0.02) for _ in range(60)], [trace(0.02) for _ in range(40)],
                 [trace(0.02) for _ in range(60)], [trace(0.3) for _ in range(40)],
                 ["shifted"] * 40, "synthetic")


def test_combinations_and_paired_intervals_on_two_methods():
    """Combined rows come from the members' trace scores standardised on the calibration
    traces; each row after the first carries a paired bootstrap interval of its ROC-AUC
    minus the first's, which holds 0 for a copy of the first and is one-sided for a
    method that is worse on every draw."""
    from sysdream.model import evaluation as ev

    split = _synthetic_split(1)
    methods = [ev.BaselineMethod(lambda v: NGram(v), 16), ev.background(16),
               ev.BaselineMethod(lambda v: NGram(v), 16, name="copy")]
    report = ev.evaluate(split, methods, 0.999, combinations=True)
    rows = {r["method"]: r for r in report["results"]}
    assert rows["n-gram"]["roc_auc_minus_first"] == []
    lo, hi = rows["copy"]["roc_auc_minus_first"]
    assert lo == hi == 0.0
    # the likelihood ratio n-gram / 2-gram is computed from the two rows' trace scores
    lr = rows["LR: n-gram / 2-gram"]
    assert 0.0 <= lr["roc_auc"] <= 1.0 and len(lr["roc_auc_minus_first"]) == 2
    assert lr["roc_auc_minus_first"][0] <= lr["roc_auc_minus_first"][1]
    # combinations whose members did not run are left out, not faked
    assert not any(name.startswith("z:") for name in rows)
    assert "dAUC 95%" in ev.table(report)


def test_auc_difference_interval_excludes_zero_for_a_clearly_worse_method():
    from sysdream.model.evaluation import TraceScores, auc_difference

    rng = np.random.default_rng(3)
    good = TraceScores(rng.normal(0, 1, 300), rng.normal(2, 1, 200))
    noise = TraceScores(rng.normal(0, 1, 300), rng.normal(0.2, 1, 200))
    lo, hi = auc_difference(good, noise, rounds=300)
    assert lo < hi < 0
    assert auc_difference(good, good, rounds=50) == [0.0, 0.0]


def test_a_combination_standardises_each_member_on_the_calibration_traces():
    from sysdream.model.evaluation import Combination, TraceScores, combine

    split = _synthetic_split(2)
    rng = np.random.default_rng(4)
    a = TraceScores(rng.normal(5, 2, 60), rng.normal(9, 2, 40), rng.normal(5, 2, 40))
    b = TraceScores(rng.normal(0, .1, 60), rng.normal(.3, .1, 40), rng.normal(0, .1, 40))
    z = Combination("z: {net} + b", ("{net}", "b"), (1.0, 1.0), "z")
    row, got = combine(z, "a", {"a": a, "b": b}, split, 0.999, {"a": 1.0, "b": 2.0})
    want = (a.normal - a.calibrate.mean()) / a.calibrate.std() + \
        (b.normal - b.calibrate.mean()) / b.calibrate.std()
    assert np.allclose(got.normal, want) and row.method == "z: a + b"
    assert row.train_seconds == 3.0
    assert row.fpr_at_bound == np.mean(got.normal > row.bound)
    lr = Combination("LR", ("{net}", "b"), (1.0, -1.0), "raw")
    _row, got = combine(lr, "a", {"a": a, "b": b}, split, 0.999, {"a": 1.0, "b": 2.0})
    assert np.allclose(got.attack, a.attack - b.attack)
    assert combine(lr, "a", {"a": a}, split, 0.999, {"a": 1.0}) is None


def test_other_aggregations_of_the_first_method_are_rows_of_their_own():
    from sysdream.model import evaluation as ev

    assert ev._sliding_max(np.array([0.0, 4.0, 0.0, 2.0, 2.0]), 2) == 2.0
    assert ev._sliding_max(np.array([1.0, 3.0]), 8) == 2.0
    assert ev.AGGREGATIONS["top-10% mean"](np.arange(20.0)) == 18.5
    split = _synthetic_split(5)
    report = ev.evaluate(split, [ev.BaselineMethod(lambda v: NGram(v), 16)], 0.999,
                         combinations=True)
    names = [r["method"] for r in report["results"]]
    assert names == ["n-gram", "n-gram, max", "n-gram, top-10% mean",
                     "n-gram, max of a sliding mean of 8"]
    assert all(len(r["roc_auc_minus_first"]) == 2 for r in report["results"][1:])
