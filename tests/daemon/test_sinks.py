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

from sysdream.daemon.alerting import fields as alertfields
from sysdream.daemon.alerting import kinds, sinks

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
    or sleeps `hang_s` first; keeps what it got."""

    def __init__(self, plan=(), hang_s: float = 0.0, tls: tuple[str, str] | None = None):
        self.plan, self.hang_s, self.got = list(plan), hang_s, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.got.append((dict(self.headers), json.loads(body)))
                if owner.hang_s:
                    time.sleep(owner.hang_s)
                code = owner.plan.pop(0) if owner.plan else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

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


def test_a_hanging_webhook_never_holds_detection_and_a_full_queue_is_counted():
    rx = Receiver(hang_s=3.0)
    sink = sinks.WebhookSink(rx.url, timeout_s=0.3, retries=0, capacity=5)
    try:
        t0 = time.monotonic()
        for i in range(50):
            sink.emit("anomaly", kinds.CRIT, "m", fields(alert_id=str(i)), ID)
        assert time.monotonic() - t0 < 0.1, "emit waited for the receiver"
        assert sink.counts["dropped"] >= 44 and sink.pending() <= 5
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
                        str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 12 and "Traceback" not in r.stderr
    assert "[alerts.webhook] is enabled but has no url" in r.stderr
