"""Signed model bundles (daemon/signing.py): keys made by `sysdream keygen`, bundles signed
by `sysdream train --sign`, and a daemon with [service] trusted_keys that runs only a
bundle signed by a trusted key: an unsigned one, one signed by another key, or one whose
manifest was changed and resealed after signing is refused at start (exit 11) and at a
reload (the running model stays)."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from harness import Daemon, wait_for
from speed import scaled

from sysdream.daemon import signing
from sysdream.model.bundle import BundleError


def sysdream(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysdream.daemon", *map(str, args)],
                          capture_output=True, text=True, timeout=scaled(timeout))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    signing.keygen(d, "build")
    signing.keygen(d, "other")
    return d


def signed_copy(detector, path, key) -> str:
    return detector.save(path, signing.signer(key))


def test_keygen_writes_a_private_key_only_root_reads_and_never_overwrites(tmp_path):
    r = sysdream("keygen", "-o", tmp_path / "k", "--name", "ci")
    assert r.returncode == 0, r.stderr
    key, pub = tmp_path / "k" / "ci.key", tmp_path / "k" / "ci.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert pub.read_text().startswith("sysdream-ed25519 ") and pub.read_text().endswith(" ci\n")
    before = key.read_bytes()
    again = sysdream("keygen", "-o", tmp_path / "k", "--name", "ci")
    assert again.returncode == 12 and "never overwritten" in again.stderr
    assert "Traceback" not in again.stderr and key.read_bytes() == before
    bad = sysdream("keygen", "-o", tmp_path / "k", "--name", "../x")
    assert bad.returncode == 12 and "Traceback" not in bad.stderr


def test_a_signature_verifies_under_its_key_only_and_not_after_a_reseal(tmp_path, keys,
                                                                       tiny_detector):
    trusted = dict([signing.load_public(keys / "build.pub")])
    model = tmp_path / "model"
    model_id = signed_copy(tiny_detector, model, keys / "build.key")
    assert signing.check(model, trusted) == model_id
    with pytest.raises(BundleError, match="not among"):
        signing.check(model, dict([signing.load_public(keys / "other.pub")]))
    # someone who can write the bundle changes a file and reseals the manifest
    import hashlib
    m = json.loads((model / "manifest.json").read_text())
    (model / "training.json").write_text("{}")
    m["files"]["training.json"] = hashlib.sha256(b"{}").hexdigest()
    (model / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="model_id is not the one its checksums give"):
        signing.check(model, trusted)
    # ... and recomputes the model id as well: the signature still does not cover it
    from sysdream.model.bundle import model_id_of
    m["model_id"] = model_id_of(m["files"])
    (model / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not match"):
        signing.check(model, trusted)
    (model / "signature.json").unlink()
    with pytest.raises(BundleError, match="unsigned"):
        signing.check(model, trusted)
    (model / "signature.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="not an Ed25519 signature"):
        signing.check(model, trusted)


def test_train_signs_and_a_bad_key_stops_it_before_training(tmp_path, keys):
    from daemon_helpers import sample_normal

    data = tmp_path / "normal"
    data.mkdir()
    from sysdream.probes import syscalls
    for i in range(6):   # ADFA-LD's format: i386 numbers, one trace a file
        nums = syscalls.number_array(list(sample_normal(i, 120)), "i386")
        (data / f"t{i}.txt").write_text(" ".join(map(str, nums)))
    tiny = ["--epochs", "1", "--hidden", "8", "--embed", "8", "--window", "8"]
    r = sysdream("train", "--input", f"adfa:{data}", "-o", tmp_path / "m", "--sign",
                 keys / "build.key", *tiny, timeout=300)
    assert r.returncode == 0, r.stderr
    assert signing.check(tmp_path / "m", dict([signing.load_public(keys / "build.pub")]))
    (keys / "build.pub").chmod(0o600)    # a key file's mode is checked first
    bad = sysdream("train", "--input", f"adfa:{data}", "-o", tmp_path / "m2", "--sign",
                   keys / "build.pub", *tiny)
    assert bad.returncode == 12 and "not an Ed25519 private key" in bad.stderr
    assert "epoch" not in bad.stderr and not (tmp_path / "m2").exists()


def config_with(tmp_path, text: str):
    p = tmp_path / "sysdream.toml"
    p.write_text(text)
    return p


def test_run_refuses_an_unsigned_or_foreign_bundle_and_a_learner_without_a_key(
        tmp_path, keys, tiny_bundle, tiny_detector):
    cfg = config_with(tmp_path, f'[service]\ntrusted_keys = ["{keys}/build.pub"]\n')
    base = ["run", "--config", cfg, "--state-dir", tmp_path / "state", "--no-metrics",
            "--no-journald"]
    unsigned = sysdream(*base, "--model", tiny_bundle)
    assert unsigned.returncode == 11 and "unsigned" in unsigned.stderr
    assert "Traceback" not in unsigned.stderr and len(unsigned.stderr.splitlines()) == 1
    signed_copy(tiny_detector, tmp_path / "foreign", keys / "other.key")
    foreign = sysdream(*base, "--model", tmp_path / "foreign")
    assert foreign.returncode == 11 and "not among [service] trusted_keys" in foreign.stderr
    learner = sysdream(*base)
    assert learner.returncode == 12 and "signing_key" in learner.stderr
    cfg.write_text(f'[service]\ntrusted_keys = ["{keys}/build.key"]\n')
    notakey = sysdream(*base, "--model", tiny_bundle)
    assert notakey.returncode == 12 and "not a sysdream public key" in notakey.stderr


def test_a_signed_model_runs_and_an_unsigned_replacement_is_refused_at_reload(
        ebpf_ready, tmp_path, keys, tiny_detector, tiny_bundle):
    model = tmp_path / "model"
    model_id = signed_copy(tiny_detector, model, keys / "build.key")
    cfg = config_with(tmp_path, f'[service]\ntrusted_keys = ["{keys}/build.pub"]\n')
    d = Daemon(["--config", str(cfg), "--model", str(model), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--comm", "sdwork"], tmp_path)
    try:
        d.wait_attached()
        shutil.rmtree(model)
        shutil.copytree(tiny_bundle, model)             # checksums fine, no signature
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.metric('sysdream_model_reloads_total{result="failed"}') == 1, 30,
                 "the refused reload\n" + d.stderr)
        assert "unsigned" in d.stderr
        assert any(model_id in k for k in d.metrics() if k.startswith("sysdream_model_info"))
        rc, _ = d.stop()
        assert rc == 0
    finally:
        d.kill()
