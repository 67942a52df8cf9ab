"""TLS for the metrics endpoint from a Prometheus web configuration file.

The format is the one every Prometheus exporter reads (exporter-toolkit's
--web.config.file, YAML): `tls_server_config` with cert_file, key_file, client_ca_file,
client_auth_type, min_version and max_version. What sysdream cannot honour is refused by
name rather than ignored, so an operator never believes in a protection that is not there:
basic_auth_users (its bcrypt hashes need a library the daemon does not ship; client
certificates authenticate the scraper instead), http_server_config, inline cert/key/CA,
cipher and curve lists, and the two client_auth_types that request a certificate without
verifying it (such a certificate authenticates no one).

Whoever can write the file, the CA or the certificate decides who may scrape, so each must
be a plain file (no link) owned by root or the daemon's user and not writable by group or
others; the key must not be readable by others. Files are read through the descriptor that
was checked (/proc/self/fd), so nothing can be swapped in between. Relative paths are
taken from the file's own directory, as exporter-toolkit does.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from ..config import ConfigError

MAX_BYTES = 1 << 20     # a web config, a certificate chain or a CA bundle is a few kB
AUTH_TYPES = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
              "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
UNVERIFIED = ("RequestClientCert", "RequireAnyClientCert")
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
            "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
TLS_KEYS = ("cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
            "max_version")
# The toolkit's other keys: known, and refused with the reason.
UNSUPPORTED = {
    "basic_auth_users": "bcrypt passwords are not supported; authenticate the scraper with "
                        "a client certificate (client_auth_type: RequireAndVerifyClientCert)",
    "http_server_config": "HTTP/2 and extra headers are not supported; remove it",
    "rate_limit": "the endpoint is already bounded (4 workers, 16 waiting); remove it",
    "cert": "inline PEM is not supported; put it in a file and name it in cert_file",
    "key": "inline PEM is not supported; put it in a file and name it in key_file",
    "client_ca": "inline PEM is not supported; put it in a file and name it in "
                 "client_ca_file",
    "cipher_suites": "the cipher list is OpenSSL's default; remove it",
    "curve_preferences": "the curves are OpenSSL's default; remove it",
    "prefer_server_cipher_suites": "remove it (OpenSSL's default order is used)",
    "client_allowed_sans": "not supported; give the scrapers' certificates their own CA",
}


def _open(path: Path, what: str, private: bool = False) -> int:
    """A checked descriptor of `path`: a plain file owned by root or us, not writable by
    group or others (`private`: not readable by others either)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == 40 else exc.strerror
        raise ConfigError(f"{path}: cannot read the metrics {what} ({why}); fix the path "
                          "or its permissions ([metrics] web_config)") from None
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    fix = ""
    if not stat.S_ISREG(st.st_mode):
        fix = "is not a plain file"
    elif st.st_mode & 0o022:
        fix = f"is writable by group or others (mode {mode:04o}); chmod go-w it"
    elif private and st.st_mode & 0o007:
        fix = f"is readable by others (mode {mode:04o}); chmod o-rwx it"
    elif st.st_uid not in (0, os.geteuid()):
        fix = f"is owned by uid {st.st_uid}, neither root nor the daemon's; chown root it"
    elif st.st_size > MAX_BYTES:
        fix = f"holds {st.st_size} bytes, over {MAX_BYTES >> 10} KiB"
    if fix:
        os.close(fd)
        raise ConfigError(f"{path}: the metrics {what} {fix}")
    return fd


def _read(path: Path, what: str) -> str:
    fd = _open(path, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the metrics {what} is not text") from None


def _settings(path: Path) -> dict:
    """The checked tls_server_config of the web configuration file at `path`."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: reading a web configuration needs PyYAML, which this "
                          "installation lacks; pip install PyYAML into sysdream's Python "
                          "environment, or set [metrics] web_config = \"\"") from None
    text = _read(path, "web configuration")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ConfigError(f"{path}{where}: not valid YAML ({problem}); see "
                          "docs/security.md for an example web configuration") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deep to be a web configuration") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tls_server_config"), dict):
        raise ConfigError(f"{path}: no tls_server_config mapping; add one with cert_file and "
                          "key_file, or set [metrics] web_config = \"\" for plain HTTP")
    tls = doc["tls_server_config"]
    for where, table, known in (("", doc, ("tls_server_config",)),
                                ("tls_server_config.", tls, TLS_KEYS)):
        for key in table:
            if key in UNSUPPORTED:
                raise ConfigError(f"{path}: {where}{key}: {UNSUPPORTED[key]}")
            if key not in known:
                raise ConfigError(f"{path}: unknown key {where}{key!s} (known: "
                                  f"{', '.join(known)})")
    for key in TLS_KEYS:
        if key in tls and not isinstance(tls[key], str):
            raise ConfigError(f"{path}: tls_server_config.{key} must be a string")
    for key in ("cert_file", "key_file"):
        if not tls.get(key):
            raise ConfigError(f"{path}: tls_server_config.{key} is required (PEM file)")
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth in UNVERIFIED:
        raise ConfigError(f"{path}: client_auth_type {auth} takes certificates it does not "
                          "verify, which authenticates no one; use "
                          "RequireAndVerifyClientCert with client_ca_file")
    if auth not in AUTH_TYPES:
        raise ConfigError(f"{path}: client_auth_type {auth!r}: expected one of "
                          f"{', '.join(AUTH_TYPES)}")
    if auth != "NoClientCert" and not tls.get("client_ca_file"):
        raise ConfigError(f"{path}: client_auth_type {auth} needs client_ca_file, the CA "
                          "that signs the scrapers' certificates")
    if auth == "NoClientCert" and tls.get("client_ca_file"):
        raise ConfigError(f"{path}: client_ca_file is set but client_auth_type is "
                          "NoClientCert; set client_auth_type: RequireAndVerifyClientCert")
    for key in ("min_version", "max_version"):
        if tls.get(key, "TLS12") not in VERSIONS:
            raise ConfigError(f"{path}: {key} {tls[key]!r}: expected one of "
                              f"{', '.join(VERSIONS)}")
    return {**tls, "client_auth_type": auth}


def tls_context(web_config: str) -> ssl.SSLContext:
    """The server's SSLContext from the web configuration file `web_config`; ConfigError
    (exit 12) with the fix for anything wrong in it or in the files it names."""
    path = Path(web_config)
    tls = _settings(path)

    def file(key: str) -> Path:
        return path.parent / tls[key]       # an absolute path stays as it is

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = VERSIONS[tls.get("min_version") or "TLS12"]
    ctx.maximum_version = VERSIONS[tls.get("max_version") or "TLS13"]
    cert, key = file("cert_file"), file("key_file")
    fds = [_open(cert, "certificate (cert_file)"),
           _open(key, "key (key_file)", private=True)]
    try:
        ctx.load_cert_chain(*(f"/proc/self/fd/{fd}" for fd in fds), password=b"")
    except ssl.SSLError as exc:
        why = "the key does not match the certificate" if "MISMATCH" in str(exc) else \
            "not a PEM certificate and unencrypted PEM key"
        raise ConfigError(f"{path}: cert_file {cert} and key_file {key}: {why} "
                          f"({exc.reason or exc}); fix the files") from None
    finally:
        for fd in fds:
            os.close(fd)
    ctx.verify_mode = AUTH_TYPES[tls["client_auth_type"]]
    if tls.get("client_ca_file"):
        ca = file("client_ca_file")
        try:
            ctx.load_verify_locations(cadata=_read(ca, "client CA (client_ca_file)"))
        except ssl.SSLError as exc:
            raise ConfigError(f"{path}: client_ca_file {ca}: no PEM CA certificate "
                              f"({exc.reason or exc}); fix the file") from None
    return ctx
