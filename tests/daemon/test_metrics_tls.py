"""Issue 33 item 6: the metrics endpoint over TLS with client certificates, configured by a
Prometheus web configuration file ([metrics] web_config). A real Prometheus scrapes the
real daemon with its client certificate; a client without one, or with one another CA
signed, is refused and the endpoint goes on serving; a bad web configuration stops the
daemon with exit 12 and one line naming the fix."""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from harness import Daemon, Prometheus, probe_endpoint, wait_for
from speed import scaled

from sysdream.daemon.config import ConfigError
from sysdream.daemon.exitcodes import Exit


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(folder: Path, name: str, issuer=None, server: bool = False, ca: bool = False):
    """NAME.crt and NAME.key (EC P-256) in `folder`, signed by `issuer` ((cert, key), or
    self-signed); returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(name))
         .issuer_name(issuer[0].subject if issuer else _name(name))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp = folder / f"{name}.key"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    kp.chmod(0o600)
    return cert, key


@pytest.fixture()
def pki(tmp_path) -> Path:
    """ca, server (for 127.0.0.1), client (signed by ca) and rogue (signed by another CA)
    certificates and keys, and web.yml requiring a client certificate the ca signed."""
    d = tmp_path / "pki"
    d.mkdir()
    ca = _issue(d, "ca", ca=True)
    _issue(d, "server", ca, server=True)
    _issue(d, "client", ca)
    _issue(d, "rogue", _issue(d, "rogue-ca", ca=True))
    web(d, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
           "  client_ca_file: ca.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
           "  min_version: TLS12\n")
    return d


def web(d: Path, text: str, name: str = "web.yml") -> Path:
    p = d / name
    p.write_text(text)
    p.chmod(0o644)
    return p


def client(pki: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return ctx


def get(port: int, ctx: ssl.SSLContext) -> str:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx,
                                timeout=scaled(5)) as r:
        return r.read().decode()


def served(port: int, ctx: ssl.SSLContext) -> str:
    try:
        return get(port, ctx)
    except OSError:
        return ""


def refused(port: int, ctx: ssl.SSLContext | None) -> bool:
    """True when a client gets no exposition: its handshake, or its first read, fails."""
    try:
        if ctx is None:     # plain HTTP to the TLS port
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=scaled(5)) as r:
                return b"sysdream" not in r.read()
        return "sysdream" not in get(port, ctx)
    except OSError:         # ssl.SSLError, a reset, or urllib's wrapping of either
        return True


def test_prometheus_scrapes_over_mtls_and_certless_clients_are_refused(pki, tmp_path,
                                                                       tiny_bundle):
    cfg = tmp_path / "sysdream.toml"
    cfg.write_text(f'[metrics]\nweb_config = "{pki / "web.yml"}"\n')
    d = Daemon(["--config", str(cfg), "--model", str(tiny_bundle), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--comm", "sdtls"], tmp_path)
    prom = Prometheus(tmp_path, f"127.0.0.1:{d.port}",
                      "    scheme: https\n    tls_config:\n"
                      f"      ca_file: {pki / 'ca.crt'}\n"
                      f"      cert_file: {pki / 'client.crt'}\n"
                      f"      key_file: {pki / 'client.key'}\n")
    try:
        wait_for(lambda: prom.query('up{job="sysdream"} == 1'), 60,
                 "Prometheus to scrape over https\n" + d.stderr[-2000:])
        assert prom.query('sysdream_phase{job="sysdream"}'), "no sysdream series scraped"
        # without a client certificate, with one another CA signed, or in plain HTTP
        for who, ctx in (("no certificate", client(pki, None)),
                         ("rogue certificate", client(pki, "rogue")), ("plain HTTP", None)):
            assert refused(d.port, ctx), who
        # ... and the endpoint goes on serving the scraper with its certificate, and
        # says how many it turned away
        text = get(d.port, client(pki, "client"))
        assert "sysdream_phase" in text
        counted = re.search(r'^sysdream_metrics_connections_refused_total\{reason="tls"\} '
                            r'(\S+)$', text, re.M)
        assert counted and float(counted.group(1)) >= 3, text[-2000:]
        ok = 'sum_over_time(up{job="sysdream"}[1h])'     # successful scrapes so far
        before = float(prom.query(ok)[0]["value"][1])
        wait_for(lambda: float(prom.query(ok)[0]["value"][1]) >= before + 2, 20,
                 "two more successful scrapes after the refused clients")
        assert d.proc.poll() is None, d.stderr[-2000:]
    finally:
        prom.close()
        rc, _ = d.stop(scaled(30))
    assert rc == 0, d.stderr[-2000:]


def test_stalled_and_failed_handshakes_cost_no_threads_and_the_server_goes_on(pki, monkeypatch):
    from sysdream.daemon.metrics import server as msrv
    from sysdream.daemon.metrics.webconfig import tls_context

    monkeypatch.setattr(msrv, "READ_TIMEOUT_S", 0.5)
    before = threading.active_count()
    with probe_endpoint(tls=tls_context(str(pki / "web.yml"))) as (srv, port, stalled):
        for _ in range(5):      # handshakes that fail: each counted, the server goes on
            assert refused(port, client(pki, None))
        wait_for(lambda: srv.tls_refused == 5, 5, "five refused handshakes counted")
        assert "sysdream_probe_total 1.0" in get(port, client(pki, "client"))
        for _ in range(40):     # connect, never say hello: more than workers + queue
            stalled.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.2)
        assert threading.active_count() <= before + msrv.WORKERS + 1
        # once the stalled ones are cut, a scraper with its certificate is served
        got = wait_for(lambda: served(port, client(pki, "client")), 10, "a served scrape")
        assert "sysdream_probe_total 1.0" in got
        assert srv.tls_refused >= 5 + msrv.WORKERS      # the stalled ones timed out
        assert threading.active_count() <= before + msrv.WORKERS + 1


def test_tls_on_the_unix_socket_too(pki, tmp_path):
    from sysdream.daemon.metrics.webconfig import tls_context

    path = tmp_path / "metrics.sock"

    def scrape(cert: str | None) -> bytes:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(5)
            raw.connect(str(path))
            with client(pki, cert).wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                return s.makefile("rb").read()
    with probe_endpoint(f"unix:{path}", tls=tls_context(str(pki / "web.yml"))):
        assert b"sysdream_probe_total 1.0" in scrape("client")
        with pytest.raises(OSError):        # the handshake, or the first read, fails
            scrape(None)
        assert b"sysdream_probe_total 1.0" in scrape("client")


BAD = {
    "missing": (None, "cannot read the metrics web configuration"),
    "yaml": ("tls_server_config: [cert_file: a\n", "not valid YAML"),
    "no tls": ("{}\n", "no tls_server_config"),
    "unknown key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                    "  cert_fiel: x\n", "unknown key tls_server_config.cert_fiel"),
    "basic auth": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   "basic_auth_users:\n  prom: $2y$10$x\n", "basic_auth_users: bcrypt"),
    "http2": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
              "http_server_config:\n  http2: false\n", "http_server_config: HTTP/2"),
    "no ca": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
              "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    "unverified": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                   "  client_auth_type: RequireAnyClientCert\n", "authenticates no one"),
    "auth typo": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                  "  client_ca_file: ca.crt\n  client_auth_type: Require\n",
                  "client_auth_type 'Require'"),
    "mismatch": ("tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
                 "the key does not match the certificate"),
    "no key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: nokey.key\n",
               "cannot read the metrics key (key_file) (No such file"),
    "version": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
                "  min_version: TLS1.2\n", "min_version 'TLS1.2'"),
    "writable": ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
                 "writable by group or others (mode 0666); chmod go-w"),
    "key readable": ("tls_server_config:\n  cert_file: server.crt\n  key_file: open.key\n",
                     "key (key_file) is readable by others (mode 0644)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_web_configurations_are_one_line_with_the_fix(pki, case):
    from sysdream.daemon.metrics.webconfig import tls_context

    text, expected = BAD[case]
    p = pki / "absent.yml" if text is None else web(pki, text, "bad.yml")
    if case == "writable":
        p.chmod(0o666)
    if case == "key readable":
        (pki / "open.key").write_bytes((pki / "server.key").read_bytes())
        (pki / "open.key").chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        tls_context(str(p))
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_a_bad_web_configuration_stops_the_daemon_with_exit_12(pki, tmp_path, tiny_bundle):
    """The real CLI: one line on stderr, the configuration's exit code, nothing attached."""
    web(pki, "tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n",
        "bad.yml")
    cfg = tmp_path / "sysdream.toml"
    for value, expected in ((pki / "bad.yml", "the key does not match the certificate"),
                            ("web.yml", "expected \"\" (plain HTTP) or the absolute path")):
        cfg.write_text(f'[metrics]\nweb_config = "{value}"\nport = 0\n')
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "sysdream.daemon", "run", "--config",
                            str(cfg), "--model", str(tiny_bundle), "--state-dir",
                            str(tmp_path / "state"), "--no-journald"],
                           capture_output=True, text=True, timeout=scaled(60))
        lines = [x for x in r.stderr.splitlines() if x.startswith("sysdream: error:")]
        assert r.returncode == Exit.BAD_CONFIG, r.stderr
        assert len(lines) == 1 and expected in lines[0], r.stderr
        assert "Traceback" not in r.stderr and "probes attached" not in r.stderr
        assert time.monotonic() - t0 < scaled(30)
