"""The network exported into the bundle (model.onnx) and scored by ONNX Runtime: the same
scores as torch, covered by the manifest, loaded without importing torch, and a bundle
without it still loading with torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sysdream.model import bundle as bundle_io
from sysdream.model.detector import Detector
from sysdream.model.export import TOLERANCE, relative_difference


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "model"
    trained.save(path)
    return path


def test_bundle_carries_the_checked_export(saved):
    manifest = bundle_io.verify(saved)
    assert "model.onnx" in manifest["files"]    # so the signature of the manifest covers it
    # an edited graph is refused like any other file
    copy = saved.parent / "edited"
    import shutil
    shutil.copytree(saved, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(bundle_io.BundleError, match="model.onnx does not match its sha256"):
        Detector.load(copy)


def test_onnx_scores_equal_torch(trained, saved, corpus):
    lean = Detector.load(saved, threads=2)
    full = Detector.load(saved, runtime="torch")
    assert (lean.runtime, full.runtime) == ("onnxruntime", "torch")
    seqs = corpus["normal"] + corpus["attack"]
    for batch in (1, 7, 1024):
        a = lean.window_scores(seqs, batch)
        b = full.window_scores(seqs, batch)
        assert len(a) == len(b) > 100
        worst = relative_difference(a, b)
        assert worst <= TOLERANCE, f"largest relative difference {worst:.2e} at batch {batch}"
    # explanations read the same (positions, expected syscalls, attention)
    names = corpus["attack"][0]
    x, y = lean.score_sequence(names), full.score_sequence(names)
    np.testing.assert_array_equal(x.exceeds, y.exceeds)
    np.testing.assert_allclose(x.scores.nll, y.scores.nll, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(x.scores.attention, y.scores.attention, rtol=1e-4, atol=1e-6)
    assert lean.explain(x, 0)["surprises"][0]["position"] == \
        full.explain(y, 0)["surprises"][0]["position"]


def test_detecting_load_and_score_do_not_import_torch(saved):
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from sysdream.model.detector import Detector
        from sysdream.model.scoring import score
        from sysdream.model.windows import cut
        det = Detector.load({str(saved)!r}, threads=2)
        s = det.score_sequence(np.array(["open", "read", "close"] * 20, dtype=object))
        w = cut(np.ones(det.cfg.window, np.int64), det.cfg.window, det.cfg.stride, det.cfg.task)
        one = score(det.net, w, 1, detail=False).score
        print(det.runtime, len(s.scores.score), bool(np.isfinite(one).all()),
              sorted(m for m in ("torch", "gensim", "scipy.stats", "matplotlib")
                     if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    runtime, windows, finite = out.stdout.split()[:3]
    assert (runtime, finite) == ("onnxruntime", "True") and int(windows) > 1, out.stdout
    assert out.stdout.strip().endswith("[]"), out.stdout


def test_bundle_without_export_loads_with_torch_and_a_note(saved, tmp_path):
    """A bundle written before the export (no model.onnx in its manifest) loads as before."""
    old = tmp_path / "old"
    import shutil
    shutil.copytree(saved, old)
    (old / "model.onnx").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    from sysdream.model.bundle import model_id_of
    manifest["model_id"] = model_id_of(manifest["files"])   # as an older sysdream wrote it
    (old / "manifest.json").write_text(json.dumps(manifest))
    notes: list[str] = []
    det = Detector.load(old, log=notes.append)
    assert det.runtime == "torch"
    assert len(notes) == 1 and "no ONNX export" in notes[0] and "\n" not in notes[0]
    with pytest.raises(bundle_io.BundleError, match="cannot score with ONNX Runtime"):
        Detector.load(old, runtime="onnx")
    # saved again, it gains the export
    det.save(tmp_path / "again")
    assert Detector.load(tmp_path / "again").runtime == "onnxruntime"


def test_lean_detector_saves_the_same_files(saved, tmp_path):
    """A detector loaded without torch writes its bundle back unchanged (weights and graph
    as read), e.g. when the daemon adds its alert bound."""
    det = Detector.load(saved)
    det.save(tmp_path / "copy")
    a, b = bundle_io.verify(saved)["files"], bundle_io.verify(tmp_path / "copy")["files"]
    assert a == b
