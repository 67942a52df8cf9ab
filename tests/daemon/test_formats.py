"""The alert formats a SIEM reads without a parser (daemon/alerting/formats.py), each checked
against its schema's own definitions, vendored or installed as data: ECS against Elastic's flat
field list of ECS 8.17.0, OCSF against the OCSF 1.5.0 schema that ocsf-json-schema ships,
Falco against the field tables of Falco's libraries (names and types; tests/daemon/data).
Last, a running daemon writing ECS to its JSON-lines file and posting OCSF to a webhook,
with a bidi override in an argument."""

from __future__ import annotations

import datetime
import json
import sys
import unicodedata
from pathlib import Path

import jsonschema
import pytest
import yaml
from daemon_helpers import config
from harness import BENIGN, ODD, Daemon, run_script, wait_for, workload
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

from sysdream.daemon.alerting import fields as alertfields
from sysdream.daemon.alerting import formats, kinds
from sysdream.daemon.context.printable import printable, reprinted

ECS_FLAT = Path(__file__).resolve().parent / "data" / "ecs_flat-8.17.0.yml"
ID = kinds.MESSAGE_IDS["anomaly"]
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def alert(**kw) -> dict:
    """An anomaly alert as the daemon raises it, with the fields being added beside it
    (host_id, boot_id, exe_sha256, entity_id, parent_cmdline, process_start, window_*)."""
    base = {"kind": "anomaly", "alert_id": "0b9e8a4c-3f1d-4a51-9a52-1c2f3e4d5a6b",
            "fingerprint": "a1b2c3d4e5f60718", "severity": "high", "hostname": "web-1",
            "pid": 4242, "tid": 4243, "comm": "sh", "exe": "/usr/bin/dash",
            "exe_flags": [], "cmdline": "sh -c 'cat /etc/shadow'",
            "argv": ["sh", "-c", "cat /etc/shadow"], "user": "www-data", "uid": 33,
            "euid": 33, "gid": 33, "login_user": "", "loginuid": -1, "session": -1,
            "ppid": 4000, "lineage": [{"pid": 4000, "exe": "/usr/sbin/nginx", "comm": "nginx"},
                                      {"pid": 1, "exe": "/usr/lib/systemd/systemd",
                                       "comm": "systemd"}],
            "lineage_text": "systemd > nginx > dash", "cgroup_id": 7, "cgroup":
            "/system.slice/nginx.service", "unit": "nginx.service", "container_id": "",
            "container_runtime": "", "process_start_ns": 123, "context_source": "kernel",
            "score": 3.5, "bound": 1.2, "confidence": 0.999, "sigmas": 4.1,
            "model_id": "m-1", "fleet_server": "", "evidence": "5 >= 4 in the last 8 windows",
            "episode": {}, "novelty": [], "position": 3, "syscalls": ["read", "ptrace"],
            "context": [], "unknown_syscalls": ["ptrace"], "surprises": [], "attention": [],
            "suppressed": 0, "incident_count": 1, "latency_s": 0.01, "time": 1795955343.25,
            "time_rfc3339": "2026-11-29T12:29:03.250Z", "schema": alertfields.ALERT_SCHEMA,
            "host_id": "4c4c4544003957108052b4c04f384833", "boot_id": "b7e0f1", "exe_sha256": SHA,
            "entity_id": "ZW50aXR5", "parent_cmdline": "nginx: worker process",
            "process_start": "2026-11-29T12:28:59.000Z",
            "window_start": "2026-11-29T12:29:01.000Z", "window_end": "2026-11-29T12:29:02.500Z",
            "why": "sh ran syscalls its program never ran while learning",
            "sysdream_version": "0.1.0"}
    return {**base, **kw}


def older_alert() -> dict:
    """The same alert from a daemon without the newer fields, in a container."""
    a = alert(container_id="f" * 64, container_runtime="docker")
    for k in ("host_id", "boot_id", "exe_sha256", "entity_id", "parent_cmdline",
              "process_start", "window_start", "window_end", "why", "sysdream_version"):
        del a[k]
    return a


def flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ECS field types as JSON values (Elasticsearch field data types)
ECS_JSON = {"keyword": str, "constant_keyword": str, "wildcard": str, "text": str,
            "match_only_text": str, "ip": str, "date": str, "long": int, "integer": int,
            "float": (int, float), "scaled_float": (int, float), "boolean": bool,
            "object": dict, "flattened": dict}


def ecs_fields() -> tuple[str, dict]:
    text = ECS_FLAT.read_text()
    version = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                   if line.startswith("# ecs_version:"))
    return version, yaml.safe_load(text)


def ecs_problems(doc: dict, defs: dict) -> list[str]:
    """What in an ECS document breaks ECS's definitions: an unknown name outside the
    custom sysdream.* set, a value of the wrong type or not among the allowed values,
    an event.type its event.category does not expect, a date that is not ISO 8601."""
    out = []
    flat = flatten(doc)
    for name, v in flat.items():
        if name.startswith("sysdream."):
            continue
        d = defs.get(name)
        if d is None:
            out.append(f"{name}: not an ECS field")
            continue
        values = v if isinstance(v, list) else [v]
        if isinstance(v, list) and "array" not in d.get("normalize", []):
            out.append(f"{name}: an array where ECS expects one value")
        for x in values:
            want = ECS_JSON[d["type"]]
            if not isinstance(x, want) or (isinstance(x, bool) and want is not bool):
                out.append(f"{name}: {x!r} is not {d['type']}")
            elif d["type"] == "date":
                try:
                    datetime.datetime.fromisoformat(x)
                except ValueError:
                    out.append(f"{name}: {x!r} is not a date")
        allowed = {a["name"]: a for a in d.get("allowed_values", [])}
        if allowed and not set(values) <= set(allowed):
            out.append(f"{name}: {values} not among {sorted(allowed)}")
    cats = defs["event.category"]["allowed_values"]
    for cat in flat.get("event.category", []):
        expected = next(a for a in cats if a["name"] == cat).get("expected_event_types")
        if expected and not set(flat.get("event.type", [])) <= set(expected):
            out.append(f"event.type {flat.get('event.type')} not expected for {cat}")
    return out


def test_the_vendored_ecs_list_is_the_version_the_mapping_names():
    version, defs = ecs_fields()
    assert version == formats.ECS_VERSION
    assert defs["@timestamp"]["type"] == "date" and "process.parent.pid" in defs


def test_ecs_output_uses_ecs_8_names_types_and_allowed_values():
    _, defs = ecs_fields()
    for a in (alert(), older_alert()):
        doc = formats.ecs("anomaly", kinds.CRIT, "anomalous syscalls in sh", a, ID)
        assert ecs_problems(doc, defs) == [], doc
    event = formats.ecs("model-loaded", kinds.INFO, "model loaded",
                        {"time": 1795955343.25, "model_id": "m-1"},
                        kinds.MESSAGE_IDS["model-loaded"])
    assert ecs_problems(event, defs) == [] and event["event"]["kind"] == "event"
    doc = flatten(formats.ecs("anomaly", kinds.CRIT, "m", alert(), ID))
    assert doc["@timestamp"] == "2026-11-29T12:29:03.250Z" and doc["message"] == "m"
    assert doc["event.kind"] == "alert" and doc["event.category"] == ["process"]
    assert doc["event.severity"] == 73 and doc["ecs.version"] == "8.17.0"
    assert doc["process.executable"] == "/usr/bin/dash" and doc["process.pid"] == 4242
    assert doc["process.command_line"] == "sh -c 'cat /etc/shadow'"
    assert doc["process.hash.sha256"] == SHA and doc["process.entity_id"] == "ZW50aXR5"
    assert doc["process.parent.pid"] == 4000 and doc["process.parent.name"] == "nginx"
    assert doc["process.parent.executable"] == "/usr/sbin/nginx"
    assert doc["process.parent.command_line"] == "nginx: worker process"
    assert doc["user.name"] == "www-data" and doc["user.id"] == "33"
    assert doc["host.id"] == "4c4c4544003957108052b4c04f384833" and doc["host.name"] == "web-1"
    assert doc["rule.name"] == "sysdream anomaly" and doc["agent.version"] == "0.1.0"
    assert doc["sysdream.score"] == 3.5 and doc["sysdream.unknown_syscalls"] == ["ptrace"]
    old = flatten(formats.ecs("anomaly", kinds.CRIT, "m", older_alert(), ID))
    assert old["container.id"] == "f" * 64 and old["container.runtime"] == "docker"
    for gone in ("host.id", "process.hash.sha256", "process.entity_id", "process.start",
                 "process.parent.command_line", "event.start", "event.reason"):
        assert gone not in old                   # absent, not written empty
    assert "" not in old.values() and -1 not in old.values()
    assert old["agent.version"]                  # the installed package's version


def test_an_ecs_event_that_breaks_ecs_is_caught():
    """The check itself can fail: a made-up name, a pid as text, a kind ECS lacks."""
    _, defs = ecs_fields()
    doc = formats.ecs("anomaly", kinds.CRIT, "m", alert(), ID)
    doc["process"]["exe_path"] = "/x"
    doc["process"]["pid"] = "4242"
    doc["event"]["kind"] = "anomaly"
    doc["event"]["type"] = ["creation"]
    found = ecs_problems(doc, defs)
    assert any(p.startswith("process.exe_path: not an ECS field") for p in found)
    assert any(p.startswith("process.pid: '4242' is not long") for p in found)
    assert any(p.startswith("event.kind:") for p in found)
    assert any(p.startswith("event.type ['creation'] not expected for process") for p in found)


@pytest.fixture(scope="module")
def ocsf_schema():
    s = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=formats.OCSF_VERSION))

    def validator(class_uid: int):
        return jsonschema.Draft202012Validator(s.get_class_schema(
            class_name=s.lookup_class_name_from_uid(class_uid=class_uid), profiles=[]))
    return validator


def test_ocsf_output_is_a_valid_detection_finding(ocsf_schema):
    v = ocsf_schema(2004)
    for a in (alert(), older_alert()):
        doc = formats.ocsf("anomaly", kinds.CRIT, "anomalous syscalls in sh", a, ID)
        assert list(v.iter_errors(doc)) == [], doc
        assert doc["class_uid"] == 2004 and doc["type_uid"] == 200401
        assert doc["metadata"]["version"] == formats.OCSF_VERSION
    doc = formats.ocsf("anomaly", kinds.CRIT, "m", alert(), ID)
    proc = doc["evidences"][0]["process"]
    assert proc["pid"] == 4242 and proc["file"]["path"] == "/usr/bin/dash"
    assert proc["file"]["hashes"] == [{"algorithm_id": 3, "algorithm": "SHA-256",
                                       "value": SHA}]
    assert proc["parent_process"]["file"]["path"] == "/usr/sbin/nginx"
    assert proc["user"] == {"name": "www-data", "uid": "33"}
    assert doc["time"] == 1795955343250 and doc["severity_id"] == 4
    assert doc["device"]["uid"] == "4c4c4544003957108052b4c04f384833"
    assert doc["start_time"] == 1795955341000 and doc["end_time"] == 1795955342500
    assert doc["unmapped"]["score"] == 3.5
    old = formats.ocsf("anomaly", kinds.CRIT, "m", older_alert(), ID)
    assert "hashes" not in old["evidences"][0]["process"]["file"]
    assert old["evidences"][0]["container"] == {"uid": "f" * 64, "runtime": "docker"}
    assert "start_time" not in old and "uid" not in old["device"]


def test_ocsf_service_events_are_base_events_and_a_broken_finding_is_refused(ocsf_schema):
    ev = formats.ocsf("model-loaded", kinds.INFO, "model loaded",
                      {"time": 1795955343.25, "model_id": "m-1"},
                      kinds.MESSAGE_IDS["model-loaded"])
    assert list(ocsf_schema(0).iter_errors(ev)) == [] and ev["severity_id"] == 1
    doc = formats.ocsf("anomaly", kinds.CRIT, "m", alert(), ID)
    del doc["finding_info"]
    doc["evidences"][0]["process"]["pid"] = "4242"
    errors = {e.message for e in ocsf_schema(2004).iter_errors(doc)}
    assert "'finding_info' is a required property" in errors
    assert "'4242' is not of type 'integer'" in errors


FALCO_FIELDS = Path(__file__).resolve().parent / "data" / "falco-fields.txt"
FALCO_JSON = {"INT64": int, "UINT64": int, "UINT32": int, "INT32": int, "PID": int,
              "CHARBUF": str, "STRING": str, "FSPATH": str, "BOOL": bool}


def falco_problems(output_fields: dict) -> list[str]:
    """Names Falco does not have, or values of another type than Falco writes."""
    known = dict(line.split() for line in FALCO_FIELDS.read_text().splitlines()
                 if line and not line.startswith("#"))
    out = []
    for name, v in output_fields.items():
        if name.startswith("sysdream."):
            continue
        if name not in known:
            out.append(f"{name}: not a Falco field")
            continue
        want = int if name == "evt.time" else FALCO_JSON[known[name]]  # ns in json_output
        if not isinstance(v, want) or (isinstance(v, bool) and want is not bool):
            out.append(f"{name}: {v!r} is not {known[name]}")
    return out


def test_falco_output_fields_are_falcos_names_and_types():
    for a in (alert(), older_alert(), alert(exe_flags=["memfd"])):
        of = formats.falco("anomaly", kinds.CRIT, "m", a, ID)["output_fields"]
        assert falco_problems(of) == [], of
    assert falco_problems({"proc.exe_path": "/x", "proc.pid": "1"}) == [
        "proc.exe_path: not a Falco field", "proc.pid: '1' is not INT64"]


def test_falco_output_uses_falcos_own_field_names():
    doc = formats.falco("anomaly", kinds.CRIT, "m", alert(), ID)
    of = doc["output_fields"]
    assert of["proc.exepath"] == "/usr/bin/dash" and of["proc.name"] == "sh"
    assert of["proc.cmdline"] == "sh -c cat /etc/shadow"       # Falco: name + args
    assert of["proc.args"] == "-c cat /etc/shadow" and of["proc.exe"] == "sh"
    assert of["proc.pname"] == "nginx" and of["proc.pexepath"] == "/usr/sbin/nginx"
    assert of["proc.ppid"] == 4000 and of["proc.pcmdline"] == "nginx: worker process"
    assert of["user.name"] == "www-data" and of["user.uid"] == 33
    assert of["container.id"] == "host"                        # Falco's word for no container
    assert of["evt.time"] == 1795955343250000000
    assert "user.loginuid" not in of                           # unset (-1): left out
    assert of["sysdream.alert_id"] == alert()["alert_id"]      # and every own field
    assert doc["priority"] == "Critical" and doc["rule"] == "sysdream anomaly"
    inside = formats.falco("anomaly", kinds.CRIT, "m", older_alert(), ID)["output_fields"]
    assert inside["container.id"] == "f" * 12                  # Falco's short id
    assert inside["container.full_id"] == "f" * 64 and "container.full_id" not in of
    mem = formats.falco("anomaly", kinds.CRIT, "m", alert(exe_flags=["memfd"]), ID)
    assert mem["output_fields"]["proc.is_exe_from_memfd"] is True


def test_every_format_is_plain_json():
    for fmt in formats.FORMATS:
        doc = formats.shape(fmt, "anomaly", kinds.CRIT, "m", alert(), ID)
        assert json.loads(json.dumps(doc)) == doc


def test_printable_escapes_every_unicode_format_character():
    """Bidi overrides (U+202E), isolates (U+2066), zero-width (U+200B) and every other
    Cf character are shown as escapes, in names from the kernel and in text read back."""
    cf = [chr(o) for o in range(sys.maxunicode + 1) if unicodedata.category(chr(o)) == "Cf"]
    assert len(cf) > 150
    for c in cf:
        out = printable(c)
        assert out.isascii() and out.startswith("\\") and out == reprinted(c), (hex(ord(c)))
    assert printable("invoice\u202efdp.exe".encode()) == "invoice\\u202efdp.exe"
    assert printable("a\u2066b\u200bc\U000e0041") == "a\\u2066b\\u200bc\\U000e0041"
    assert printable("\u202e") != printable("\\u202e")           # escape and text differ
    assert printable("caf\u00e9 \u65e5\u672c") == "caf\u00e9 \u65e5\u672c"   # letters stay


def test_the_daemon_writes_ecs_lines_and_posts_ocsf_with_escaped_bidi_text(
        ebpf_ready, tmp_path, tiny_bundle, ocsf_schema):
    from test_sinks import Receiver

    rx = Receiver()
    prog = workload(tmp_path)
    # limits high enough that the benign run's alerts never hold back the odd run's, and
    # every severity to the sinks: this test is about their formats
    cfg = config(tmp_path, f"""
[alerts]
rate_limit_burst = 1000
rate_limit_ceiling_per_minute = 10000
min_severity = "low"
[alerts.webhook]
enabled = true
url = "{rx.url}"
format = "ocsf"
""")
    out = tmp_path / "alerts.jsonl"
    d = Daemon(["--config", str(cfg), "--model", str(tiny_bundle), "--state-dir",
                str(tmp_path / "state"), "--no-journald", "--json-lines", str(out),
                "--json-format", "ecs", "--comm", "sdwork"], tmp_path)
    try:
        d.wait_attached()
        run_script(prog, BENIGN)
        run_script(prog, ": \u202eexe.txt\u200b; " + ODD)
        docs = wait_for(lambda: [x for x in map(json.loads, out.read_text().splitlines())
                                 if x.get("event", {}).get("kind") == "alert"], 60,
                        "an ECS alert\n" + d.stderr)
        _, defs = ecs_fields()
        for doc in docs:
            assert ecs_problems(doc, defs) == [], doc
        first = wait_for(lambda: [x for x in map(json.loads, out.read_text().splitlines())
                                  if "exe.txt" in x.get("process", {}).get("command_line", "")
                                  and x["event"]["kind"] == "alert"], 60,
                         "an ECS alert of the odd run\n" + d.stderr)[0]
        assert first["process"]["name"] == "sdwork" and first["process"]["pid"] > 0
        assert "\\u202eexe.txt\\u200b" in first["process"]["command_line"]
        assert "\u202e" not in out.read_text() and "\\u202e" in out.read_text()
        posted = wait_for(lambda: [doc for _, doc in rx.got if doc["class_uid"] == 2004
                                   and doc["finding_info"]["uid"] == first["event"]["id"]],
                          30, "the same alert posted as an OCSF finding")
        for _, doc in rx.got:
            assert list(ocsf_schema(doc["class_uid"]).iter_errors(doc)) == [], doc
        assert "\\u202eexe.txt" in posted[0]["evidences"][0]["process"]["cmd_line"]
        rc, _ = d.stop()
        assert rc == 0, d.stderr
    finally:
        d.kill()
        rx.close()
