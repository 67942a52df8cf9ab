"""The scenario suite, short: the daemon learns the benign workload of bench/scenarios for
a minute, then every attack kind runs beside it. Real kernel, real journald, loopback only.

What this holds: each attack did what it came to do (an attack that failed would prove
nothing), the daemon learnt and trained on its own (with a lineage profile) and stopped
cleanly, every alert reached journald and the JSON lines alike, and detection works end to
end on a real attack: the reverse shell's interactive bash makes a syscall (pselect6) no
benign program made.
Accuracy figures come from the full run (bench/scenarios.py, README)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
sys.path.insert(0, str(BENCH))


def test_short_scenario_suite(ebpf_ready, tmp_path):
    import attacks
    from suite import Suite, table

    # learn_s holds the held-out quarter over 10 s (below); nothing here is measured over
    # the benign part alone, a few seconds of it start the workload before the attacks;
    # alerts are told apart by cgroup, not by time, so the attacks need not be far apart
    suite = Suite(tmp_path / "work", learn_s=60, benign_s=5, epochs=2, settle_s=3,
                  min_syscalls=50000, train_timeout_s=600)
    report = suite.run()
    print(table(report))

    assert report["daemon_exit"] == 0
    model = tmp_path / "work" / "state" / "model"
    assert (model / "lineage.json").is_file()
    replay = json.loads((model / "training.json").read_text())["heldout_alerts"]
    assert replay["seconds"] > 10 and replay["per_hour"] >= 0
    assert set(report["attacks"]) == set(attacks.KINDS)
    failed = {k: r["detail"] for k, r in report["attacks"].items() if not r["ran"]}
    assert not failed, f"attacks that did not do what they came to do: {failed}"

    # every alert reached both outputs, and came from a cgroup of the suite's
    assert report["alerts_in_journald"] == report["alerts_total"]
    groups = {"benign", *(f"attack-{k}" for k in attacks.KINDS)}
    assert {a["group"] for a in report["alerts"]} <= groups

    shell = report["attacks"]["reverse-shell"]
    assert shell["alerted"], table(report)
    assert 0 <= shell["time_to_alert_s"] < 4
    for r in report["attacks"].values():
        assert r["alerted"] == (r["time_to_alert_s"] is not None)
    assert report["lost_syscalls"] == 0
