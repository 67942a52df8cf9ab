"""Incidents and their severity, the rate limits acting on them, and the evidence rule's
answers to evasion: filler between odd windows (issue 33 #9) and a thread group's exits
(issue 32 #6)."""

from __future__ import annotations

import numpy as np

from sysdream.daemon.alerting.incidents import (
    Agreement,
    Incidents,
    news_severity,
    sequence_severity,
)
from sysdream.daemon.alerting.ratelimit import RateLimiter
from sysdream.daemon.detect.evidence import Episodes, Evidence


def test_one_incident_per_key_within_the_span_then_a_close():
    inc = Incidents(span_s=60)
    key = ("prog", ("session", 7), "fp")
    a, state, _ = inc.add(key, "fp", "behaviour", "medium", "/usr/sbin/x", "write /etc/a",
                          {"write"}, now=0.0)
    assert state == "open" and a.id
    b, state, _ = inc.add(key, "fp", "behaviour", "medium", "/usr/sbin/x", "write /etc/b",
                          {"write"}, now=10.0)
    assert b is a and state == "update" and a.count == 2
    assert a.evidence == ["write /etc/a", "write /etc/b"]
    _, state, _ = inc.add(key, "fp", "behaviour", "high", "/usr/sbin/x", "peer public:4444",
                          {"peer"}, now=20.0)
    assert state == "raise" and a.severity == "high"
    # high already: a high event of a new kind alerts again, one of a kind it has does not
    _, state, _ = inc.add(key, "fp", "behaviour", "high", "/usr/sbin/x", "read /etc/shadow",
                          {"read", "write"}, now=21.0)
    assert state == "raise" and a.kinds == {"write", "peer", "read"}
    _, state, _ = inc.add(key, "fp", "behaviour", "high", "/usr/sbin/x", "read /etc/gshadow",
                          {"read"}, now=22.0)
    assert state == "update"
    _, state, _ = inc.add(key, "fp", "behaviour", "medium", "/usr/sbin/x", "listen 4444",
                          {"listen"}, now=23.0)
    assert state == "update"                         # a new kind below high: counted
    assert inc.expire(now=82.0) == []
    assert inc.expire(now=84.0) == [a] and not inc.open
    c, state, _ = inc.add(key, "fp", "behaviour", "medium", "/usr/sbin/x", "write /etc/c",
                          {"write"}, now=90.0)
    assert state == "open" and c.id != a.id


def test_severity_from_independent_evidence():
    ag = Agreement(span_s=60)
    web, shell, child = (100, 1), (200, 2), (300, 3)
    # a web application's sequence excursion alone: low
    assert sequence_severity(True, False, False, ag.add(web, [], "sequence", 0.0)) == "low"
    # its first child (news of the application's settled profile) agrees with the
    # application's own sequence excursion: high
    agree = ag.add(web, [], "child", 1.0)
    assert agree == {"sequence", "child"} and news_severity(True, "", agree) == "high"
    # the shell connecting out (news of the shell) agrees with its parent's news
    assert ag.add(shell, [web], "peer", 2.0) == {"child", "peer", "sequence"} - {"sequence"}
    # a sequence excursion of a busy parent's child does not make the parent's news high
    busy, kid = (400, 4), (401, 4)
    ag.add(kid, [busy], "sequence", 3.0)
    assert ag.add(busy, [], "write", 4.0) == {"write"}
    # news of one kind alone in another subtree: medium; unsettled: low
    assert news_severity(True, "", Agreement().add(child, [], "write", 0.0)) == "medium"
    assert news_severity(False, "", {"write"}) == "low"
    # always dangerous, whatever the profile
    assert news_severity(False, "module load", {"priv"}) == "high"
    # outside the span nothing agrees
    assert ag.add(shell, [web], "listen", 500.0) == {"listen"}


def test_a_high_incident_is_never_hidden_by_a_flood():
    """Past the ceiling 2,000 medium incidents are held back; a high one behind them
    goes out, and the first of each held fingerprint is kept whole for the summary."""
    rl = RateLimiter(burst=5, interval=60, ceiling=60)
    sent = sum(rl.allow(f"fp{i}", now=1.0, first={"n": i})[0] for i in range(2000))
    assert sent == 60
    assert rl.allow("real", now=1.0, high=True)[0]
    assert not rl.allow("real-medium", now=1.0, first={"n": -1})[0]
    held = rl.take_summary()
    assert len(held) == 1941 and all("first" in h for h in held)
    assert {h["first"]["n"] for h in held if h["fingerprint"].startswith("fp")} == \
        set(range(60, 2000))


def test_benign_filler_between_odd_windows_does_not_hide_them():
    """Odd windows (1.5 each: the no-bound rule's most) each followed by 8 benign windows
    (128 syscalls at a stride of 16): a sum of the last 8 never saw more than one; the
    older evidence, decaying, keeps them, and the third reaches 3."""
    ev = Evidence(bound=3.0, m=8, window_max=1.5)
    run = np.r_[1.5, np.zeros(8)]
    hits = [ev.add_many((1, 1), run) for _ in range(3)]
    assert hits[0] == hits[1] == [] and hits[2] and hits[2][0][1] >= 3.0
    # the same odd windows spread far apart (4 half-lives each) stay apart
    ev = Evidence(bound=3.0, m=8, window_max=1.5)
    far = np.r_[1.5, np.zeros(256)]
    assert not any(ev.add_many((1, 1), far) for _ in range(10))


def test_children_spaced_apart_still_form_an_episode():
    """Three children of one parent, each with one odd young window, 12 s apart (a fixed
    10 s span never held two of them): they add up."""
    ep = Episodes(bound=3.0, m=8)
    s = 1_000_000_000
    assert ep.add_many((1, 1), 11, np.array([1.5]), 0) == []
    assert ep.add_many((1, 1), 12, np.array([1.5]), 12 * s) == []
    hit = ep.add_many((1, 1), 13, np.array([1.5]), 24 * s)
    assert hit and hit[0][2] == [11, 12, 13]
    # ten minutes apart they do not
    ep = Episodes(bound=3.0, m=8)
    assert not any(ep.add_many((1, 1), 20 + k, np.array([1.5]), k * 600 * s)
                   for k in range(5))


def test_ten_thousand_threads_exiting_alike_count_once():
    """A thread group whose 10,000 threads each end with the same odd window: one
    window's worth, no alert; threads ending in different odd ways still add up."""
    ev = Evidence(bound=3.0, m=8, window_max=1.5)
    exit_window = np.array([0xABCDEF], np.uint64)
    assert not any(ev.add_many((1, 1), np.array([1.5]), "", exits=exit_window)
                   for _ in range(10_000))
    ev = Evidence(bound=3.0, m=8, window_max=1.5)
    assert any(ev.add_many((2, 2), np.array([1.5]), "", exits=np.array([k], np.uint64))
               for k in range(1, 4))


def test_a_thread_group_whose_threads_exit_alike_counts_once(tiny_detector, monkeypatch):
    """10,000 threads of one process, each making the same odd run and exiting (the
    bench's thread phase): through the real cutter and scorer, the group alerts no more
    than one such thread alone does; counted once per thread, as before, it alerts over
    and over."""
    from daemon_helpers import records, sample_attack

    from sysdream.daemon.detect.cutter import Cutter
    from sysdream.daemon.detect.queue import Counters, WindowQueue
    from sysdream.daemon.detect.scorer import Scorer, ScorerSettings
    from sysdream.daemon.detect.view import ModelView

    odd = sample_attack(7, 40)

    def run(threads: int) -> list:
        view = ModelView(tiny_detector)
        counters = Counters()
        queue = WindowQueue(10**7, counters)
        cutter = Cutter(view, queue, counters, 20000)
        found: list = []
        scorer = Scorer(view, queue, counters, found.append, ScorerSettings(evidence_k=3))
        for tid in range(5001, 5001 + threads):
            cutter.ingest(records(tid, odd, tgid=5000, exit=True))
        scorer.process(queue.take(10**9, 0.0))
        return found

    alone = len(run(1))
    assert len(run(10_000)) == alone
    real = Evidence.add_many
    monkeypatch.setattr(Evidence, "add_many",
                        lambda self, key, w, prog="", exits=None: real(self, key, w, prog))
    # the old count, on a tenth of the load, to show the test can fail
    assert len(run(1_000)) > 10 * max(alone, 1), "each exit counting: the test shows nothing"
