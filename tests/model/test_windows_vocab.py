import numpy as np
import pytest

from sysdream.model.vocab import PAD, UNK, Vocabulary
from sysdream.model.windows import TASKS, Geometry, count, cut, cut_many, holdout


def test_vocabulary_reserves_padding_and_unknown():
    v = Vocabulary.build([np.array(["read", "read", "write"], dtype=object)])
    assert v.names[:2] == ["<pad>", "<unk>"] and v.names[2] == "read"
    ids = v.encode(np.array(["write", "execve", "read"], dtype=object))
    assert ids.tolist() == [3, UNK, 2]
    assert v.unknown(np.array(["execve", "read"], dtype=object)) == ["execve"]
    assert Vocabulary.from_json(v.to_json()).names == v.names
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.build([np.array([], dtype=object)])


@pytest.mark.parametrize("n", [1, 5, 8, 9, 31, 64, 100])
@pytest.mark.parametrize("task", ["predict-next", "reconstruct"])
def test_every_token_is_scored_once_or_more_and_in_place(n, task):
    p, s = 8, 8
    tokens = np.arange(2, n + 2)
    w = cut(tokens, p, s, task)
    assert len(w) == count(n, p, s)
    covered = np.zeros(n, int)
    for i in range(len(w)):
        real = w.tgt[i][w.mask[i]]
        assert real.tolist() == tokens[w.start[i]:w.start[i] + len(real)].tolist()
        covered[w.start[i]:w.start[i] + len(real)] += 1
        assert (w.tgt[i][~w.mask[i]] == PAD).all()
    assert (covered >= 1).all()


def test_context_and_previous_window():
    tokens = np.arange(2, 40)
    w = cut(tokens, 8, 8, "predict-next")
    # the context is the 8 syscalls before the target; the first has none
    assert (w.src[0] == PAD).all()
    assert w.src[1].tolist() == tokens[0:8].tolist()
    # prev is the window before the source: the previous window's source when s = p
    assert (w.prev[0] == PAD).all() and w.first[0]
    for i in range(1, len(w) - 1):
        assert w.prev[i].tolist() == w.src[i - 1].tolist()
    # the last window is aligned to the end; its prev is still the 8 syscalls before
    last = w.start[-1]
    assert w.prev[-1].tolist() == tokens[last - 16:last - 8].tolist()
    # with a shorter stride prev keeps its meaning
    w4 = cut(tokens, 8, 4, "predict-next")
    assert w4.prev[5].tolist() == tokens[w4.start[5] - 16:w4.start[5] - 8].tolist()
    r = cut(tokens, 8, 8, "reconstruct")
    assert (r.src == r.tgt).all()
    assert r.prev[2].tolist() == r.src[1].tolist()


def test_cut_many_keeps_sequences_apart():
    w = cut_many([np.arange(2, 20), np.array([], np.int64), np.arange(2, 5)], 8, 4,
                 "predict-next")
    assert set(w.seq.tolist()) == {0, 2}
    assert w.first.sum() == 2
    with pytest.raises(ValueError, match="task"):
        cut(np.arange(5), 8, 8, "summarise")


def test_holdout_splits_blocks_of_windows_and_keeps_their_context():
    """A host's recording is split by blocks of windows, not by sequence: every sequence of
    two blocks or more is partly learnt, the parts' targets never overlap, and a held-out
    window reads the syscalls really before it."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(2, 30, size=n) for n in (5, 90, 161, 400, 3000, 12000)]
    p = 16
    h = holdout(seqs, p, p, 8, "predict-next", 0.2, 0.1, seed=0)
    span = 10 * p
    assert sum(h.blocks) == sum(-(-len(s) // span) for s in seqs)
    share = round(0.2 * sum(h.blocks))  # less what went back to keep a sequence learnt
    assert share - len(seqs) <= h.blocks[2] <= share and h.blocks[1] >= 1
    for i, s in enumerate(seqs):
        if len(s) > span:
            assert i in set(h.fit.seq.tolist()), f"sequence {i} was held out whole"
    owner = {}
    for part, w in (("fit", h.fit), ("validation", h.validation), ("calibration",
                                                                     h.calibration)):
        assert len(w) > 0, part
        for k in range(len(w)):
            seq, start = int(w.seq[k]), int(w.start[k])
            real = np.nonzero(w.mask[k])[0]
            assert np.array_equal(w.tgt[k, real], seqs[seq][start + real])
            for j in real:
                assert owner.setdefault((seq, start + int(j)), part) == part
            if start >= p:  # the context is the sequence itself, not padding
                assert np.array_equal(w.src[k], seqs[seq][start - p:start])
    assert any(h.calibration.start >= p)
    again = holdout(seqs, p, p, 8, "predict-next", 0.2, 0.1, seed=0)
    assert np.array_equal(again.calibration.start, h.calibration.start)
    other = holdout(seqs, p, p, 8, "predict-next", 0.2, 0.1, seed=1)
    assert not np.array_equal(other.calibration.start, h.calibration.start) or \
        not np.array_equal(other.calibration.seq, h.calibration.seq)


@pytest.mark.parametrize("task", TASKS)
def test_geometry_windows_from_spans_match_cut(task):
    """The daemon and the fleet server rebuild windows from spans (lead + window tokens of
    a thread): the same windows as cutting the whole sequence."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 30, 75)
    g = Geometry(8, 4, task)
    whole = cut(tokens, 8, 4, task)
    padded = np.concatenate([np.full(g.lead, PAD), tokens, np.full(8, PAD)])
    spans = np.stack([padded[s:s + g.span] for s in whole.start])
    valid = np.minimum(len(tokens) - whole.start, 8)
    got = g.windows(spans, valid, whole.start)
    assert g.span == g.lead + 8 and g.lead == (16 if task == "predict-next" else 8)
    for f in ("src", "prev", "mask", "first", "start"):
        assert np.array_equal(getattr(got, f), getattr(whole, f)), f
    assert np.array_equal(np.where(whole.mask, whole.tgt, 0), got.tgt)
    with pytest.raises(ValueError):
        Geometry(8, 0, task)
