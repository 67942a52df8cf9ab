"""The model bundle: one directory that holds everything a detector needs, verified at load.

    manifest.json     format and version, the sha256 of every other file, the model id
    weights.pt        the network's state dict (torch.save; loaded with weights_only=True)
    vocabulary.json   token names in id order
    embedding.npy     the word2vec vectors the network started from (allow_pickle=False)
    network.json      NetworkConfig
    calibration.json  the Gaussian bound
    training.json     training settings, history, data fingerprint, library versions
    transfer.json     optional: the supervised transfer classifier (issue: train --labels)
    lineage.json      optional: the lineage profile of the baseline
                      (daemon/training/profile.py), kept here as the daemon wrote it; the
                      daemon checks it at load
    alerting.json     optional: the daemon's alert bound (daemon/detect/evidence.py), likewise
    model.onnx        optional: the network exported at training time (model/export.py),
                      scored by ONNX Runtime without torch; a bundle without it loads with
                      torch
    signature.json    optional, outside the manifest: a signature of manifest.json
                      (daemon/signing.py), carried as the daemon wrote it

The manifest's checksums catch corruption, truncation and edits of any one file; they are
not a signature (someone who can rewrite the manifest too is not stopped by it).

A bundle is written into a temporary directory beside its place and swapped in whole
(renameat2 RENAME_EXCHANGE where the filesystem has it): a reader sees the old bundle or
the new one, and `sysdream train` killed at any moment leaves no half bundle there. A
reader takes every file through one descriptor of the directory, each read once, checked
against the manifest and parsed from those same bytes: a bundle replaced while it is read
(a reload racing a training) loads as one bundle or is refused, never as a mix of two.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

FORMAT = "sysdream-model"
FORMAT_VERSION = 1
FILES = ("weights.pt", "vocabulary.json", "embedding.npy", "network.json",
         "calibration.json", "training.json")
OPTIONAL = ("transfer.json", "lineage.json", "alerting.json", "model.onnx")
MAX_FILE = {"weights.pt": 1 << 30, "embedding.npy": 256 << 20,   # bytes, read before parsing
            "model.onnx": 1 << 30}
MAX_JSON = 64 << 20
_TMP = ".tmp-"      # a temporary bundle: .NAME.tmp-PID-XXXX beside NAME


class BundleError(Exception):
    """A bundle that cannot be used; the message names the file and the fix."""


@dataclass
class Bundle:
    network: dict
    vocabulary: list[str]
    embedding: np.ndarray
    calibration: dict
    training: dict
    state_dict: dict | None         # None: loaded without torch (`weights` holds the file)
    transfer: dict | None = None
    lineage: dict | None = None
    alerting: dict | None = None
    model_id: str = ""
    path: str = ""
    onnx: bytes | None = None       # model.onnx
    weights: bytes | None = None    # weights.pt as read, written back as it was
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP}{os.getpid()}-", dir=path.parent))
    try:
        if bundle.state_dict is not None:
            import torch

            torch.save(bundle.state_dict, tmp / "weights.pt")
        else:   # loaded without torch: the file as it was read
            (tmp / "weights.pt").write_bytes(bundle.weights)
        if bundle.onnx is not None:
            (tmp / "model.onnx").write_bytes(bundle.onnx)
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
        _fsync_tree(tmp)
        install(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle.model_id, bundle.path = model_id, str(path)
    return model_id


def install(folder: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the bundle directory `folder` at `path` (same filesystem) in one step: swapped
    with the bundle there, which is then removed; where the filesystem cannot swap, the old
    one is moved aside first (a reader may then find none for an instant, never a half)."""
    folder, path = Path(folder), Path(path)
    if path.exists() and _exchange(folder, path):
        shutil.rmtree(folder, ignore_errors=True)      # the old bundle, now at folder
        return
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        folder.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        folder.rename(path)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): True when swapped, False where the kernel or the
    filesystem cannot."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(folder: Path) -> None:
    """Every file and the directory on disk before the swap: a crash right after it
    leaves the new bundle whole, not files of length zero."""
    for name in os.listdir(folder):
        fd = os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale(path: Path) -> None:
    """Temporary bundles of writers that died (SIGKILL during `sysdream train`)."""
    prefix = f".{path.name}{_TMP}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path.parent / name, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_json(where: str, data: bytes):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: unreadable ({exc}); retrain with `sysdream train`") from None
    except RecursionError:
        raise BundleError(f"{where}: JSON nested too deep to be a sysdream bundle file; "
                          "retrain with `sysdream train`") from None


class _Snapshot:
    """The files of one bundle directory, read through one descriptor of it, each once."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise BundleError(f"{path}: not a model bundle directory; train one with "
                              f"`sysdream train -o {path}`") from None
        self.files: dict[str, bytes] = {}

    def close(self) -> None:
        os.close(self.fd)

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when it is not there."""
        limit = MAX_FILE.get(name, MAX_JSON)
        try:
            # O_NONBLOCK: a FIFO planted in the bundle must not hang the reader
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise BundleError(f"{self.path}: {name} is a symbolic link; a bundle holds "
                                  "its own files (copy them in)") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{self.path}: {name} is not a regular file")
            if st.st_size > limit:
                raise BundleError(f"{self.path}: {name} is {st.st_size} bytes, over the "
                                  f"{limit} a bundle file may hold; retrain the bundle")
            parts, left = [], limit + 1
            while left > 0 and (part := os.read(fd, min(left, 1 << 20))):
                parts.append(part)
                left -= len(part)
        finally:
            os.close(fd)
        data = b"".join(parts)
        if len(data) > limit:
            raise BundleError(f"{self.path}: {name} grew over {limit} bytes while read")
        self.files[name] = data
        return data


def verify(path: str | os.PathLike) -> dict:
    """Check the manifest and every checksum; returns the manifest."""
    return _verified(Path(path))[0]


def model_id_of(sums: dict) -> str:
    """The model id a manifest's checksums give (as `save` computes it)."""
    return hashlib.sha256(json.dumps(sums, sort_keys=True).encode()).hexdigest()[:16]


def read_verified(path: str | os.PathLike, extra: tuple[str, ...] = ()
                  ) -> tuple[bytes, dict[str, bytes]]:
    """The manifest's bytes and every file's, each read once and checked, plus the
    `extra` files outside the manifest (a signature) read through the same descriptor:
    what a caller verifies is then exactly what it loads (`copy_to`)."""
    return _verified(Path(path), extra)


def copy_to(files: dict[str, bytes], manifest: bytes, folder: str | os.PathLike) -> None:
    """Write checked bytes into a new private folder, to load from there."""
    folder = Path(folder)
    for name, data in [*files.items(), ("manifest.json", manifest)]:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _verified(path: Path, extra: tuple[str, ...] | None = None):
    """The manifest and the bytes of every file it lists, each checked against its sha256
    (with `extra`: the manifest's bytes instead, and those files too where present)."""
    snap = _Snapshot(path)
    try:
        raw = snap.read("manifest.json")
        manifest = _parse_json(f"{path}/manifest.json", raw) if raw is not None else None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{path}: no sysdream manifest.json; not a model bundle")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{path}: bundle format {version} is not the {FORMAT_VERSION} "
                              "this sysdream reads; retrain it with this version")
        sums = manifest.get("files")
        if not isinstance(sums, dict) or any(f not in sums for f in FILES):
            raise BundleError(f"{path}: manifest does not list every required file")
        for key in ("model_id", "created"):
            if not isinstance(manifest.get(key), str):
                raise BundleError(f"{path}: manifest has no {key}; retrain the bundle")
        files = {}
        for name, want in sorted(sums.items()):
            if name not in FILES + OPTIONAL:
                raise BundleError(f"{path}: manifest lists an unexpected file {name!r}")
            data = snap.read(name)
            if data is None:
                raise BundleError(f"{path}: {name} is missing; the bundle is incomplete (or "
                                  "was replaced while read: load it again)")
            if hashlib.sha256(data).hexdigest() != want:
                raise BundleError(f"{path}: {name} does not match its sha256 in the manifest "
                                  "(corrupted or modified); retrain or restore the bundle")
            files[name] = data
        if manifest["model_id"] != model_id_of(sums):
            raise BundleError(f"{path}: the manifest's model_id is not the one its checksums "
                              "give (edited); retrain or restore the bundle")
        if extra is not None:
            for name in extra:
                data = snap.read(name)
                if data is not None:
                    files[name] = data
            return raw, files
        return manifest, files
    finally:
        snap.close()


def torch_weights(path: str | os.PathLike, data: bytes) -> dict:
    """The state dict in weights.pt's bytes (imports torch)."""
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # checksums matched, so this is an incompatible writer
        raise BundleError(f"{path}: weights unreadable by this torch ({exc}); "
                          "retrain the bundle with this version") from None


def load(path: str | os.PathLike, weights: bool = True) -> Bundle:
    """The bundle at `path`, every file checked. `weights`: read weights.pt with torch
    into `state_dict`; False leaves it None (torch not imported) and keeps the bytes."""
    path = Path(path)
    manifest, files = _verified(path)
    state = torch_weights(path, files["weights.pt"]) if weights else None
    try:
        embedding = np.load(io.BytesIO(files["embedding.npy"]), allow_pickle=False)
    except Exception as exc:  # checksums matched, so this is an incompatible writer
        raise BundleError(f"{path}: embedding.npy unreadable by this numpy ({exc}); "
                          "retrain the bundle with this version") from None

    def doc(name: str):
        return _parse_json(f"{path}/{name}", files[name]) if name in files else None

    return Bundle(network=doc("network.json"), vocabulary=doc("vocabulary.json"),
                  embedding=embedding, calibration=doc("calibration.json"),
                  training=doc("training.json"), state_dict=state,
                  transfer=doc("transfer.json"), lineage=doc("lineage.json"),
                  alerting=doc("alerting.json"), model_id=manifest["model_id"],
                  path=str(path), onnx=files.get("model.onnx"), weights=files["weights.pt"],
                  created=manifest["created"])
