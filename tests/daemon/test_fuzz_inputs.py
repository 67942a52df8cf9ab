"""Fuzzing what the daemon reads from files an operator or an attacker may have written
(hypothesis): the configuration (any TOML text, any table of values) and a model bundle
whose JSON files (calibration, network, vocabulary, training, lineage, alert bound) hold
anything, the manifest resealed so the checksums pass. The property: a Config or a
ConfigError; a usable model or a BundleError (exit 11) / ValueError the service turns into
one; never another exception.

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
from sysdream.daemon.pipeline import ModelView
from sysdream.model.bundle import BundleError
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
