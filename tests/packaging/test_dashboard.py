"""The Grafana dashboard (packaging/grafana/sysdream.json) shows what an SRE asks of it
(issue 34): a fleet overview, deliveries and queues per output, restarts, per-program
bounds, retraining, blind spots, memory against the unit's MemoryMax, annotations for
reloads and retrainings, and the dashboard's own range where a fixed hour was. Every
expression, annotations included, parses (promtool) and reads only documented metrics;
tests/daemon/test_monitoring.py runs the panels against a real daemon and Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "packaging" / "grafana" / "sysdream.json").read_text())
# Grafana's variables as a 1-hour view resolves them
VARIABLES = {"$job": "sysdream", "$instance": ".*", "$__rate_interval": "1m",
             "$__range": "1h"}


def panel_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in DASHBOARD["panels"] for t in p.get("targets", [])]


def annotation_exprs() -> list[tuple[str, str]]:
    return [(a["name"], a["expr"]) for a in DASHBOARD["annotations"]["list"]]


def metrics_read(expr: str) -> set[str]:
    """sysdream's and prometheus-client's metric names in an expression, as docs/metrics.md
    lists them (a histogram by its family, a counter without _total)."""
    names = set(re.findall(r"\b((?:sysdream|process)_[a-z_]+)\b", re.sub(r'"[^"]*"', "", expr)))
    return {re.sub(r"(_bucket|_sum|_count|_total)$", "", n) for n in names}


def documented() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return {re.sub(r"_total$", "", m)
            for m in re.findall(r"^\| `((?:sysdream|process)_[a-z_]+)` \|", text, re.M)}


def test_every_expression_parses_and_reads_documented_metrics(tmp_path):
    exprs = panel_exprs() + annotation_exprs()
    known = documented()
    for title, expr in exprs:
        assert metrics_read(expr) and metrics_read(expr) <= known, \
            f"{title}: {expr} reads {metrics_read(expr) - known}"
    # promtool parses each as a recording rule, Grafana's variables filled in
    rules = []
    for i, (_, expr) in enumerate(exprs):
        for k in sorted(VARIABLES, key=len, reverse=True):
            expr = expr.replace(k, VARIABLES[k])
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:expr{i}", "expr": expr})
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_fixed_hour_or_day_window_is_left():
    """A stat or bar over the last hour whatever the range picked: the range is $__range,
    a rate's window $__rate_interval."""
    fixed = [(t, e) for t, e in panel_exprs() if re.search(r"\[\d+[smhdw]\]", e)]
    assert not fixed, fixed
    assert sum("$__range" in e for _, e in panel_exprs()) >= 10


def test_the_dashboard_shows_what_the_sre_asks_for():
    read = set().union(*(metrics_read(e) for _, e in panel_exprs()))
    for metric in ("sysdream_fleet_agent_info",                       # fleet overview
                   "sysdream_alert_deliveries", "sysdream_alert_queue",  # per output
                   "process_start_time_seconds",                        # restarts
                   "sysdream_program_alert_bound", "sysdream_retraining_state",
                   "sysdream_threads_evicted", "sysdream_processes_evicted",
                   "sysdream_record_gaps", "sysdream_context_records_lost",
                   "process_resident_memory_bytes"):
        assert metric in read, metric
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert rows[0] == "Fleet overview" and {"Outputs", "Blind spots"} <= set(rows)
    notes = {name: expr for name, expr in annotation_exprs()}
    assert "sysdream_model_reloads_total" in notes["Reloads"]
    assert "sysdream_retrainings_total" in notes["Retrainings"]


def test_the_memory_panel_draws_the_units_memory_max():
    unit = (ROOT / "systemd" / "sysdream.service").read_text()
    size, suffix = re.search(r"^MemoryMax=(\d+)([KMG]?)$", unit, re.M).groups()
    limit = int(size) * 1024 ** " KMG".index(suffix or " ")
    (mem,) = [p for p in DASHBOARD["panels"]
              if any("process_resident_memory_bytes" in t["expr"] for t in p.get("targets", []))]
    defaults = mem["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [s["value"] for s in defaults["thresholds"]["steps"]][-1] == limit


def test_panels_have_unique_ids_and_do_not_overlap():
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, (p["title"], taken.get((x, y)))
                taken[(x, y)] = p["title"]
