"""Configuration: the shipped default documents every key; bad files are refused with the
file, line, key and the expected form; `sysdream run` exits 12 on them before capture."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from speed import scaled

from sysdream.daemon import config
from sysdream.daemon.config import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "sysdream.toml"


def test_shipped_default_lists_every_key_with_the_code_defaults():
    data = tomllib.loads(SHIPPED.read_text())
    nested: dict = {}
    for section, keys in config.defaults().items():     # [alerts.syslog] nests in TOML
        top, _, sub = section.partition(".")
        (nested.setdefault(top, {}).setdefault(sub, {}) if sub
         else nested.setdefault(top, {})).update(keys)
    assert data == nested
    text = SHIPPED.read_text()
    lines = text.splitlines()
    starts = {ln.strip("[]"): n for n, ln in enumerate(lines) if ln.startswith("[")}
    for section, keys in config.SCHEMA.items():
        for key in keys:  # each key is documented by a comment right above it
            i = next(n for n, ln in enumerate(lines)
                     if n > starts[section] and ln.startswith(f"{key} ="))
            j = i - 1
            while j >= 0 and lines[j].split("=")[0].strip() in config.SCHEMA[section]:
                j -= 1
            assert lines[j].startswith("#"), f"[{section}] {key} has no comment above it"


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "sysdream.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_and_known_keys(tmp_path):
    p = write(tmp_path, "[detection]\nevidence_windows = 8\nevidence_window = 3\n")
    with pytest.raises(ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert f"{p}:3:" in msg and "'evidence_window'" in msg and "evidence_windows" in msg


def test_bad_value_names_line_and_expected_form(tmp_path):
    p = write(tmp_path, "# comment\n[capture]\nchunk = 48\n")
    with pytest.raises(ConfigError, match=r":3: \[capture\] chunk = 48: expected a power of two"):
        config.load(p)
    p = write(tmp_path, "[metrics]\nport = \"9477\"\n")
    with pytest.raises(ConfigError, match=r":2: \[metrics\] port = '9477': expected a TCP port"):
        config.load(p)
    p = write(tmp_path, "[alerts]\njournald = 1\n")
    with pytest.raises(ConfigError, match="true or false"):
        config.load(p)


def test_unknown_section_and_cross_key_rule(tmp_path):
    with pytest.raises(ConfigError, match=r":1: unknown section \[detect\]"):
        config.load(write(tmp_path, "[detect]\nx = 1\n"))
    with pytest.raises(ConfigError, match="at most 8 x evidence_windows"):
        config.load(write(tmp_path, "[detection]\nevidence_windows = 2\n"
                                    "evidence_exceedances = 16.5\n"))


def test_not_toml_and_missing_named_file(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        config.load(write(tmp_path, "[service]\nstate_directory = /var\n"))
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.toml", required=True)
    assert config.load(None).source in ("(defaults)", str(config.DEFAULT_PATH))


def test_overrides_are_checked_like_the_file():
    cfg = config.override(config.load(None), {("metrics", "port"): 1234,
                                              ("learning", "baseline_seconds"): None})
    assert cfg.metrics.port == 1234
    with pytest.raises(ConfigError, match="port = 70000"):
        config.override(cfg, {("metrics", "port"): 70000})


def test_set_overrides_any_key_read_as_toml_and_checked():
    got = config.parse_set(["detection.evidence_exceedances=4",
                            "alerts.syslog.address=127.0.0.1:514",
                            "capture.exclude_uids = [0, 33]", "alerts.journald=false"])
    assert got == {("detection", "evidence_exceedances"): 4,
                   ("alerts.syslog", "address"): "127.0.0.1:514",
                   ("capture", "exclude_uids"): [0, 33], ("alerts", "journald"): False}
    cfg = config.override(config.load(None), got)
    assert cfg.detection.evidence_exceedances == 4 and cfg.alerts_syslog.address \
        == "127.0.0.1:514"
    for bad, why in (("detection.nope=1", "no key 'nope' in \\[detection\\]"),
                     ("evidence_exceedances=1", "SECTION.KEY=VALUE"),
                     ("detection.confidence", "SECTION.KEY=VALUE")):
        with pytest.raises(ConfigError, match=why):
            config.parse_set([bad])
    with pytest.raises(ConfigError, match="confidence") as err:
        config.override(cfg, config.parse_set(["detection.confidence=2"]))
    # flags and --set are two layers of overrides: the source is named once
    assert str(err.value).count("command-line overrides") == 1


def test_run_set_is_refused_with_exit_12_and_one_line(tmp_path):
    out = run_cli("run", "--set", "metrics.prot=1")
    assert out.returncode == 12 and len(out.stderr.strip().splitlines()) == 1
    assert "no key 'prot' in [metrics]" in out.stderr


def run_cli(*args, user=None, caps=False):
    """The CLI, optionally as another user; `caps`: holding what the unit grants."""
    cmd = [sys.executable, "-m", "sysdream.daemon", *args]
    if user:
        grant = ["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"] if caps else []
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *grant,
               *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(120),
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_run_refuses_bad_config_with_exit_12_before_capture(tmp_path):
    p = write(tmp_path, "[capture]\nflush_age = 1\n")
    out = run_cli("run", "--config", str(p))
    assert out.returncode == 12
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key 'flush_age'" in lines[0] and f"{p}:2" in lines[0]


def test_run_refuses_unreadable_config_with_exit_12(tmp_path):
    p = write(tmp_path, "[metrics]\nport = 1\n")
    p.chmod(0o600)
    tmp_path.chmod(0o755)
    out = run_cli("run", "--config", str(p), user=65534)
    assert out.returncode == 12, out.stderr
    assert "cannot read the configuration (Permission denied)" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_run_refuses_a_state_directory_it_cannot_write_with_exit_14(tmp_path):
    """With the unit's capabilities (privileges come first, exit 3, without them)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    out = run_cli("run", "--state-dir", str(state), "--no-metrics", user=65534, caps=True)
    assert out.returncode == 14, out.stderr
    assert "Permission denied" in out.stderr and "StateDirectory=" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_configuration_reference_is_generated_from_the_schema_and_in_sync():
    from sysdream.daemon.commands import confref

    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert doc.read_text() == confref.reference(SHIPPED.read_text()), \
        "regenerate: .venv/bin/python -m sysdream.daemon.commands.confref > docs/configuration.md"
    notes = confref.comments(SHIPPED.read_text())
    for section, keys in config.SCHEMA.items():
        for key in keys:
            assert notes.get((section, key)), f"[{section}] {key} is not described"


def test_each_capture_filter_is_a_key_and_a_flag_that_give_the_same_settings():
    """probes/filters.py declares the filters once: each is a [capture] key, a flag of
    record, top, run and agent, and a CaptureSettings field (or resolves into one), and the
    file, --set and the flag all give the same CaptureSettings."""
    import dataclasses
    import json

    from sysdream.daemon.commands import cli
    from sysdream.probes.capture import CaptureSettings
    from sysdream.probes.filters import FILTERS

    fields = {f.name for f in dataclasses.fields(CaptureSettings) if f.default == ()}
    assert fields == {f.key for f in FILTERS if not f.into}
    assert all(f.into in fields for f in FILTERS if f.into)

    def sample(f) -> list:
        for values in ([4, 5], [33], ["sshd", "cron"], ["/nonexistent/sysdream-test-*"]):
            if all(isinstance(v, f.type) and f.accepts(v) for v in values):
                return values
        raise AssertionError(f"no sample value for {f.key}")

    flags = [a for f in FILTERS for v in sample(f) for a in (f.flag, str(v))]
    toml = "[capture]\n" + "".join(f"{f.key} = {json.dumps(sample(f))}\n" for f in FILTERS)
    parser = cli.build_parser()
    for verb in ("top", "run", "agent"):
        parser.parse_args([verb, *flags])
    via_flag = cli._settings(parser.parse_args(["record", "--seconds", "1", "-o", "t",
                                                *flags]))
    via_file = config.check(tomllib.loads(toml), "t", toml).capture_settings()
    via_run = config.override(config.load(None), cli.run_overrides(
        parser.parse_args(["run", *flags]))).capture_settings()
    via_set = config.override(config.load(None), config.parse_set(
        [f"capture.{f.key}={json.dumps(sample(f))}" for f in FILTERS])).capture_settings()
    assert via_flag == via_file == via_run == via_set
    for f in FILTERS:
        if not f.into:
            assert getattr(via_flag, f.key) == tuple(sample(f)), f.key
