"""CurveZMQ keys for the fleet (every socket is encrypted and authenticated).

    sysdream keygen --curve -o /etc/sysdream/keys --name server    on the server
    sysdream keygen --curve -o /etc/sysdream/keys --name web-1     on each agent

make NAME.curve (public: `sysdream-curve Z85 NAME`, 0644) and NAME.curve-secret
(`sysdream-curve-secret Z85SECRET Z85PUBLIC NAME`, 0600, never overwritten). The server
reads its secret key and an allow-list folder of agents' .curve files ([server] agents);
each agent reads its secret key and the server's .curve file ([fleet] key, server_key).
A key's name is how metrics and logs name the peer. A key in a subfolder of the agents'
folder (agents/ROLE/NAME.curve) is bound to that role: its agent may send baselines for
and fetch the model of that role only; a key at the top level may have windows scored
but takes part in no role's learning (one stolen key must not poison every role).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError
from ..signing import write_key_pair

PUBLIC_TAG = "sysdream-curve"
SECRET_TAG = "sysdream-curve-secret"


def _name_ok(name: str) -> bool:
    return bool(name) and len(name) <= 64 and "/" not in name and not name.startswith(".") \
        and all(c.isalnum() or c in "-_." for c in name)


def keygen(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """NAME.curve-secret (0600) and NAME.curve in `folder`; ConfigError rather than
    replacing a file."""
    import zmq
    if not _name_ok(name):
        raise ConfigError(f"key name {name!r}: use letters, digits, -, _ or . (at most 64, "
                          "not starting with .)")
    public, secret = zmq.curve_keypair()
    return write_key_pair(
        folder, (f"{name}.curve-secret",
                 f"{SECRET_TAG} {secret.decode()} {public.decode()} {name}\n".encode()),
        (f"{name}.curve", f"{PUBLIC_TAG} {public.decode()} {name}\n".encode()))


def _z85(text: str) -> bool:
    return len(text) == 40 and all(33 <= ord(c) < 127 for c in text)


def load_public(path: str | os.PathLike) -> tuple[str, bytes]:
    """(name, Z85 public key) of a .curve file; ConfigError naming the fix."""
    p = Path(path)
    try:
        words = p.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the public key "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if len(words) != 3 or words[0] != PUBLIC_TAG or not _z85(words[1]) \
            or not _name_ok(words[2]):
        raise ConfigError(f"{p}: not a sysdream CURVE public key (make one with `sysdream "
                          "keygen --curve`)")
    return words[2], words[1].encode()


def load_secret(path: str | os.PathLike) -> tuple[str, bytes, bytes]:
    """(name, Z85 public, Z85 secret) of a .curve-secret file, which must be readable by
    its owner only."""
    p = Path(path)
    try:
        st = p.stat()
        words = p.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the secret key "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"{p}: readable by others (mode {st.st_mode & 0o777:o}); "
                          f"chmod 600 {p}")
    if len(words) != 4 or words[0] != SECRET_TAG or not _z85(words[1]) \
            or not _z85(words[2]) or not _name_ok(words[3]):
        raise ConfigError(f"{p}: not a sysdream CURVE secret key (make one with `sysdream "
                          "keygen --curve`)")
    return words[3], words[2].encode(), words[1].encode()


def allow_list(folder: str | os.PathLike, whose: str = "agents'",
               roles: dict[str, str] | None = None) -> dict[bytes, str]:
    """{Z85 public key: name} of every .curve file in an allow-list folder (the agents',
    or the remote workers'); with `roles`, the keys in its subfolders too, each name's
    role (the subfolder) put there."""
    d = Path(folder)
    if not d.is_dir():
        one = whose.rstrip("'s")
        raise ConfigError(f"{d}: no such folder of {whose} public keys; create it and copy "
                          f"each {one}'s NAME.curve there")
    out: dict[bytes, str] = {}
    found = sorted(d.glob("*.curve")) + (sorted(d.glob("*/*.curve")) if roles is not None
                                         else [])
    for p in found:
        name, key = load_public(p)
        if name in out.values() or key in out:
            raise ConfigError(f"{p}: key name {name!r} or its key is in {d} twice; one key, "
                              "one name, one role")
        out[key] = name
        if p.parent != d:
            roles[name] = p.parent.name
    return out
