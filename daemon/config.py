"""The daemon's configuration: TOML (stdlib tomllib), every key checked at start.

The shipped default, packaging/sysdream.toml, documents every key; a test checks that it
lists exactly the keys below with the same defaults. An unknown key or a bad value is a
ConfigError naming the file, the line, the key and the expected form. The [capture]
filter keys come from the filter table, probes/filters.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

from sysdream.model import archs
from sysdream.probes.filters import FILTERS, Filter

from .alerting.formats import FORMATS
from .detect.evidence import GRADED_MAX
from .detect.news import PACKAGE_MANAGERS, PERSISTENCE, PERSISTENCE_FORM, persistence_ok

DEFAULT_PATH = Path("/etc/sysdream/sysdream.toml")


class ConfigError(ValueError):
    """The configuration cannot be used (exit code 12)."""


@dataclass(frozen=True)
class Key:
    default: Any
    kind: type | tuple          # the TOML type(s) accepted
    check: Callable[[Any], bool] = lambda v: True
    form: str = ""              # what a good value looks like, for the message
    doc: str = ""               # what the key does, where the shipped file's comment
                                # covers several keys (docs/configuration.md prefers it)


def _pow2(lo: int, hi: int) -> Callable[[int], bool]:
    return lambda v: lo <= v <= hi and not v & (v - 1)


def _rng(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: lo <= v <= hi


def _paths(v) -> bool:
    return all(isinstance(x, str) and x.startswith("/") and "\0" not in x for x in v)


def _filter_key(f: Filter) -> Key:
    return Key([], list, lambda v: all(f.accepts(x) for x in v), f.form, f.doc)


def _hostport(v: str) -> bool:
    host, _, port = v.rpartition(":")
    return bool(host.strip("[]")) and port.isdigit() and 0 < int(port) < 65536


def _endpoint(v: str) -> bool:
    return v.startswith("tcp://") and _hostport(v[6:].replace("*", "0.0.0.0"))


_FACILITIES = ("kern", "user", "daemon", "auth", "syslog", "authpriv",
               *(f"local{i}" for i in range(8)))
NUM = (int, float)
_FORMAT_FORM = ('"sysdream" (the alert\'s own fields), "ecs" (Elastic Common Schema 8), '
                '"ocsf" (OCSF Detection Finding) or "falco" (Falco\'s JSON)')
SCHEMA: dict[str, dict[str, Key]] = {
    "service": {
        "state_directory": Key("/var/lib/sysdream", str, lambda v: v.startswith("/"),
                               "an absolute path"),
        "model": Key("", str, lambda v: v == "" or v.startswith("/"),
                     'an absolute path to a bundle directory, or ""'),
        "status_interval_s": Key(10.0, NUM, _rng(0.1, 3600), "seconds, 0.1 to 3600"),
        "trusted_keys": Key([], list, _paths, "a list of absolute paths of .pub files"),
        "log_level": Key("info", str, lambda v: v in ("debug", "info", "warning", "error"),
                         "one of debug, info, warning, error"),
    },
    "capture": {
        "chunk": Key(64, int, _pow2(8, 1024), "a power of two from 8 to 1024"),
        "flush_age_s": Key(1.0, NUM, _rng(0.001, 3600), "seconds, 0.001 to 3600"),
        "ring_buffer_pages": Key(1024, int, _pow2(1, 1 << 18), "a power of two"),
        "strict_compat": Key(False, bool, form="true or false"),
        "context": Key(True, bool, form="true or false"),
        **{f.key: _filter_key(f) for f in FILTERS},
    },
    "learning": {
        "baseline_seconds": Key(3600.0, NUM, _rng(1, 30 * 86400), "seconds, 1 to 2592000"),
        "min_syscalls": Key(100000, int, _rng(100, 10**10), "an integer, 100 or more"),
        "max_syscalls": Key(50000000, int, _rng(1000, 10**11), "an integer, 1000 or more"),
        "arch": Key(archs.DEFAULT, str, lambda v: v in archs.ARCHS,
                    "one of " + ", ".join(archs.ARCHS)),
        "window": Key(16, int, _rng(2, 256), "an integer, 2 to 256"),
        "hidden": Key(32, int, _rng(4, 1024), "an integer, 4 to 1024"),
        "embed": Key(32, int, _rng(4, 1024), "an integer, 4 to 1024"),
        "epochs": Key(15, int, _rng(1, 1000), "an integer, 1 to 1000"),
        "threads": Key(1, int, _rng(1, 256), "an integer, 1 to 256"),
        "nice": Key(19, int, _rng(0, 19), "an integer, 0 to 19"),
        "sequences": Key(False, bool, form="true or false"),
        "folds": Key(1, int, _rng(1, 3), "an integer, 1 to 3"),
        "condition": Key("", str, lambda v: v in ("", "head", "decoder"),
                         '"" (none), "head" or "decoder"'),
        "signing_key": Key("", str, lambda v: v == "" or v.startswith("/"),
                           '"" or the absolute path of a .key file'),
    },
    "retraining": {
        "interval_s": Key(0.0, NUM, lambda v: v == 0 or 10 <= v <= 365 * 86400,
                          "0 (off), or seconds from 10 to 31536000, e.g. 604800 (weekly)"),
        "record_seconds": Key(3600.0, NUM, _rng(1, 30 * 86400), "seconds, 1 to 2592000"),
        "shadow_seconds": Key(600.0, NUM, _rng(1, 7 * 86400), "seconds, 1 to 604800"),
        "near": Key(0.5, NUM, lambda v: 0 < v <= 1, "a fraction above 0, at most 1"),
        "program_share": Key(0.25, NUM, lambda v: 0 < v <= 1,
                             "a fraction above 0, at most 1"),
        "keep": Key(3, int, _rng(1, 100), "an integer, 1 to 100"),
        # A candidate whose window or alert bounds (its own or a program's) rose more than
        # this fraction over the model in use's is rejected: a patient attacker otherwise
        # ratchets the bounds up one retraining at a time (docs/security.md).
        "max_bound_rise": Key(0.5, NUM, lambda v: 0 < v <= 10,
                              "a fraction above 0, at most 10 (0.5: a bound may rise by "
                              "half per retraining)"),
    },
    "detection": {
        "confidence": Key(0.0, NUM, lambda v: v == 0 or 0.5 <= v < 1,
                          "0 (the model's own), or from 0.5 to below 1, e.g. 0.999"),
        "evidence_windows": Key(8, int, _rng(1, 10000), "an integer, 1 to 10000"),
        "evidence_exceedances": Key(0, NUM, lambda v: 0 <= v <= 80000,
                                    "0 (the model's alert bound), or a number of windows' "
                                    "worth up to 8 x evidence_windows"),
        "lineage": Key(True, bool, form="true or false"),
        "max_threads": Key(16384, int, _rng(16, 10**7), "an integer, 16 or more"),
        "max_processes": Key(32768, int, _rng(16, 10**7), "an integer, 16 or more"),
        "cache_windows": Key(200000, int, _rng(0, 10**8), "an integer, 0 (no cache) or more"),
        "queue_windows": Key(20000, int, _rng(16, 10**8), "an integer, 16 or more"),
        "batch_windows": Key(512, int, _rng(1, 65536), "an integer, 1 to 65536"),
        "batch_wait_ms": Key(20, int, _rng(0, 10000), "milliseconds, 0 to 10000"),
        "torch_threads": Key(1, int, _rng(1, 256), "an integer, 1 to 256"),
    },
    "alerts": {
        "journald": Key(True, bool, form="true or false"),
        "json_lines": Key("", str, lambda v: v in ("", "-") or v.startswith("/"),
                          '"", "-" (standard output) or an absolute file path'),
        "json_format": Key("sysdream", str, lambda v: v in FORMATS,
                           _FORMAT_FORM),
        "rate_limit_burst": Key(5, int, _rng(1, 10**6), "an integer, 1 or more"),
        "rate_limit_interval_s": Key(60.0, NUM, _rng(0.001, 86400), "seconds, up to 86400"),
        "rate_limit_ceiling_per_minute": Key(60, int, _rng(1, 10**6),
                                             "an integer, 1 or more"),
        "suppressed_summary_s": Key(60.0, NUM, _rng(1, 86400), "seconds, 1 to 86400"),
        "explain_positions": Key(5, int, _rng(1, 64), "an integer, 1 to 64"),
        "min_severity": Key("medium", str, lambda v: v in ("low", "medium", "high"),
                            '"low", "medium" or "high"'),
        "incident_span_s": Key(300.0, NUM, _rng(1, 86400), "seconds, 1 to 86400"),
    },
    "profiles": {
        "enabled": Key(True, bool, form="true or false"),
        "min_events": Key(50, int, _rng(1, 10**9), "an integer, 1 or more"),
        "max_unseen": Key(0.05, NUM, lambda v: 0 < v < 1, "a fraction above 0, below 1"),
        "save_interval_s": Key(300.0, NUM, _rng(1, 86400), "seconds, 1 to 86400"),
        "persistence_paths": Key(list(PERSISTENCE), list, persistence_ok, PERSISTENCE_FORM),
        "package_managers": Key(list(PACKAGE_MANAGERS), list, _paths,
                                "a list of absolute paths of executables"),
    },
    "alerts.syslog": {
        "enabled": Key(False, bool, form="true or false"),
        "address": Key("", str, lambda v: v == "" or _hostport(v),
                       '"HOST:PORT" (an IPv6 address in brackets: "[::1]:514")'),
        "protocol": Key("udp", str, lambda v: v in ("udp", "tcp", "tls"),
                        '"udp", "tcp" or "tls" (RFC 5425, port 6514 by convention)'),
        "ca_file": Key("", str, lambda v: v == "" or v.startswith("/"),
                       '"" (the system\'s CAs) or an absolute path'),
        "facility": Key("authpriv", str, lambda v: v in _FACILITIES,
                        f"one of {', '.join(_FACILITIES)}"),
        "max_bytes": Key(8192, int, _rng(480, 65000),
                         "bytes, 480 to 65000 (a UDP datagram is cut there)"),
        "queue": Key(1000, int, _rng(1, 10**6), "an integer, 1 or more"),
        "events": Key(False, bool, form="true or false"),
    },
    "alerts.webhook": {
        "enabled": Key(False, bool, form="true or false"),
        "url": Key("", str, lambda v: v == "" or v.startswith(("http://", "https://")),
                   "an http:// or https:// URL"),
        "format": Key("sysdream", str, lambda v: v in FORMATS,
                      _FORMAT_FORM),
        "headers": Key([], list, lambda v: all(isinstance(x, str) and ":" in x
                                               and "\n" not in x for x in v),
                       'a list of "Name: value" strings'),
        "headers_file": Key("", str, lambda v: v == "" or v.startswith("/"),
                            '"" or the absolute path of a file of "Name: value" lines, '
                            "not readable by other users"),
        "headers_credential": Key("", str,
                                  lambda v: v == "" or bool(re.fullmatch(r"[\w.@-]{1,255}", v)),
                                  '"" or the name of a systemd credential '
                                  "(LoadCredential=NAME:FILE) holding such lines"),
        "timeout_s": Key(5.0, NUM, _rng(0.1, 300), "seconds, 0.1 to 300"),
        "retries": Key(5, int, _rng(0, 100), "an integer, 0 to 100"),
        "backoff_s": Key(1.0, NUM, _rng(0.01, 600), "seconds, 0.01 to 600"),
        "queue": Key(1000, int, _rng(1, 10**6), "an integer, 1 or more"),
        "ca_file": Key("", str, lambda v: v == "" or v.startswith("/"),
                       '"" (the system\'s CAs) or an absolute path'),
        "events": Key(False, bool, form="true or false"),
    },
    "fleet": {
        "server": Key("", str, lambda v: v == "" or _endpoint(v),
                      '"" (not an agent) or the server\'s "tcp://HOST:PORT"'),
        "server_key": Key("", str, lambda v: v == "" or v.startswith("/"),
                          '"" or the absolute path of the server\'s .curve file'),
        "key": Key("", str, lambda v: v == "" or v.startswith("/"),
                   '"" or the absolute path of this agent\'s .curve-secret file'),
        "role": Key("default", str, lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v)),
                    "a name of letters, digits, _, . or - (1 to 64)"),
        "timeout_ms": Key(250, int, _rng(10, 60000), "milliseconds, 10 to 60000"),
        "retry_s": Key(5.0, NUM, _rng(0.1, 3600), "seconds, 0.1 to 3600"),
        "events": Key("", str, lambda v: v == "" or _endpoint(v),
                      '"" (the server\'s host, its port + 1) or "tcp://HOST:PORT"'),
        "fetch_s": Key(30.0, NUM, _rng(1, 86400), "seconds, 1 to 86400"),
    },
    "server": {
        "bind": Key("tcp://0.0.0.0:7478", str, _endpoint, '"tcp://HOST:PORT"'),
        "publish": Key("tcp://0.0.0.0:7479", str, _endpoint, '"tcp://HOST:PORT"'),
        "key": Key("/etc/sysdream/keys/server.curve-secret", str, lambda v: v.startswith("/"),
                   "the absolute path of the server's .curve-secret file"),
        "agents": Key("/etc/sysdream/agents", str, lambda v: v.startswith("/"),
                      "the absolute path of a folder of agents' .curve files"),
        "models": Key("/var/lib/sysdream-server/models", str, lambda v: v.startswith("/"),
                      "the absolute path of a folder of model bundles"),
        "workers": Key(2, int, _rng(0, 256), "an integer, 0 to 256"),
        "batch_windows": Key(4096, int, _rng(1, 8192), "an integer, 1 to 8192"),
        "device": Key("auto", str, lambda v: v in ("auto", "cpu", "cuda"),
                      '"auto" (CUDA when torch sees a GPU), "cpu" or "cuda"'),
        "worker_bind": Key("", str, lambda v: v == "" or _endpoint(v),
                           '"" (no remote workers) or "tcp://HOST:PORT"'),
        "worker_keys": Key("/etc/sysdream/workers", str, lambda v: v.startswith("/"),
                           "the absolute path of a folder of workers' .curve files"),
        "baselines": Key("/var/lib/sysdream-server/baselines", str,
                         lambda v: v.startswith("/"), "an absolute path"),
        "train_after_s": Key(60.0, NUM, _rng(0, 86400), "seconds, 0 to 86400"),
        # 2: one host (one stolen key) alone never trains the model every agent takes
        "min_hosts": Key(2, int, _rng(1, 100000), "an integer, 1 or more (1 lets one "
                         "host teach its role's model alone)"),
        "max_trainings": Key(1, int, _rng(1, 64), "an integer, 1 to 64: roles training "
                             "at once"),
        "host_share": Key(0.5, NUM, _rng(0.01, 1), "a fraction, 0.01 to 1"),
        "metrics_address": Key("127.0.0.1", str, lambda v: bool(v),
                               "an IP address to listen on"),
        "metrics_port": Key(9478, int, _rng(0, 65535), "a TCP port, 0 to 65535"),
    },
    "worker": {
        "server": Key("", str, lambda v: v == "" or _endpoint(v),
                      '"" or the server\'s [server] worker_bind, "tcp://HOST:PORT"'),
        "server_key": Key("/etc/sysdream/server.curve", str, lambda v: v.startswith("/"),
                          "the absolute path of the server's .curve file"),
        "key": Key("/etc/sysdream/keys/worker.curve-secret", str,
                   lambda v: v.startswith("/"),
                   "the absolute path of this worker's .curve-secret file"),
        "models": Key("/var/lib/sysdream-worker/models", str, lambda v: v.startswith("/"),
                      "an absolute path"),
        "device": Key("auto", str, lambda v: v in ("auto", "cpu", "cuda"),
                      '"auto" (CUDA when torch sees a GPU), "cpu" or "cuda"'),
        "batch_windows": Key(4096, int, _rng(1, 8192), "an integer, 1 to 8192"),
    },
    "metrics": {
        "enabled": Key(True, bool, form="true or false"),
        "address": Key("127.0.0.1", str, lambda v: bool(v) and (
            not v.startswith("unix:") or v.startswith("unix:/")),
            'an IP address to listen on, or "unix:/PATH" for a unix socket (mode 0660: '
            "who may scrape is who may enter its directory)"),
        "port": Key(9477, int, _rng(0, 65535), "a TCP port, 0 to 65535 (0: any free one)"),
        "exe_labels": Key(64, int, _rng(1, 10000), "an integer, 1 to 10000"),
        "web_config": Key("", str, lambda v: v == "" or v.startswith("/"),
                          '"" (plain HTTP) or the absolute path of a Prometheus web '
                          "configuration file (YAML; docs/security.md)"),
        # Off: every local user can scrape 127.0.0.1, and per-program alert bounds and
        # the retraining schedule tell an attacker how far to go and when (docs/security.md).
        "detection_internals": Key(False, bool, form="true or false"),
    },
}


# When a changed key takes effect in a running `sysdream run`: at a reload (SIGHUP) unless
# named here, in which case at the next start, and a reload says so and keeps the value
# the daemon started with. What each needs: the BPF program is compiled with [capture]'s
# (and its context ring buffer made); the state directory holds the allow list and what
# is being recorded; the cache, the metrics' socket and label budget and the fleet
# server's connection are made once; torch's threads are set before the scorer starts.
# The server's and the worker's sections are read when `sysdream server` or `sysdream
# worker` starts (their
# SIGHUP reads the agents' keys again, not the file).
RESTART = "restart"
RELOAD = "reload"
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "service": ("state_directory",),
    "capture": ("chunk", "flush_age_s", "ring_buffer_pages", "strict_compat", "context"),
    "profiles": ("enabled",),
    "detection": ("cache_windows", "torch_threads"),
    "fleet": ("*",),
    "metrics": ("*",),
    "server": ("*",),
    "worker": ("*",),
}


def applies_at(section: str, key: str) -> str:
    """RELOAD or RESTART: when a changed [section] key takes effect in a running daemon."""
    fixed = RESTART_ONLY.get(section, ())
    return RESTART if "*" in fixed or key in fixed else RELOAD


def _section_type(section: str, keys: dict[str, Key]) -> type:
    """A frozen dataclass with one field per key of `section` (the section alerts.syslog
    gives AlertsSyslogSection)."""
    name = "".join(p.title() for p in re.split(r"[._]", section)) + "Section"
    return make_dataclass(name, [(k, Any) for k in keys], frozen=True)


class Config:
    """Checked settings: `cfg.section.key` (each section a frozen dataclass, lists as
    tuples), the raw `values` by section, plus where they came from."""

    def __init__(self, values: dict[str, dict[str, Any]], source: str):
        self.values, self.source = values, source
        for section, keys in values.items():     # [alerts.syslog]: cfg.alerts_syslog
            setattr(self, section.replace(".", "_"), SECTIONS[section](
                **{k: tuple(v) if isinstance(v, list) else v for k, v in keys.items()}))

    def section(self, name: str):
        """The frozen dataclass of [name] ("alerts.syslog" too)."""
        return getattr(self, name.replace(".", "_"))

    def restart_changes(self, new: Config) -> list[tuple[str, str]]:
        """The (section, key) pairs `new` changes that apply only at the next start."""
        return [(s, k) for s, keys in SCHEMA.items() for k in keys
                if applies_at(s, k) == RESTART and self.values[s][k] != new.values[s][k]]

    def keeping(self, old: Config, keys: list[tuple[str, str]]) -> Config:
        """This configuration with `keys` at their values in `old` (a reload keeps what
        applies only at the next start)."""
        values = {s: dict(v) for s, v in self.values.items()}
        for s, k in keys:
            values[s][k] = old.values[s][k]
        return Config(values, self.source)

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def capture_settings(self, cgroups=None):
        """The capture settings; cgroup path patterns are resolved to the ids of the
        cgroups that match now (`cgroups`: a daemon.cgroups.CgroupPaths)."""
        from sysdream.probes.capture import CaptureSettings

        c = self.values["capture"]
        return CaptureSettings(
            chunk=c["chunk"], flush_age_s=float(c["flush_age_s"]),
            ring_buffer_pages=c["ring_buffer_pages"], strict_compat=c["strict_compat"],
            context=c["context"], acts=self.values["profiles"]["enabled"],
            **filter_settings(c, cgroups)).validate()

    def scorer_settings(self):
        """The scorer's settings (daemon.pipeline.ScorerSettings)."""
        from .detect.scorer import ScorerSettings

        d = self.values["detection"]
        return ScorerSettings(d["evidence_exceedances"], d["evidence_windows"],
                              d["cache_windows"], d["batch_windows"], d["batch_wait_ms"],
                              self.values["alerts"]["explain_positions"])

    def state_dir(self) -> Path:
        return Path(self.values["service"]["state_directory"])

    def model_path(self) -> Path:
        m = self.values["service"]["model"]
        return Path(m) if m else self.state_dir() / "model"


def filter_settings(values: dict[str, Any], cgroups=None) -> dict[str, tuple]:
    """CaptureSettings' filter fields from filter values by [capture] key (a missing key:
    none); cgroup path patterns resolved to the ids of the cgroups that match now."""
    out = {f.key: tuple(values.get(f.key, ())) for f in FILTERS if not f.into}
    for f in FILTERS:
        if f.into:      # only exclude_cgroup_paths, which daemon/context/cgroups.py resolves
            out[f.into] = excluded_cgroups(out[f.into], values.get(f.key, ()), cgroups)
    return out


def excluded_cgroups(ids, patterns, cgroups=None) -> tuple[int, ...]:
    """Cgroup ids to exclude: those given, and those whose paths match `patterns`."""
    if not patterns:
        return tuple(ids)
    from .context.cgroups import CgroupPaths

    cgroups = cgroups if cgroups is not None else CgroupPaths()
    return tuple(sorted(set(ids) | cgroups.matching(tuple(patterns))))


SECTIONS: dict[str, type] = {s: _section_type(s, keys) for s, keys in SCHEMA.items()}


def defaults() -> dict[str, dict[str, Any]]:
    return {s: {k: (list(v.default) if isinstance(v.default, list) else v.default)
                for k, v in keys.items()} for s, keys in SCHEMA.items()}


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")
_ASSIGN = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _lines(text: str) -> dict[tuple[str, str], int]:
    """(section, key) -> line number, for messages (tomllib keeps no positions)."""
    out: dict[tuple[str, str], int] = {}
    section = ""
    for n, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            section = m.group(1)
            out.setdefault((section, ""), n)
        elif m := _ASSIGN.match(line):
            out.setdefault((section, m.group(1)), n)
    return out


def _type_ok(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def check(data: dict, source: str, text: str = "") -> Config:
    """Merge `data` (parsed TOML) over the defaults, refusing unknown keys and bad values."""
    return _checked([(data, source, text)], source)


def _merge(values: dict, data: dict, source: str, text: str, where: dict) -> None:
    """One file's keys over `values`, each checked; `where` learns the file:line of
    every key it sets (for messages about keys that depend on each other)."""
    lines = _lines(text)

    def at(section: str, key: str = "") -> str:
        line = lines.get((section, key)) or lines.get((section, ""))
        return f"{source}:{line}" if line else source

    tables = []
    for section, table in data.items():     # [alerts.syslog] arrives as alerts = {syslog}
        if isinstance(table, dict):
            subs = {k for k, v in table.items()
                    if isinstance(v, dict) and f"{section}.{k}" in SCHEMA}
            tables += [(f"{section}.{k}", table[k]) for k in sorted(subs)]
            table = {k: v for k, v in table.items() if k not in subs}
        tables.append((section, table))
    for section, table in tables:
        if section not in SCHEMA:
            raise ConfigError(f"{at(section)}: unknown section [{section}] (known: "
                              f"{', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{at('', section)}: {section} must be a [{section}] table")
        where[(section, "")] = at(section)
        for key, value in table.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                raise ConfigError(f"{at(section, key)}: unknown key {key!r} in [{section}] "
                                  f"(known: {', '.join(SCHEMA[section])})")
            if not _type_ok(value, spec.kind) or not spec.check(value):
                raise ConfigError(f"{at(section, key)}: [{section}] {key} = {value!r}: "
                                  f"expected {spec.form or spec.kind.__name__}")
            values[section][key] = value
            where[(section, key)] = at(section, key)


def _checked(layers: list[tuple[dict, str, str]], source: str) -> Config:
    """The defaults, then each (data, file, text) in order, then the checks of keys that
    depend on each other (named where the file that set them last says)."""
    values = defaults()
    where: dict[tuple[str, str], str] = {}
    for data, src, text in layers:
        _merge(values, data, src, text, where)

    def at(section: str, key: str = "") -> str:
        return where.get((section, key)) or where.get((section, "")) or source

    d = values["detection"]
    if d["evidence_exceedances"] > GRADED_MAX * d["evidence_windows"]:
        raise ConfigError(f"{at('detection', 'evidence_exceedances')}: [detection] "
                          f"evidence_exceedances = {d['evidence_exceedances']}: expected at "
                          f"most {GRADED_MAX:g} x evidence_windows "
                          f"({GRADED_MAX * d['evidence_windows']:g}), what the evidence can "
                          "reach")
    f = values["fleet"]
    if f["server"] and not (f["key"] and f["server_key"]):
        raise ConfigError(f"{at('fleet', 'server')}: an agent needs its own key and the "
                          "server's: set [fleet] key and server_key (sysdream keygen "
                          "--curve)")
    sv = values["server"]
    if sv["workers"] == 0 and not sv["worker_bind"]:
        raise ConfigError(f"{at('server', 'workers')}: [server] workers = 0 and no "
                          "worker_bind: nothing would score; set workers to 1 or more, or "
                          "worker_bind for remote workers")
    for section, key in (("alerts.syslog", "address"), ("alerts.webhook", "url")):
        if values[section]["enabled"] and not values[section][key]:
            raise ConfigError(f"{at(section, 'enabled')}: [{section}] is enabled but has no "
                              f"{key}; set {key} or enabled = false")
    return Config(values, source)


MAX_CONFIG = 1 << 20      # bytes: the shipped file with every comment is a few kB


def dropins(main: Path) -> list[Path]:
    """The drop-ins of a configuration file: conf.d/*.toml beside it, in name order."""
    d = main.parent / "conf.d"
    try:
        return sorted((q for q in d.iterdir() if q.suffix == ".toml" and q.is_file()),
                      key=lambda q: q.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        raise ConfigError(f"{d}: cannot list the drop-ins (permission denied); fix its "
                          "permissions") from None


def load(path: str | Path | None, required: bool = False) -> Config:
    """Read `path` (default /etc/sysdream/sysdream.toml), then conf.d/*.toml beside it in
    name order, each key over the one before (systemd's drop-in rule). A missing default
    file means the defaults (and the drop-ins); a missing file the user named is an error."""
    p = Path(path) if path else DEFAULT_PATH
    layers = []
    try:
        layers.append(_read(p))
    except FileNotFoundError:
        if path is not None or required:
            raise ConfigError(f"{p}: no such configuration file; copy "
                              "packaging/sysdream.toml there or name another with "
                              "--config") from None
    extra = dropins(p)
    for q in extra:
        try:
            layers.append(_read(q))
        except FileNotFoundError:       # removed while we read the folder
            continue
    if not layers:
        return Config(defaults(), "(defaults)")
    return _checked(layers, str(p) if not extra else f"{p} (+ conf.d: "
                    f"{', '.join(q.name for q in extra)})")


def _read(p: Path) -> tuple[dict, str, str]:
    """(data, file name, text) of one TOML file; FileNotFoundError when absent."""
    try:
        if p.is_file() and p.stat().st_size > MAX_CONFIG:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes, over the {MAX_CONFIG >> 10} "
                              "KiB a configuration may hold; name the sysdream.toml with "
                              "--config")
        text = p.read_text()
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{p}: cannot read the configuration ({why}); fix its "
                          "permissions or name another with --config") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))     # file:line, as nginx -t says it
        raise ConfigError(f"{p}{':' + line.group(1) if line else ''}: not valid TOML: "
                          f"{exc}") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deep to be a sysdream configuration; copy "
                          "packaging/sysdream.toml and edit it") from None
    return data, str(p), text


def override(cfg: Config, changes: dict[tuple[str, str], Any]) -> Config:
    """Apply command-line overrides (already parsed), checked like file values."""
    data = {s: dict(v) for s, v in cfg.values.items()}
    for (section, key), value in changes.items():
        if value is not None:
            data[section][key] = value
    suffix = " with command-line overrides"     # once, however many layers of them
    return check(data, cfg.source if cfg.source.endswith(suffix) else cfg.source + suffix)


def parse_set(items: list[str]) -> dict[tuple[str, str], Any]:
    """`--set section.key=value` (as Falco's -o): the value read as TOML (a number, true,
    a ["list"]), else as a string. ConfigError for a key the schema does not have."""
    out: dict[tuple[str, str], Any] = {}
    for item in items:
        name, eq, raw = item.partition("=")
        section, _, key = name.strip().rpartition(".")
        if not eq or not section or not key:
            raise ConfigError(f"--set {item!r}: write it as SECTION.KEY=VALUE, e.g. "
                              "detection.evidence_exceedances=4")
        if key not in SCHEMA.get(section, {}):
            raise ConfigError(f"--set {item!r}: no key {key!r} in [{section}]; the keys are "
                              "in packaging/sysdream.toml")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[(section, key)] = value
    return out
