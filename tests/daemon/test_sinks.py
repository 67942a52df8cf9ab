"""Alert outputs a SIEM takes (daemon/alerting/sinks.py), against real local receivers on loopback:
RFC 5424 syslog over UDP and TCP, an HTTP webhook that fails, hangs and recovers, Falco's
JSON shape; none of them ever holds detection up, and whatever does not arrive is counted.
Last, the daemon itself sending one alert to all of them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from daemon_helpers import config
from harness import BENIGN, ODD, Daemon, run_script, wait_for, workload
from speed import scaled

from sysdream.daemon.alerting import deliveries, kinds, sinks
from sysdream.daemon.alerting import fields as alertfields
from sysdream.daemon.config import ConfigError, load

# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG
SD_PARAM = rb'[a-z0-9_]+="(?:[^"\\\]]|\\["\\\]])*"'
RFC5424 = re.compile(rb'^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) sysdream '
                     rb'(\d+) (\S+) (\[sysdream@32473 (?:' + SD_PARAM + rb' ?)+\]|-)'
                     rb' \xef\xbb\xbf(.*)$', re.S)
ID = kinds.MESSAGE_IDS["anomaly"]
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "alert.schema.json"


def fields(**kw) -> dict:
    base = {"kind": "anomaly", "alert_id": "a1b2", "fingerprint": "f00d", "severity": "high",
            "hostname": "web-1", "pid": 4242, "comm": "sh", "exe": '/tmp/x"] y\\z',
            "score": 3.5, "bound": 1.2, "evidence": "5.1 >= 4 in the last 8 windows",
            "unknown_syscalls": ["ptrace", "memfd_create"], "surprises": [{"observed": "x"}],
            "time": 1795955343.25, "time_rfc3339": "2026-11-29T12:29:03.250Z"}
    return {**base, **kw}


def udp_listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


def test_syslog_udp_is_rfc5424_with_escaped_structured_data():
    rx = udp_listener()
    sink = sinks.SyslogSink(f"127.0.0.1:{rx.getsockname()[1]}", "udp", "authpriv")
    try:
        sink.emit("anomaly", kinds.CRIT, "anomalous syscalls in sh", fields(), ID)
        sink.emit("model-loaded", kinds.INFO, "not an alert", {"kind": "model-loaded"}, ID)
        data = rx.recv(65536)
        m = RFC5424.match(data)
        assert m, data
        assert int(m.group(1)) == 10 * 8 + 2                   # authpriv.crit
        assert m.group(5) == b"anomaly" and m.group(7) == b"anomalous syscalls in sh"
        sd = m.group(6).decode()
        assert 'alert_id="a1b2"' in sd and 'severity="high"' in sd
        assert r'exe="/tmp/x\"\] y\\z"' in sd                   # RFC 5424 escaping
        assert 'unknown_syscalls="ptrace memfd_create"' in sd and "surprises" not in sd
        rx.settimeout(0.5)
        with pytest.raises(TimeoutError):                       # events: not by default
            rx.recv(65536)
        wait_for(lambda: sink.counts["sent"] == 1, 5, "the count")
    finally:
        sink.close()
        rx.close()


def test_syslog_udp_datagram_is_cut_at_max_bytes():
    rx = udp_listener()
    sink = sinks.SyslogSink(f"127.0.0.1:{rx.getsockname()[1]}", "udp", "local3",
                            max_bytes=600)
    try:
        sink.emit("anomaly", kinds.WARNING, "m" * 5000, fields(), ID)
        data = rx.recv(65536)
        assert len(data) == 600 and data.startswith(b"<156>1 ")   # local3.warning
    finally:
        sink.close()
        rx.close()


def test_syslog_tcp_frames_reconnects_and_counts_a_refusing_collector():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(5)
    port = srv.getsockname()[1]
    sink = sinks.SyslogSink(f"127.0.0.1:{port}", "tcp")
    try:
        sink.emit("anomaly", kinds.CRIT, "first", fields(alert_id="one"), ID)
        conn, _ = srv.accept()
        conn.settimeout(5)
        buf = b""
        while b"first" not in buf:
            buf += conn.recv(65536)
        n, _, frame = buf.partition(b" ")
        assert int(n) == len(frame) and RFC5424.match(frame)    # octet counting
        conn.close()                                            # the collector restarts
        time.sleep(0.2)
        sink.emit("anomaly", kinds.CRIT, "second", fields(alert_id="two"), ID)
        sink.emit("anomaly", kinds.CRIT, "third", fields(alert_id="three"), ID)
        got = b""
        deadline = time.monotonic() + 10
        while b"third" not in got and time.monotonic() < deadline:
            try:
                c, _ = srv.accept()
            except TimeoutError:
                break
            c.settimeout(2)
            try:
                while chunk := c.recv(65536):
                    got += chunk
                    if b"third" in got:
                        break
            except TimeoutError:
                pass
        assert b"third" in got, "no reconnection"
    finally:
        sink.close()
        srv.close()
    # nobody listening: counted as failed, and emit never waits for it
    refused = sinks.SyslogSink(f"127.0.0.1:{port}", "tcp")
    try:
        t0 = time.monotonic()
        for _ in range(20):
            refused.emit("anomaly", kinds.CRIT, "lost", fields(), ID)
        assert time.monotonic() - t0 < 0.1
        wait_for(lambda: refused.counts["failed"] == 20, 10, "20 failures")
    finally:
        refused.close()


class Receiver:
    """A local HTTP server: answers each POST with the next status of `plan` (then 200),
    or sleeps `hang_s` first, with `location` as its Location header when given; keeps
    what it got (a GET too, with its headers, in `gets`)."""

    def __init__(self, plan=(), hang_s: float = 0.0, tls: tuple[str, str] | None = None,
                 location: str = ""):
        self.plan, self.hang_s, self.got, self.gets = list(plan), hang_s, [], []
        self.location = location
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.got.append((dict(self.headers), json.loads(body)))
                if owner.hang_s:
                    time.sleep(owner.hang_s)
                code = owner.plan.pop(0) if owner.plan else 200
                self.send_response(code)
                if owner.location:
                    self.send_header("Location", owner.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self):
                owner.gets.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls:     # (certificate, key): HTTPS
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_500s_with_backoff_and_sends_falco_json():
    rx = Receiver(plan=[500, 503])
    sink = sinks.WebhookSink(rx.url, "falco", ("Authorization: Bearer s3cret",),
                             timeout_s=2, retries=3, backoff_s=0.05)
    try:
        sink.emit("anomaly", kinds.CRIT, "anomalous syscalls in sh", fields(), ID)
        wait_for(lambda: sink.counts["sent"] == 1, 10, "delivery after two 5xx")
        assert sink.counts["retried"] == 2 and sink.counts["failed"] == 0
        assert len(rx.got) == 3
        headers, doc = rx.got[-1]
        assert headers["Authorization"] == "Bearer s3cret"
        assert set(doc) >= {"output", "priority", "rule", "time", "hostname",
                            "output_fields", "tags", "source"}
        assert doc["priority"] == "Critical" and doc["rule"] == "sysdream anomaly"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", doc["time"])
        assert doc["hostname"] == "web-1" and "high" in doc["tags"]
        of = doc["output_fields"]
        assert of["sysdream.alert_id"] == "a1b2" and of["sysdream.pid"] == 4242
        assert json.loads(of["sysdream.unknown_syscalls"]) == ["ptrace", "memfd_create"]
    finally:
        sink.close()
        rx.close()


def test_webhook_4xx_is_not_retried_and_the_own_shape_carries_every_field():
    rx = Receiver(plan=[400])
    sink = sinks.WebhookSink(rx.url, "sysdream", retries=3, backoff_s=0.05)
    try:
        sink.emit("anomaly", kinds.CRIT, "m", fields(), ID)
        sink.emit("anomaly", kinds.CRIT, "m", fields(alert_id="again"), ID)
        wait_for(lambda: sink.counts["failed"] == 1 and sink.counts["sent"] == 1, 10,
                 "one refused, one sent")
        assert sink.counts["retried"] == 0 and len(rx.got) == 2
        doc = rx.got[1][1]
        assert doc["message_id"] == ID and doc["alert_id"] == "again"
        assert doc["surprises"] == [{"observed": "x"}]
    finally:
        sink.close()
        rx.close()


def test_https_webhook_checks_the_certificate_against_ca_file(tmp_path):
    """HTTPS to a receiver whose certificate a private CA file vouches for: delivered with
    ca_file; with the system's CAs the certificate is refused and the alert counted
    failed, never sent in clear."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    rx = Receiver(tls=(str(cert), str(key)))
    good = sinks.WebhookSink(rx.url, "falco", retries=0, ca_file=str(cert))
    bad = sinks.WebhookSink(rx.url, "falco", retries=0)
    try:
        assert rx.url.startswith("https://")
        good.emit("anomaly", kinds.CRIT, "m", fields(), ID)
        bad.emit("anomaly", kinds.CRIT, "m", fields(alert_id="unverified"), ID)
        wait_for(lambda: good.counts["sent"] == 1 and bad.counts["failed"] == 1, 15,
                 "one delivered over verified TLS, one refused")
        assert [d["output_fields"]["sysdream.alert_id"] for _, d in rx.got] == ["a1b2"]
        assert bad.counts["sent"] == 0
    finally:
        good.close()
        bad.close()
        rx.close()


def test_a_hanging_webhook_never_holds_detection_and_a_full_queue_is_counted(capfd):
    rx = Receiver(hang_s=3.0)
    sink = sinks.WebhookSink(rx.url, timeout_s=0.3, retries=0, capacity=5)
    try:
        t0 = time.monotonic()
        for i in range(50):
            sink.emit("anomaly", kinds.CRIT, "m", fields(alert_id=str(i)), ID)
        assert time.monotonic() - t0 < 0.1, "emit waited for the receiver"
        assert sink.counts["dropped"] >= 44 and sink.pending() <= 5
        assert capfd.readouterr().err.count("queue of 5 is full") == 1   # once, not 44 times
        wait_for(lambda: sink.counts["failed"] + sink.counts["sent"] >= 1, 10,
                 "the first try to time out")
        assert sink.counts["failed"] >= 1
    finally:
        sink.close(drain_s=0.1)
        rx.close()


def test_the_daemon_sends_each_alert_to_syslog_and_the_webhook_as_to_json_lines(
        ebpf_ready, tmp_path, tiny_bundle):
    rx_udp = udp_listener()
    rx_http = Receiver(plan=[500])
    prog = workload(tmp_path)
    cfg = config(tmp_path, f"""
[alerts.syslog]
enabled = true
address = "127.0.0.1:{rx_udp.getsockname()[1]}"
[alerts.webhook]
enabled = true
url = "{rx_http.url}"
format = "falco"
backoff_s = 0.05
""")
    d = Daemon(["--config", str(cfg), "--model", str(tiny_bundle), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--json-lines",
                str(tmp_path / "alerts.jsonl"), "--comm", "sdwork"], tmp_path)
    try:
        d.wait_attached()
        run_script(prog, BENIGN)
        run_script(prog, ODD)
        lines = wait_for(lambda: [json.loads(x) for x in
                                  (tmp_path / "alerts.jsonl").read_text().splitlines()
                                  if '"kind":"anomaly"' in x], 60, "an alert\n" + d.stderr)
        first = lines[0]
        schema = json.loads(SCHEMA.read_text())
        for line in lines:                      # the documented shape, field by field
            jsonschema.validate(line, schema, format_checker=jsonschema.FormatChecker())
        m = RFC5424.match(rx_udp.recv(65536))
        assert m and f'alert_id="{first["alert_id"]}"'.encode() in m.group(6)
        wait_for(lambda: any(doc["output_fields"]["sysdream.alert_id"] == first["alert_id"]
                             for _, doc in rx_http.got[1:]), 30, "the webhook, retried")
        wait_for(lambda: d.metric('sysdream_alert_deliveries_total{result="retried",'
                                  'sink="webhook"}') >= 1, 10, "the retry counted")
        assert d.metric('sysdream_alert_deliveries_total{result="sent",sink="syslog"}') >= 1
        rc, _ = d.stop()
        assert rc == 0, d.stderr
    finally:
        d.kill()
        rx_udp.close()
        rx_http.close()


def test_the_alert_schema_names_every_field_and_checks_types():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert list(schema["properties"]) == ["message", "message_id", "priority",
                                          *alertfields.ALERT_FIELDS]
    assert schema["properties"]["schema"]["const"] == alertfields.ALERT_SCHEMA
    version = alertfields.ALERT_SCHEMA.rsplit("/", 1)[1]
    assert schema["$id"].endswith(f"/sysdream-alert/{version}")
    assert schema["title"].endswith(f"version {version}")
    assert [k for k, v in schema["properties"].items() if not v.get("description")] == []
    v = jsonschema.Draft202012Validator(schema)
    assert not v.is_valid({"kind": "anomaly"}), "fields are required"
    assert not v.is_valid({**{k: "" for k in schema["properties"]}, "pid": "12"})


def test_a_network_output_without_its_address_is_refused_with_exit_12(tmp_path):
    cfg = tmp_path / "sysdream.toml"
    cfg.write_text("[alerts.webhook]\nenabled = true\n")
    r = subprocess.run([sys.executable, "-m", "sysdream.daemon", "run", "--config",
                        str(cfg)], capture_output=True, text=True, timeout=scaled(60))
    assert r.returncode == 12 and "Traceback" not in r.stderr
    assert "[alerts.webhook] is enabled but has no url" in r.stderr


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl for this test."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class TlsCollector:
    """A syslog-over-TLS receiver (RFC 5425) on loopback: each connection's bytes, read by
    one thread."""

    def __init__(self, cert: Path, key: Path):
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()
        self.port, self.data, self.handshakes_failed = self.srv.getsockname()[1], b"", 0
        self.ctx = ctx
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.srv.accept()
            except OSError:
                return
            try:
                conn = self.ctx.wrap_socket(raw, server_side=True)
            except OSError:
                self.handshakes_failed += 1
                raw.close()
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        try:
            while chunk := conn.recv(65536):
                self.data += chunk
        except OSError:
            pass

    def frames(self) -> list[bytes]:
        """RFC 5425 octet-counted frames: "LEN SP MSG", back to back."""
        out, buf = [], self.data
        while buf:
            n, _, rest = buf.partition(b" ")
            out.append(rest[:int(n)])
            buf = rest[int(n):]
        return out

    def close(self):
        self.srv.close()


def test_syslog_over_tls_is_octet_counted_and_checks_the_collectors_certificate(
        tmp_path, capfd):
    """RFC 5425 to a real TLS receiver: frames parse by their octet counts and each is
    RFC 5424; without the CA file the certificate is refused, nothing is sent in clear,
    and the failure is logged once for the streak, not once per alert."""
    cert, key = self_signed(tmp_path)
    rx = TlsCollector(cert, key)
    good = sinks.SyslogSink(f"127.0.0.1:{rx.port}", "tls", ca_file=str(cert))
    bad = sinks.SyslogSink(f"127.0.0.1:{rx.port}", "tls")
    try:
        for i in range(3):
            good.emit("anomaly", kinds.CRIT, f"alert {i} \u00e9", fields(alert_id=f"t{i}"), ID)
            bad.emit("anomaly", kinds.CRIT, "unverified", fields(alert_id="no"), ID)
        wait_for(lambda: good.counts["sent"] == 3 and bad.counts["failed"] == 3, 20,
                 "three over verified TLS, three refused")
        wait_for(lambda: len(rx.frames()) == 3, 10, "three frames")
        for i, frame in enumerate(rx.frames()):
            m = RFC5424.match(frame)
            assert m and m.group(7).decode() == f"alert {i} \u00e9"
            assert f'alert_id="t{i}"'.encode() in m.group(6)
        assert b"unverified" not in rx.data and rx.handshakes_failed >= 1
        err = capfd.readouterr().err
        assert err.count("alert sink syslog: delivery failed") == 1, err
        assert "CERTIFICATE_VERIFY_FAILED" in err
    finally:
        good.close(drain_s=0.1)
        bad.close(drain_s=0.1)
        rx.close()


def test_webhook_follows_no_redirect_and_never_forwards_the_token(tmp_path, capfd):
    """A receiver answering 302 to another host: the alert counts failed, is not re-sent
    (neither as a GET nor as a POST, nor retried), Authorization never reaches the other
    host, and the first failure is logged with where it pointed; later ones only count."""
    elsewhere = Receiver()
    rx = Receiver(plan=[302, 307, 308], location=elsewhere.url)
    sink = sinks.WebhookSink(rx.url, "sysdream", ("Authorization: Bearer s3cret",),
                             retries=3, backoff_s=0.05)
    try:
        for i in range(3):
            sink.emit("anomaly", kinds.CRIT, "m", fields(alert_id=str(i)), ID)
        wait_for(lambda: sink.counts["failed"] == 3, 10, "three redirects, three failures")
        assert sink.counts["sent"] == 0 and sink.counts["retried"] == 0
        assert len(rx.got) == 3
        assert elsewhere.got == [] and elsewhere.gets == []
        err = capfd.readouterr().err
        assert err.count("alert sink webhook: delivery failed") == 1, err
        assert f"HTTP 302 redirect to {elsewhere.url}, not followed" in err
        sink.emit("anomaly", kinds.CRIT, "m", fields(alert_id="ok"), ID)    # plan spent
        wait_for(lambda: sink.counts["sent"] == 1, 10, "delivered again")
        assert "alert sink webhook delivers again" in capfd.readouterr().err
    finally:
        sink.close()
        rx.close()
        elsewhere.close()


def test_webhook_headers_come_from_a_private_file_or_a_systemd_credential(
        tmp_path, monkeypatch):
    rx = Receiver()
    secret = tmp_path / "webhook-headers"
    secret.write_text("# the SIEM's token\nAuthorization: Bearer from-file\n\nX-Tenant: a\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by every user \(mode 644\).*chmod o-r"):
        sinks.WebhookSink(rx.url, headers_file=str(secret))
    secret.chmod(0o600)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "webhook").write_text("Authorization: Bearer from-credential\n")
    (creds / "webhook").chmod(0o400)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="no \\$CREDENTIALS_DIRECTORY.*LoadCredential="):
        sinks.WebhookSink(rx.url, headers_credential="webhook")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    by_file = sinks.WebhookSink(rx.url, retries=0, headers_file=str(secret))
    by_cred = sinks.WebhookSink(rx.url, retries=0, headers_credential="webhook")
    bad = tmp_path / "bad-headers"
    bad.write_text("Authorization Bearer no-colon-so-not-a-header\n")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match=r"bad-headers:1: not a \"Name: value\"") as exc:
        sinks.WebhookSink(rx.url, headers_file=str(bad))
    assert "no-colon" not in str(exc.value)          # a secret is never echoed
    try:
        by_file.emit("anomaly", kinds.CRIT, "m", fields(alert_id="f"), ID)
        by_cred.emit("anomaly", kinds.CRIT, "m", fields(alert_id="c"), ID)
        wait_for(lambda: len(rx.got) == 2, 10, "both delivered")
        auth = {d["alert_id"]: (h["Authorization"], h.get("X-Tenant")) for h, d in rx.got}
        assert auth == {"f": ("Bearer from-file", "a"), "c": ("Bearer from-credential", None)}
    finally:
        by_file.close()
        by_cred.close()
        rx.close()


def test_a_world_readable_headers_file_stops_the_daemon_with_exit_12(tmp_path):
    secret = tmp_path / "h"
    secret.write_text("Authorization: Bearer x\n")
    secret.chmod(0o644)
    cfg = tmp_path / "sysdream.toml"
    cfg.write_text(f'[alerts.webhook]\nenabled = true\nurl = "http://127.0.0.1:9/"\n'
                   f'headers_file = "{secret}"\n')
    r = subprocess.run([sys.executable, "-m", "sysdream.daemon", "run", "--config",
                        str(cfg), "--no-metrics", "--state-dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 12 and "Traceback" not in r.stderr, r.stderr
    assert "headers_file" in r.stderr and "readable by every user" in r.stderr


def test_syslog_tls_is_configured_by_protocol_and_a_bad_ca_file_is_one_clear_error(tmp_path):
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    cfg = config(tmp_path, f'[alerts.syslog]\nenabled = true\naddress = "127.0.0.1:6514"\n'
                           f'protocol = "tls"\nca_file = "{junk}"\n')
    c = load(cfg)
    assert c.alerts_syslog.protocol == "tls"
    with pytest.raises(ConfigError, match=r"\[alerts.syslog\] ca_file .*ca.pem: cannot read it "
                                          r"as PEM certificates"):
        deliveries.network_sinks(c)
