"""A network conditioned on the program (model/windows.condition): one program's normal is
not another's. Two programs, each with its own loop: under its own program a loop scores
low, under the other program high; the same network unconditioned cannot tell them apart."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_corpus import program_loop, quick_settings, tiny_config

from sysdream.model.detector import Detector
from sysdream.model.scoring import score
from sysdream.model.windows import COND_UNKNOWN, condition, cut_many


@pytest.fixture(scope="module")
def two_programs():
    rng = np.random.default_rng(3)
    seqs, conds = [], []
    for _ in range(30):
        seqs += [program_loop(rng, 160, "write"), program_loop(rng, 160, "sendto")]
        conds += ["@files", "@net"]
    seqs.append(program_loop(rng, 40, "write"))     # too little to learn a program from
    conds.append("@rare")
    cond = Detector.train(seqs, None, tiny_config(condition="decoder"),
                          quick_settings(epochs=20, patience=4), conds=conds)
    plain = Detector.train(seqs, None, tiny_config(), quick_settings(epochs=20, patience=4))
    return cond, plain, rng


def scores(det: Detector, seqs: list, program: str | None) -> np.ndarray:
    w = cut_many([det.vocab.encode(s) for s in seqs], det.cfg.window, det.cfg.stride,
                 det.cfg.task)
    if program is not None:
        w = condition(w, np.full(len(w), det.condition_id(program)))
    return score(det.net, w, 256, detail=False).score


def test_a_program_doing_anothers_work_stands_out_only_when_conditioned(two_programs):
    cond, plain, rng = two_programs
    files = [program_loop(rng, 160, "write") for _ in range(5)]
    net = [program_loop(rng, 160, "sendto") for _ in range(5)]
    own = np.r_[scores(cond, files, "@files"), scores(cond, net, "@net")]
    swapped = np.r_[scores(cond, files, "@net"), scores(cond, net, "@files")]
    b = cond.bound
    assert np.mean(b.exceeds(own)) < 0.05, "a program's own work alerts"
    # the windows that reach the loop's last call, in every sequence
    assert np.mean(b.exceeds(swapped)) > 0.3, "another program's work passes as normal"
    assert b.exceeds(swapped).reshape(10, -1).any(axis=1).all()
    # unconditioned, both loops are just normal
    assert np.mean(plain.bound.exceeds(plain.window_scores(files + net))) < 0.05
    # a program the model never saw reads as programs in general: its normal work passes
    assert np.mean(b.exceeds(scores(cond, files + net, "@new"))) < 0.2


def test_the_condition_is_in_the_vocabulary_the_bundle_and_offline_scoring(two_programs,
                                                                           tmp_path):
    cond, plain, rng = two_programs
    assert {COND_UNKNOWN, "@files", "@net"} <= set(cond.vocab.names)
    assert cond.condition_id("@gone") == cond.vocab.index[COND_UNKNOWN]
    assert "@rare" not in cond.vocab.names, "a program of 40 syscalls got a token"
    assert "condition" not in plain.cfg.to_json() and cond.cfg.to_json()["condition"]
    cond.save(tmp_path / "m")
    back = Detector.load(tmp_path / "m")
    assert back.cfg.condition and back.vocab.names == cond.vocab.names
    # offline scoring (eval, explain) knows no programs: the unknown program's token
    seq = [program_loop(rng, 80, "write")]
    assert np.allclose(back.window_scores(seq), scores(cond, seq, COND_UNKNOWN), atol=1e-5)


def test_a_conditioned_model_needs_a_program_per_sequence_and_predict_next():
    seqs = [program_loop(np.random.default_rng(1), 80, "write")] * 4
    with pytest.raises(ValueError, match="one program name per sequence"):
        Detector.train(seqs, None, tiny_config(condition="decoder"), quick_settings(epochs=1))
    with pytest.raises(ValueError, match="use task predict-next"):
        tiny_config(condition="head", task="reconstruct")


def test_an_explanation_says_the_network_read_the_program_token_at_the_head(two_programs):
    """The head of a conditioned window's source is the program's token (offline: the
    unknown program's), not the thread's syscall there: attention names what was read."""
    cond, plain, rng = two_programs
    names = np.array(program_loop(rng, 80, "write"), dtype=object)
    res = cond.score_sequence(names)
    i = len(res.scores.score) - 1
    seen = {}
    for top in (1, cond.cfg.window):
        for a in cond.explain(res, i, top=top).get("attention", []):
            seen[a["position"]] = a["syscall"]
    head = int(res.windows.start[i]) - cond.cfg.window
    assert seen, "the conditioned DReAM attends over its source"
    assert seen[head] == COND_UNKNOWN
    assert all(n != COND_UNKNOWN for p, n in seen.items() if p != head)
    # unconditioned, the same position is the thread's own syscall
    pres = plain.score_sequence(names)
    got = {a["position"]: a["syscall"] for a in
           plain.explain(pres, i, top=plain.cfg.window).get("attention", [])}
    assert got[head] == names[head]
