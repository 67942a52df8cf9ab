"""The model bundle: one directory that holds everything a detector needs, verified at load.

    manifest.json     format and version, the sha256 of every other file, the model id
    weights.pt        the network's state dict (torch.save; loaded with weights_only=True)
    vocabulary.json   token names in id order
    embedding.npy     the word2vec vectors the network started from (allow_pickle=False)
    network.json      NetworkConfig
    calibration.json  the Gaussian bound
    training.json     training settings, history, data fingerprint, library versions
    transfer.json     optional: the supervised transfer classifier (issue: train --labels)
    lineage.json      optional: the lineage profile of the baseline (daemon/lineage.py), kept
                      here as the daemon wrote it; the daemon checks it at load
    alerting.json     optional: the daemon's alert bound (daemon/evidence.py), likewise
    signature.json    optional, outside the manifest: a signature of manifest.json
                      (daemon/signing.py), carried as the daemon wrote it

The manifest's checksums catch corruption, truncation and edits of any one file; they are
not a signature (someone who can rewrite the manifest too is not stopped by it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

FORMAT = "sysdream-model"
FORMAT_VERSION = 1
FILES = ("weights.pt", "vocabulary.json", "embedding.npy", "network.json",
         "calibration.json", "training.json")
OPTIONAL = ("transfer.json", "lineage.json", "alerting.json")


class BundleError(Exception):
    """A bundle that cannot be used; the message names the file and the fix."""


@dataclass
class Bundle:
    network: dict
    vocabulary: list[str]
    embedding: np.ndarray
    calibration: dict
    training: dict
    state_dict: dict
    transfer: dict | None = None
    lineage: dict | None = None
    alerting: dict | None = None
    model_id: str = ""
    path: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import gensim
    import torch

    try:
        ours = version("sysdream")
    except PackageNotFoundError:
        ours = "unknown"
    return {"sysdream": ours, "torch": torch.__version__, "gensim": gensim.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save(bundle: Bundle, path: str | os.PathLike, sign=None) -> str:
    """Write the bundle atomically (a temporary directory renamed into place); returns the
    model id, the first 16 hex digits of the sha256 over the file checksums. `sign`: a
    function of the manifest's bytes whose result is written as signature.json (the
    daemon's, daemon/signing.py; the model room only carries it)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.save(bundle.state_dict, tmp / "weights.pt")
        np.save(tmp / "embedding.npy", np.asarray(bundle.embedding, np.float32),
                allow_pickle=False)
        docs = {"vocabulary.json": bundle.vocabulary, "network.json": bundle.network,
                "calibration.json": bundle.calibration, "training.json": bundle.training}
        if bundle.transfer is not None:
            docs["transfer.json"] = bundle.transfer
        if bundle.lineage is not None:
            docs["lineage.json"] = bundle.lineage
        if bundle.alerting is not None:
            docs["alerting.json"] = bundle.alerting
        for name, doc in docs.items():
            (tmp / name).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        sums = {name: _sha256(tmp / name) for name in sorted(os.listdir(tmp))}
        model_id = hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_id": model_id,
                    "created": bundle.created, "files": sums}
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        (tmp / "manifest.json").write_text(text)
        if sign is not None:
            (tmp / "signature.json").write_text(json.dumps(sign(text.encode())) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle.model_id, bundle.path = model_id, str(path)
    return model_id


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); retrain with `sysdream train`") from None
    except RecursionError:
        raise BundleError(f"{path}: JSON nested too deep to be a sysdream bundle file; "
                          "retrain with `sysdream train`") from None


def verify(path: str | os.PathLike) -> dict:
    """Check the manifest and every checksum; returns the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a model bundle directory; train one with "
                          f"`sysdream train -o {path}`")
    manifest = _json(path / "manifest.json") if (path / "manifest.json").exists() else None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: no sysdream manifest.json; not a model bundle")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version} is not the {FORMAT_VERSION} this "
                          "sysdream reads; retrain it with this version")
    sums = manifest.get("files")
    if not isinstance(sums, dict) or any(f not in sums for f in FILES):
        raise BundleError(f"{path}: manifest does not list every required file")
    for key in ("model_id", "created"):
        if not isinstance(manifest.get(key), str):
            raise BundleError(f"{path}: manifest has no {key}; retrain the bundle")
    for name, want in sorted(sums.items()):
        if name not in FILES + OPTIONAL:
            raise BundleError(f"{path}: manifest lists an unexpected file {name!r}")
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing; the bundle is incomplete")
        if _sha256(f) != want:
            raise BundleError(f"{path}: {name} does not match its sha256 in the manifest "
                              "(corrupted or modified); retrain or restore the bundle")
    return manifest


def load(path: str | os.PathLike) -> Bundle:
    import torch

    path = Path(path)
    manifest = verify(path)
    try:
        state = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
        embedding = np.load(path / "embedding.npy", allow_pickle=False)
    except Exception as exc:  # checksums matched, so this is an incompatible writer
        raise BundleError(f"{path}: weights unreadable by this torch/numpy ({exc}); "
                          "retrain the bundle with this version") from None
    transfer = _json(path / "transfer.json") if "transfer.json" in manifest["files"] else None
    lineage = _json(path / "lineage.json") if "lineage.json" in manifest["files"] else None
    alerting = _json(path / "alerting.json") if "alerting.json" in manifest["files"] \
        else None
    return Bundle(network=_json(path / "network.json"),
                  vocabulary=_json(path / "vocabulary.json"), embedding=embedding,
                  calibration=_json(path / "calibration.json"),
                  training=_json(path / "training.json"), state_dict=state, transfer=transfer,
                  lineage=lineage, alerting=alerting,
                  model_id=manifest["model_id"], path=str(path), created=manifest["created"])
