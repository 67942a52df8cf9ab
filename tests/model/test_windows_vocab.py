import numpy as np
import pytest

from sysdream.model.vocab import PAD, UNK, Vocabulary
from sysdream.model.windows import count, cut, cut_many


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
