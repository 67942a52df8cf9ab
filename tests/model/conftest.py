"""Fixtures of the model tests: a synthetic corpus and a detector trained on it."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_corpus import attack_sequence, normal_sequence, quick_settings, tiny_config


@pytest.fixture(scope="session")
def corpus():
    rng = np.random.default_rng(7)
    return {"train": [normal_sequence(rng, int(rng.integers(60, 200))) for _ in range(40)],
            "calibrate": [normal_sequence(rng, int(rng.integers(60, 200))) for _ in range(20)],
            "normal": [normal_sequence(rng, int(rng.integers(60, 200))) for _ in range(20)],
            "attack": [attack_sequence(rng, int(rng.integers(60, 200))) for _ in range(20)]}


@pytest.fixture(scope="session")
def trained(corpus):
    from sysdream.model.detector import Detector

    return Detector.train(corpus["train"], corpus["calibrate"], tiny_config(), quick_settings())
