"""Daemon test fixtures: a small detector trained on the synthetic corpus, and its bundle;
a journald in a private mount namespace; a cgroup of the test's own."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import normal_sequence, quick_settings, remove_cgroup, tiny_config
from harness import JournalNamespace

from sysdream.daemon.context.cgroups import mount_point


@pytest.fixture(scope="session")
def tiny_detector():
    from sysdream.model.detector import Detector

    rng = np.random.default_rng(11)
    train = [normal_sequence(rng, int(rng.integers(60, 200))) for _ in range(40)]
    calib = [normal_sequence(rng, int(rng.integers(60, 200))) for _ in range(20)]
    return Detector.train(train, calib, tiny_config(), quick_settings())


@pytest.fixture(scope="session")
def tiny_bundle(tiny_detector, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "model"
    tiny_detector.save(path)
    return path


@pytest.fixture
def journal():
    j = JournalNamespace()
    yield j
    j.close()


@pytest.fixture
def group():
    """A cgroup of the test's own (path relative to the cgroup v2 mount, id, dir)."""
    root = mount_point()
    if root is None:
        pytest.fail("no cgroup v2 hierarchy: the kernel's cgroup ids need one")
    rel = f"/sysdream-test-{uuid.uuid4().hex[:8]}"
    d = Path(f"{root}{rel}")
    d.mkdir()
    yield rel, d.stat().st_ino, d
    remove_cgroup(d)

