import numpy as np
import pytest

from sysdream.model import metrics
from sysdream.model.baselines import DeepLog, NGram, Stide


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
