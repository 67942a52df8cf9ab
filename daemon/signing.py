"""Signed model bundles (Ed25519, from the cryptography package).

A bundle's manifest lists the sha256 of every file, so it catches damage; someone who can
write the bundle can reseal it. A signature over the manifest's bytes, made with a key the
host trusts, is what an attacker who can write the bundle cannot make:

    sysdream keygen -o /etc/sysdream/keys --name build     build.key (0600), build.pub
    sysdream train ... -o MODEL --sign /etc/sysdream/keys/build.key
    [service] trusted_keys = ["/etc/sysdream/keys/build.pub"]

With trusted keys configured the daemon uses only a bundle whose signature.json verifies
under one of them (at start: exit 11; at a reload: refused, the old model keeps running),
and the model it learns itself is signed with `[learning] signing_key`.

A public key file is one line, `sysdream-ed25519 BASE64 NAME`; a private key is PKCS#8
PEM, written 0600 and never overwritten. A private key that group or others can read, or
that is not a plain file, is refused: whoever reads it signs bundles the host trusts. The
service's DynamicUser cannot read a root's 0600 key, so the unit hands it over with
`LoadCredential=signing-key:/etc/sysdream/keys/build.key`; a credential of that name in
$CREDENTIALS_DIRECTORY is used before [learning] signing_key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

from sysdream.model.bundle import BundleError

from .config import ConfigError

PUBLIC_TAG = "sysdream-ed25519"
SIGNATURE = "signature.json"
CREDENTIAL = "signing-key"


def signing_key(configured: str) -> str:
    """The signing key to use: systemd's credential `signing-key` when the unit passes one
    (LoadCredential=), else [learning] signing_key ("" for none)."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and os.path.isfile(os.path.join(creds, CREDENTIAL)):
        return os.path.join(creds, CREDENTIAL)
    return configured


def _read_private(path: Path) -> bytes:
    """The key file's bytes, from a plain file no one but its owner can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == 40 else exc.strerror
        raise ConfigError(f"{path}: cannot read the signing key ({why})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the signing key is not a plain file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{path}: the signing key is readable or writable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): whoever reads it signs models this host "
                "trusts; `chmod 600` it and hand it to the service with "
                f"LoadCredential={CREDENTIAL}:{path}")
        return f.read(65536)


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def keygen(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """A new key pair in `folder`: NAME.key (private, 0600) and NAME.pub. Never replaces
    an existing file (ConfigError)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: use letters, digits, - or _ (no /, not "
                          "starting with .)")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    public = f"{PUBLIC_TAG} {base64.b64encode(raw).decode()} {name}\n".encode()
    return write_key_pair(folder, (f"{name}.key", private), (f"{name}.pub", public))


def write_key_pair(folder: str | os.PathLike, secret: tuple[str, bytes],
                   public: tuple[str, bytes]) -> tuple[Path, Path]:
    """Write a new key pair into `folder` (made 0700 if absent): the secret file 0600,
    the public one 0644, neither replacing a file nor following a link (ConfigError)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create it ({exc.strerror})") from None
    paths = folder / secret[0], folder / public[0]
    for path, data, mode in ((paths[0], secret[1], 0o600), (paths[1], public[1], 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode)
        except FileExistsError:
            raise ConfigError(f"{path}: exists; a key is never overwritten (remove it, or "
                              "choose another --name)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create it ({exc.strerror})") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return paths


def signer(key_path: str | os.PathLike):
    """A function signing a manifest's bytes with the private key at `key_path` (the
    content of signature.json); ConfigError when the key cannot be used."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(key_path)
    data = _read_private(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 private key; make one with `sysdream "
                          "keygen`")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)

    def sign(manifest: bytes) -> dict:
        return {"algorithm": "ed25519", "key_id": key_id(raw),
                "signature": base64.b64encode(key.sign(manifest)).decode()}
    return sign


def load_public(path: str | os.PathLike) -> tuple[str, bytes]:
    """(key id, raw public key) of a public key file; ConfigError when it is not one."""
    path = Path(path)
    try:
        text = path.read_bytes()[:4096].decode("ascii")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the trusted key ({exc.strerror})") from None
    except UnicodeDecodeError:
        text = ""
    parts = text.split()
    try:
        raw = base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else b""
    except ValueError:
        raw = b""
    if not parts or parts[0] != PUBLIC_TAG or len(raw) != 32:
        raise ConfigError(f"{path}: not a sysdream public key (`{PUBLIC_TAG} BASE64 NAME`, "
                          "from `sysdream keygen`)")
    return key_id(raw), raw


def check(bundle: str | os.PathLike, trusted: dict[str, bytes]) -> str:
    """That the bundle's manifest is signed by one of `trusted` (key id -> raw key);
    returns the model id the signed manifest names. BundleError naming the fix."""
    from sysdream.model.bundle import read_verified

    manifest, _ = read_verified(bundle, (SIGNATURE,))
    return check_bytes(bundle, manifest, _.get(SIGNATURE), trusted)


def check_bytes(bundle: str | os.PathLike, manifest: bytes, signature: bytes | None,
                trusted: dict[str, bytes]) -> str:
    """`check` on bytes already read (bundle.read_verified: the manifest's checksums
    hold for the files read with it, links and FIFOs refused), so what is verified is
    what is loaded."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(bundle)
    if signature is None:
        raise BundleError(f"{path}: unsigned, and [service] trusted_keys asks for a "
                          "signature; sign it (`sysdream train --sign KEY`) or use a signed "
                          "bundle")
    try:
        sig = json.loads(signature[:65536])
    except (ValueError, RecursionError):
        raise BundleError(f"{path}: {SIGNATURE} unreadable; sign the bundle again") from None
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519" or \
            not isinstance(sig.get("key_id"), str) or not isinstance(sig.get("signature"), str):
        raise BundleError(f"{path}: {SIGNATURE} is not an Ed25519 signature; sign the "
                          "bundle again")
    raw = trusted.get(sig["key_id"])
    if raw is None:
        raise BundleError(f"{path}: signed by key {sig['key_id'][:16]!r}, which is not among "
                          "[service] trusted_keys; add its .pub or sign with a trusted key")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(
            base64.b64decode(sig["signature"], validate=True), manifest)
    except (InvalidSignature, ValueError):
        raise BundleError(f"{path}: the signature does not match the manifest (modified "
                          "after signing); restore the bundle or sign it again") from None
    try:
        return str(json.loads(manifest)["model_id"])
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{path}: signed manifest has no model_id") from None
