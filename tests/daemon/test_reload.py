"""Honest reloads: a SIGHUP applies every key it can at once and says, one line each,
which changed keys wait for the next start (daemon/config.py RESTART_ONLY)."""

from __future__ import annotations

import dataclasses
import signal

import pytest
from harness import Daemon, wait_for

from sysdream.daemon import config


def test_the_table_names_keys_of_the_schema_and_sections_are_frozen():
    for section, keys in config.RESTART_ONLY.items():
        assert section in config.SCHEMA
        assert set(keys) <= set(config.SCHEMA[section]) | {"*"}, section
    cfg = config.load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.detection.queue_windows = 1
    assert cfg.capture.exclude_comms == () and cfg.alerts_syslog.queue == 1000
    assert config.applies_at("metrics", "port") == config.RESTART
    assert config.applies_at("detection", "cache_windows") == config.RESTART
    assert config.applies_at("detection", "queue_windows") == config.RELOAD


def test_restart_changes_are_found_and_kept_at_their_start_values():
    old = config.load(None)
    new = config.override(old, {("metrics", "port"): 9999, ("detection", "batch_windows"): 64,
                                ("fleet", "role"): "web"})
    assert old.restart_changes(new) == [("fleet", "role"), ("metrics", "port")]
    kept = new.keeping(old, old.restart_changes(new))
    assert kept.metrics.port == 9477 and kept.fleet.role == "default"
    assert kept.detection.batch_windows == 64
    assert old.restart_changes(kept) == []


def test_a_reload_applies_what_it_can_and_says_what_waits_for_the_next_start(
        ebpf_ready, tmp_path, tiny_bundle):
    cfg = tmp_path / "sysdream.toml"
    cfg.write_text("[detection]\nqueue_windows = 20000\ncache_windows = 200000\n"
                   "[metrics]\nexe_labels = 64\n")
    d = Daemon(["--config", str(cfg), "--model", str(tiny_bundle), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--comm", "sdquiet"], tmp_path)
    try:
        d.wait_attached()
        assert d.metric("sysdream_queue_capacity_windows") == 20000
        cfg.write_text("[detection]\nqueue_windows = 16384\ncache_windows = 1000\n"
                       "[metrics]\nexe_labels = 8\n")
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.metric("sysdream_queue_capacity_windows") == 16384, 30,
                 "the reloaded queue_windows in use\n" + d.stderr[-2000:])
        err = d.stderr
        assert "sysdream: [metrics] exe_labels changed: applies at the next start" in err
        assert "sysdream: [detection] cache_windows changed: applies at the next start" in err
        # applied keys and unchanged ones (the same --metrics-port) are not said
        assert "queue_windows changed" not in err and "port changed" not in err
        rc, _ = d.stop()
        assert rc == 0, d.stderr[-2000:]
    finally:
        d.kill()
