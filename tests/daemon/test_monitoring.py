"""The monitoring that ships with sysdream (packaging/prometheus, packaging/grafana): the
alert rules pass promtool's checks and their unit tests, and every PromQL expression of
the dashboard and the rules, evaluated by a real Prometheus scraping a real daemon that
has detected something, names only metrics the daemon exports (no typo'd name) and, for
the dashboard, returns data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from daemon_helpers import config
from harness import BENIGN, ODD, Daemon, Prometheus, run_script, wait_for, workload
from speed import scaled

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
RULES = PACKAGING / "prometheus" / "sysdream-rules.yml"
DASHBOARD = PACKAGING / "grafana" / "sysdream.json"
# Grafana's variables, as the dashboard's defaults resolve them
VARIABLES = {"$job": "sysdream", "$instance": ".*", "$__rate_interval": "1m",
             "$__range": "1h"}
# names that are not metrics in an expression: functions, keywords, label names
NOT_METRICS = {"by", "on", "and", "or", "unless", "without", "ignoring", "group_left",
               "group_right", "bool", "offset"}


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]
    out += [(v["name"], v["definition"]) for v in d["templating"]["list"]
            if v.get("definition")]
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def resolve(expr: str) -> str:
    """The PromQL Prometheus is asked for: Grafana's variables filled in; for a variable's
    label_values(SELECTOR, LABEL), the selector."""
    if expr.startswith("label_values("):
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    for k in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(k, VARIABLES[k])
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (histogram series by their family's name)."""
    expr = re.sub(r'"[^"]*"', '""', expr)                  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)                    # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                   # ranges
    expr = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?!\s*\()", expr))
    return {n for n in names if n not in NOT_METRICS and not n.startswith("__")}


def families(port: int) -> set[str]:
    """The series names the daemon's exposition declares (# TYPE), histograms' and
    counters' series included, whether or not a labelled one has a sample yet."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=scaled(5)) as r:
        text = r.read().decode()
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                        "summary": ["_sum", "_count"]}.get(kind, [])
            out |= {name, *(name + s for s in suffixes)}
    return out


def promtool_checks(rules: Path, count: int) -> list[tuple[str, str]]:
    """promtool's check of a rules file (`count` rules) and its unit tests (RULES.test.yml),
    one for each alert; the (alert, expression) pairs."""
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True, timeout=scaled(60))
    assert check.returncode == 0 and f"SUCCESS: {count} rules found" in check.stdout, \
        check.stdout
    tests = rules.with_suffix(".test.yml")
    unit = subprocess.run(["promtool", "test", "rules", tests.name], cwd=rules.parent,
                          capture_output=True, text=True, timeout=scaled(120))
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    doc = yaml.safe_load(rules.read_text())
    exprs = [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]
    alerts = {name for name, _ in exprs}
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert tested == alerts, f"rules without a unit test: {alerts - tested}"
    return exprs


def test_rules_pass_promtool_checks_and_their_unit_tests():
    assert promtool_checks(RULES, 18) == rule_exprs()


def test_the_fleet_rules_pass_promtool_and_read_only_documented_fleet_metrics():
    """The fleet's rules (agents and server): promtool's checks and unit tests, one for
    each alert, and every metric they read is in docs/metrics.md's "Fleet agent" or
    "Fleet server" table, which test_fleet.py holds equal to what the agent and the server
    export."""
    from test_metrics_doc import documented
    rules = promtool_checks(RULES.with_name("sysdream-fleet-rules.yml"), 5)
    known = documented("Fleet agent") | documented("Fleet server")
    for name, expr in rules:
        names = {m[:-6] if m.endswith("_total") else m for m in metric_names(expr)}
        assert names and names <= known, f"{name} reads {names - known}"


def test_the_name_parser_finds_a_typo():
    """The check below is only as good as this: a misspelt metric is a name of its own."""
    assert metric_names('sum by (exe) (rate(sysdream_alert_total{job="x"}[1m]))') == \
        {"sysdream_alert_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m]))) > "
                        "on (instance) 10 * (b > 1 or c * 0 + 1)") == {"a_bucket", "b", "c"}


def test_every_dashboard_and_rule_expression_reads_what_the_daemon_exports(
        ebpf_ready, tmp_path, tiny_bundle):
    prog = workload(tmp_path)
    (tmp_path / "allowed").mkdir()
    allowed = workload(tmp_path / "allowed")          # the same name, another executable
    state = tmp_path / "state"
    allow = subprocess.run([sys.executable, "-m", "sysdream.daemon", "allow", "--exe",
                            str(allowed), "--state-dir", str(state)], capture_output=True,
                           text=True, timeout=scaled(60))
    assert allow.returncode == 0, allow.stderr
    # the dashboard's retraining and per-program bound panels read detection internals,
    # which an operator serves on purpose ([metrics] detection_internals)
    # incidents of a second and a burst of one: each odd run below (one fingerprint)
    # opens its own incident, and the limit holds the second and third back
    cfg = config(tmp_path, "[metrics]\ndetection_internals = true\n[alerts]\n"
                 "incident_span_s = 1\nrate_limit_burst = 1\n")
    d = Daemon(["--config", str(cfg), "--model", str(tiny_bundle), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--json-lines",
                str(tmp_path / "alerts.jsonl"), "--comm", "sdwork"], tmp_path)
    prom = Prometheus(tmp_path, f"127.0.0.1:{d.port}")
    try:
        d.wait_attached()
        run_script(prog, BENIGN, 3)
        for _ in range(3):                       # alerts, some held back by the rate limit
            run_script(prog, ODD)
            time.sleep(1.5)
        run_script(allowed, ODD)                 # alerts an allow entry holds back
        wait_for(lambda: d.metric("sysdream_detection_latency_seconds_count") >= 1, 60,
                 "an alert\n" + d.stderr[-2000:])
        wait_for(lambda: any(k.startswith("sysdream_alerts_allowed_total") for k in d.metrics()),
                 30, "an allowed alert")
        run_script(prog, BENIGN)
        exported = families(d.port) | {"up"}       # "up": Prometheus's own, per target
        # an agent's own (the fleet overview; test_fleet.py holds them to what it exports)
        from test_metrics_doc import documented
        exported |= {m + s for m in documented("Fleet agent") for s in ("", "_total")}
        for name, expr in rule_exprs() + dashboard_exprs():
            unknown = {m for m in metric_names(resolve(expr)) if m not in exported}
            assert not unknown, f"{name}: {expr} reads {unknown}, which is not exported"

        # every dashboard expression returns data once Prometheus has a few scrapes
        wait_for(lambda: prom.query('count_over_time(up{job="sysdream"}[1m]) >= 5'), 60,
                 "five scrapes")
        for title, expr in dashboard_exprs():
            query = resolve(expr)
            got = wait_for(lambda q=query: prom.query(q), 20,
                           f"data for panel {title!r}: {query}")
            assert got, title
        for name, expr in rule_exprs():                  # each parses and evaluates
            assert prom.status(resolve(expr)) == "success", f"{name}: {expr}"
        rc, _ = d.stop()
        assert rc == 0
    finally:
        d.kill()
        prom.close()
