"""Bundles under faults, for real: a bundle replaced while it is read, a writer killed
with SIGKILL at any moment of its save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from synthetic_corpus import quick_settings, tiny_config

from sysdream.model import bundle
from sysdream.model.bundle import BundleError
from sysdream.model.detector import Detector


@pytest.fixture(scope="module")
def two(corpus):
    other = Detector.train(corpus["train"][:20], corpus["calibrate"], tiny_config(),
                           quick_settings(epochs=1, seed=5))
    return other


def _state(det: Detector) -> dict:
    return {k: v.detach().clone() for k, v in det.net.state_dict().items()}


def test_a_bundle_replaced_while_read_loads_as_one_bundle_or_is_refused(tmp_path, trained,
                                                                        two):
    path = tmp_path / "model"
    ids = {trained.save(path): _state(trained), two.save(path): _state(two)}
    assert len(ids) == 2
    stop = threading.Event()
    saved = [0]

    def writer():
        while not stop.is_set():
            for det in (trained, two):
                det.save(path)
                saved[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    loaded, refused = [], 0
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(loaded) < 100000:
            try:
                det = Detector.load(path, runtime="torch")   # its state_dict compared
            except BundleError as exc:
                assert "replaced while read" in str(exc) or "not a model bundle" in str(exc) \
                    or "no sysdream manifest" in str(exc), exc
                refused += 1
                continue
            loaded.append(det)
    finally:
        stop.set()
        t.join()
    assert saved[0] >= 10 and loaded, (saved, refused)
    for det in loaded:        # every load is one of the two bundles, whole
        want = ids[det.model_id]
        got = det.net.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), det.model_id
    assert not [n for n in os.listdir(tmp_path) if n != "model"]   # no temporary left


WRITER = textwrap.dedent("""
    import sys, time
    from sysdream.model.detector import Detector
    a, b = Detector.load(sys.argv[1]), Detector.load(sys.argv[2])
    print("ready", flush=True)
    while True:
        a.save(sys.argv[3]); b.save(sys.argv[3])
""")


def test_a_writer_killed_at_any_moment_leaves_a_whole_bundle(tmp_path, trained, two):
    """SIGKILL a process that saves bundles in a loop at 10 moments: the bundle path
    always holds one whole bundle (never a half, never nothing), and the next save clears
    the temporary directories the killed writers left."""
    a, b, path = tmp_path / "a", tmp_path / "b", tmp_path / "model"
    ids = {trained.save(a), two.save(b)}
    trained.save(path)
    rng = np.random.default_rng(1)
    leftovers = 0
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(a), str(b), str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert bundle.verify(path)["model_id"] in ids       # whole, and one of the two
        leftovers += len([n for n in os.listdir(tmp_path) if n.startswith(".model.tmp-")])
    assert leftovers > 0        # kills did land inside saves
    two.save(path)
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "model"]
    assert Detector.load(path).model_id == two.model_id
