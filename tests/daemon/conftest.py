"""Daemon test fixtures: a small detector trained on the synthetic corpus, and its bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from daemon_helpers import normal_sequence, quick_settings, tiny_config


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
