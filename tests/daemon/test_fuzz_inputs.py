"""Fuzzing what the daemon reads from files an operator or an attacker may have written
(hypothesis): the configuration (any TOML text, any table of values), a model bundle
whose JSON files (calibration, network, vocabulary, training, lineage, alert bound) hold
anything, the manifest resealed so the checksums pass, and alerts as `sysdream explain`
and `sysdream allow --alert-id` read them (any JSON, any fields, too deep, too long). The
property: a Config or a ConfigError; a usable model or a BundleError (exit 11) /
ValueError the service turns into one; an explanation or an error with its exit code;
never another exception.

`make test` runs a bounded number of examples; SYSDREAM_FUZZ_EXAMPLES=N runs N each."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysdream.daemon import config
from sysdream.daemon.config import ConfigError
from sysdream.daemon.detect.view import ModelView
from sysdream.model.bundle import BundleError, model_id_of
from sysdream.model.detector import Detector

EXAMPLES = int(os.environ.get("SYSDREAM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=10), kids, max_size=5), max_leaves=25)
TOML_VALUES = st.recursive(
    st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=3), max_leaves=10)


def keys_of(section: str) -> st.SearchStrategy:
    return st.sampled_from([*config.SCHEMA[section], "unknown_key"])


TABLES = st.dictionaries(
    st.sampled_from([*config.SCHEMA, "nosuch"]).map(lambda s: s.partition(".")[0]),
    st.dictionaries(st.sampled_from(sorted({k for ks in config.SCHEMA.values() for k in ks}
                                           | {"syslog", "webhook", "x"})),
                    TOML_VALUES | st.dictionaries(st.sampled_from(["enabled", "address",
                                                                   "url", "queue"]),
                                                  TOML_VALUES, max_size=3), max_size=4),
    max_size=4)


@FUZZ
@given(TABLES)
def test_any_table_of_values_gives_a_config_or_one_error(data):
    try:
        cfg = config.check(data, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml")
        return
    assert cfg.detection.evidence_windows >= 1


@FUZZ
@given(st.text(max_size=300))
def test_any_text_gives_a_config_or_one_error(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sysdream.toml"
        path.write_text(text)
        try:
            config.load(path, required=True)
        except ConfigError as exc:
            assert str(path) in str(exc)


BUNDLE_FILES = ["calibration.json", "network.json", "vocabulary.json", "training.json",
                "lineage.json", "alerting.json"]


def reseal(path: Path) -> None:
    """Rewrite the manifest's checksums for the files as they now are (what an attacker
    who can write the bundle can do)."""
    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                  for f in sorted(path.iterdir()) if f.name != "manifest.json"}
    if isinstance(m.get("model_id"), str):     # and the id the checksums give
        m["model_id"] = model_id_of(m["files"])
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def bundle_dir(tiny_detector, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "model"
    tiny_detector.save(path)
    return path


def tampered(bundle_dir: Path, name: str, doc) -> None:
    """A copy of the bundle with `name` holding `doc`, resealed, loaded and put to use."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model"
        shutil.copytree(bundle_dir, path)
        (path / name).write_text(json.dumps(doc))
        reseal(path)
        load_and_view(path)


def load_and_view(path: Path) -> None:
    try:
        det = Detector.load(path)
    except BundleError as exc:
        assert str(path) in str(exc)
        return
    try:
        view = ModelView(det)
    except ValueError:
        return                      # the service: "inconsistent bundle ...; retrain it"
    assert view.evidence_bound() > 0


@FUZZ
@given(st.sampled_from(BUNDLE_FILES), JSON)
def test_any_json_in_a_resealed_bundle_file_loads_or_is_refused(bundle_dir, name, doc):
    tampered(bundle_dir, name, doc)


@FUZZ
@given(st.sampled_from(["calibration.json", "alerting.json"]),
       st.sampled_from(["mean", "std", "confidence", "transform", "samples"]),
       SCALARS)
def test_a_bound_with_any_one_field_changed_loads_or_is_refused(bundle_dir, name, key,
                                                                value):
    """The near misses: a valid bound with one field swapped for anything (1e300, NaN,
    a string, a negative confidence)."""
    fit = {"mean": 0.1, "std": 0.5, "confidence": 0.999, "transform": "log",
           "ks_statistic": 0.05, "ks_pvalue": 0.5, "samples": 40}
    doc = {**fit, key: value} if name == "calibration.json" else \
        {"fit": {**fit, key: value}, "excursions_per_hour": 100.0, "seconds": 150.0}
    tampered(bundle_dir, name, doc)


# -- alerts as `sysdream explain` and `sysdream allow --alert-id` read them ------------
ALERT_FIELDS = ("context", "position", "novelty", "comm", "exe", "model_id",
                "evidence", "time_rfc3339", "cmdline", "pid", "SYSDREAM_SYSCALLS")
NAMES = st.lists(st.sampled_from(["read", "write", "openat", "close", "nosuch", ""]),
                 max_size=40).map(" ".join)
ALERTS = st.one_of(
    st.fixed_dictionaries({"kind": st.just("anomaly"), "syscalls": NAMES | JSON},
                          optional={k: JSON | NAMES for k in ALERT_FIELDS}),
    JSON)


def explained(bundle_dir: Path, text: str) -> None:
    """`sysdream explain --json FILE` on `text`: an explanation (exit 0) or one error the
    CLI turns into its exit code, never another exception."""
    import argparse

    from sysdream.daemon.commands.explain import run_explain
    from sysdream.daemon.exitcodes import Exit, exit_code_for
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "alert.jsonl"
        path.write_text(text)
        args = argparse.Namespace(json=str(path), cursor=None, model=str(bundle_dir),
                                  plot=None, config=None)
        try:
            assert run_explain(args) == 0
        except Exception as exc:   # noqa: BLE001 (the property: a documented code)
            assert exit_code_for(exc) not in (Exit.FAILURE, Exit.OK), repr(exc)


@FUZZ
@given(ALERTS)
def test_any_alert_explains_or_gives_one_error(bundle_dir, capsys, alert):
    explained(bundle_dir, json.dumps(alert) + "\n")
    capsys.readouterr()


def test_alerts_too_deep_or_too_long_give_one_error(bundle_dir, capsys):
    from sysdream.daemon.alerting.fields import MAX_ALERT_LINE
    for text in ("[" * 100_000 + "\n", '{"kind": "anomaly", "syscalls": "' + "read " *
                 (MAX_ALERT_LINE // 5) + '"}\n'):
        with pytest.raises(Exception) as got:
            with tempfile.TemporaryDirectory() as d:
                import argparse

                from sysdream.daemon.commands.explain import run_explain
                (Path(d) / "a").write_text(text)
                run_explain(argparse.Namespace(json=str(Path(d) / "a"), cursor=None,
                                               model=str(bundle_dir), plot=None,
                                               config=None))
        assert "not a JSON alert" in str(got.value), got.value
    capsys.readouterr()


@FUZZ
@given(st.lists(JSON | st.text(max_size=30), max_size=6), st.booleans())
def test_an_alert_id_is_found_among_any_lines_or_one_error(lines, present):
    from sysdream.daemon.alerting.allow import find_alert
    want = "5f0e2d7c-0000-4000-8000-000000000001"
    text = [json.dumps(v) if not isinstance(v, str) else v for v in lines]
    text = [t.replace("\n", " ") + (f" {want}" if i % 2 else "") for i, t in enumerate(text)]
    if present:
        text.append(json.dumps({"kind": "anomaly", "alert_id": want, "exe": "/bin/sh"}))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "alerts.jsonl"
        path.write_text("\n".join(text) + "\n")
        try:
            got = find_alert(want, str(path))
        except ValueError as exc:
            assert not present and want in str(exc)
            return
        assert present and got["alert_id"] == want
