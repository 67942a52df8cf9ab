"""The `sysdream` command line. Errors a user can fix become one line and an exit code."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path

from sysdream.model.bundle import BundleError
from sysdream.probes import errors
from sysdream.probes.filters import FILTERS

from ..alerting.formats import FORMATS
from ..config import ConfigError
from ..exitcodes import (
    Exit,
    FleetEndpointError,
    MetricsPortError,
    MissingPackageError,
    StateDirError,
    UntrustedError,
    exit_code_for,
)

EPILOG = """\
examples:
  sysdream doctor                      can this host capture? one line per check, with the fix
  sysdream top                         live syscalls/s per process, and what was lost
  sysdream top --comm nginx --comm sshd    only these process names
  sysdream top --replay base.sdtrace   per-process totals of a recorded trace
  sysdream record --seconds 60 -o base.sdtrace    capture every process for a minute
  sysdream record --seconds 10 --pid 1234 -o p.sdtrace    one process
  sysdream run                         the service's main job, in the foreground: learn
                                       this host, then detect (alerts to journald)
  sysdream run --model model --no-journald --json-lines -    detect now, alerts on stdout
  sysdream status                      is the daemon running? phase, model, alerts, outputs
  sysdream config check                does the configuration load? (exit 12: FILE:LINE why)
  sysdream model show /var/lib/sysdream/model    its bounds per program, expected false
                                       alerts an hour, training data, signature
  sysdream explain --alert-id ID       explain an alert from journald (or --json FILE)
  sysdream train --input base.sdtrace -o model    learn normal behaviour from a recording
  sysdream train --input adfa-ld -o adfa-model    ... or from a public dataset
  sysdream score base2.sdtrace --model model    the alerts a recording would raise
  sysdream eval --dataset adfa-ld      every method against the baselines, as a table
  sysdream eval --dataset unm:synthetic-sendmail --arch dream,em
  sysdream keygen --curve -o /etc/sysdream/keys --name web-1    a fleet key pair
  sysdream server                      the fleet's scoring server ([server])
  sysdream agent --server tcp://10.0.0.1:7478    run, the server scoring ([fleet])
  sysdream worker --server tcp://10.0.0.1:7480    score for a server, on another machine

exit codes: 0 ok, 2 usage, 3 no privileges, 4 no bpf(), 5 tracepoint missing,
6 kernel headers missing, 7 bcc missing, 8 no ring buffer, 9 BPF program failed
to load, 10 bad trace file, 11 bad model bundle, 12 bad configuration, 13 metrics
port taken or unusable, 14 state directory not writable, 15 fleet server address
cannot be bound, 16 score --exit-status found an anomalous window, 17 status: the
daemon is not running, 18 a journald alert sysdream did not write, 19 a Python
package an option needs is not installed (matplotlib for --plot), 130 interrupted
(Ctrl-C; SIGTERM stops with 0), 1 internal error (a bug).
"""


INPUTS_HELP = """\
inputs: a trace file from `sysdream record`, a dataset file or folder, or a dataset name:
  adfa-ld[:ROOT]      ADFA-LD's training split
  unm:PROGRAM         a UNM program's normal traces, e.g. unm:synthetic-sendmail
  adfa:PATH unm:PATH lidds:PATH trace:PATH   read PATH (file or folder) as that kind
  PATH                *.sdtrace, *.sc (LID-DS) or *.txt (ADFA-LD) by name
"""


def _add_filters(p: argparse.ArgumentParser, chunk_default: int | None = 64) -> None:
    g = p.add_argument_group("capture filters (the daemon itself is always excluded)")
    for f in FILTERS:
        g.add_argument(f.flag, type=f.type, action="append", default=[], help=f.help,
                       metavar=f.metavar)
    g.add_argument("--chunk", type=int, default=chunk_default,
                   help="syscall ids per kernel record, a power of two (default 64)")
    g.add_argument("--strict-compat", action="store_true",
                   help="x86_64: name each syscall by its entry's table, so int 0x80 from "
                        "64-bit code is read as i386 (about 55 ns per syscall)")


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--config", help="configuration file (default "
                     "/etc/sysdream/sysdream.toml; defaults when that is absent)")
    run.add_argument("--model", help="use this model bundle ([service] model)")
    run.add_argument("--state-dir", help="[service] state_directory")
    run.add_argument("--learn-seconds", type=float, help="[learning] baseline_seconds")
    run.add_argument("--metrics-address", help="[metrics] address")
    run.add_argument("--metrics-port", type=int, help="[metrics] port")
    run.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    run.add_argument("--json-lines", help='[alerts] json_lines: "-" or a file')
    run.add_argument("--json-format", choices=FORMATS,
                     help="[alerts] json_format: the layout of --json-lines (sysdream's own "
                          "fields, Elastic Common Schema, OCSF or Falco's JSON)")
    run.add_argument("--no-journald", action="store_true", help="alerts not to journald")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="any configuration key, e.g. --set detection.confidence=0.999 "
                          "(repeatable; after the file and the flags above)")
    _add_filters(run, chunk_default=None)


def filter_values(args: argparse.Namespace) -> dict[str, list]:
    """The filter flags given, by [capture] key; file paths made absolute."""
    out = {}
    for f in FILTERS:
        values = getattr(args, f.dest)
        if values:
            out[f.key] = [str(Path(v).absolute()) for v in values] if f.path else list(values)
    return out


def _settings(args: argparse.Namespace):
    from sysdream.probes.capture import CaptureSettings

    from ..config import filter_settings

    return CaptureSettings(chunk=args.chunk, strict_compat=args.strict_compat,
                           **filter_settings(filter_values(args))).validate()


def _capture(args: argparse.Namespace):
    from sysdream.probes.capture import Capture

    return Capture(_settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sysdream", description="Learn a host's normal syscall behaviour and flag "
        "processes that depart from it.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    kg = sub.add_parser("keygen", help="make an Ed25519 key pair that signs model bundles, "
                        "or (--curve) a CurveZMQ pair for the fleet")
    kg.add_argument("-o", "--output", required=True, metavar="DIR",
                    help="folder for NAME.key (private, 0600) and NAME.pub; with --curve "
                         "NAME.curve-secret (0600) and NAME.curve")
    kg.add_argument("--name", default="sysdream", help="the keys' name (default sysdream); "
                    "for --curve, how the server's metrics and logs name this agent")
    kg.add_argument("--curve", action="store_true", help="a CurveZMQ key pair (fleet "
                    "agents and server) instead of a signing key")
    kg.add_argument("--format", choices=("text", "json"), default="text",
                    help="two lines (default) or one JSON object naming the two files")

    doc = sub.add_parser("doctor", help="check that capture can work here, with the fix for "
                         "each failure")
    doc.add_argument("--format", choices=("text", "json"), default="text",
                     help="one line per check (default) or one JSON object")

    top = sub.add_parser("top", help="live per-process syscall rates and losses")
    _add_filters(top)
    top.add_argument("--interval", type=float, default=1.0, help="seconds per refresh")
    top.add_argument("--rows", type=int, default=15)
    top.add_argument("--iterations", type=int, default=None, help="stop after N refreshes")
    top.add_argument("--replay", metavar="TRACE", help="summarise a recorded trace instead")
    top.add_argument("--format", choices=("text", "json"), default="text",
                     help="the table (default) or one JSON object a refresh")

    rec = sub.add_parser("record", help="capture syscalls to a trace file")
    _add_filters(rec)
    rec.add_argument("--seconds", type=float, required=True, help="how long to record")
    rec.add_argument("-o", "--output", required=True, help="trace file to write")
    rec.add_argument("--format", choices=("text", "json"), default="text",
                     help="the summary as a line on stderr (default) or one JSON object "
                          "on stdout")

    from .train import add_model_arguments

    tr = sub.add_parser("train", help="train, calibrate and save a model bundle",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description=INPUTS_HELP)
    tr.add_argument("--input", nargs="+", required=True, metavar="INPUT",
                    help="normal traces: trace files, dataset files or folders, adfa-ld, "
                         "unm:PROGRAM")
    tr.add_argument("--calibrate", nargs="+", metavar="INPUT", help="other normal traces for "
                    "the bound (default: a seeded fifth of the blocks of 10 windows of --input)")
    tr.add_argument("--labels", metavar="FILE", help="a file listing anomalous traces, one "
                    "input per line: adds the supervised transfer classifier")
    tr.add_argument("-o", "--output", required=True, help="bundle directory to write")
    tr.add_argument("--alert-confidence", type=float, default=None, metavar="C",
                    help="confidence of the alert bound fitted on a host recording's "
                         "held-out last quarter (default: the least, not below --confidence, "
                         "that expects at most 1 false alert an hour)")
    tr.add_argument("--sign", metavar="KEY", help="sign the bundle with this private key "
                    "(`sysdream keygen`), for hosts with [service] trusted_keys")
    tr.add_argument("--max-share", type=float, default=None, metavar="F",
                    help="with several inputs, none gives more than this fraction of the "
                         "syscalls trained on (a fleet role's hosts)")
    tr.add_argument("--progress-fd", type=int, default=None, metavar="FD",
                    help="for a supervising process: progress as JSON lines on this open "
                         "file descriptor (a stage and each epoch; the daemon's learner "
                         "reads them)")
    tr.add_argument("--sequences", action="store_true",
                    help="for a host recording: the lineage profile also learns each "
                         "program's 6-syscall sequences, and a run of ones a program never "
                         "made is evidence (stide per program; off by default: "
                         "docs/benchmarks.md, \"Scenario suite\", has why)")
    tr.add_argument("--condition", choices=("head", "decoder"), default="",
                    help="for a host recording: the network reads each thread's program "
                         "(executable, an interpreter's script): as a token heading every "
                         "window's context (head), also fed to DReAM's decoder at every step "
                         "(decoder), so one program's normal is not another's "
                         "(docs/model.md, \"Conditioned on the program\")")
    tr.add_argument("--folds", type=int, default=1, choices=(1, 2, 3),
                    help="for a host recording: how many quarters of it, the newest first, "
                         "are held out to fit the alert bound on, each by a network (and "
                         "lineage profile) trained on the rest (default 1; each more is one "
                         "more training)")
    tr.add_argument("--retrain", action="store_true",
                    help="for a host recording: after fitting the alert bound with a model "
                         "trained on the first three quarters, train once more on all of it "
                         "(twice the time; the bound carries over)")
    g = tr.add_argument_group("retraining (what the daemon's scheduled retraining passes)")
    g.add_argument("--recent", nargs="+", default=[], metavar="TRACE",
                   help="trace files recorded while a model detected, trained on after "
                        "--guard has removed what may be an attack being taught")
    g.add_argument("--guard", metavar="MODEL", help="the model that detected during --recent: "
                   "its whole alert rule replays them, and a process whose evidence came "
                   "near its alert bound is dropped around that moment")
    g.add_argument("--guard-near", type=float, default=0.5, metavar="F",
                   help="what 'near' is: this fraction of the alert bound (default 0.5)")
    g.add_argument("--program-share", type=float, default=0.25, metavar="F",
                   help="no program gives more than this fraction of --recent's syscalls "
                        "(default 0.25; equal shares are always allowed)")
    g.add_argument("--allowed", metavar="FILE", help="an allow list (STATE/allow.json): the "
                   "window of every entry's alert is trained on as normal")
    tr.add_argument("--format", choices=("text", "json"), default="text",
                    help="the summary as a line on stderr (default) or one JSON object on "
                         "stdout (progress stays on stderr)")
    add_model_arguments(tr)

    ev = sub.add_parser("eval", help="evaluate models and baselines on a labelled dataset")
    ev.add_argument("--dataset", required=True,
                    help="adfa-ld[:ROOT], unm:PROGRAM, or files (with --normal/--attack)")
    ev.add_argument("--normal", nargs="+", default=[], metavar="INPUT")
    ev.add_argument("--attack", nargs="+", default=[], metavar="INPUT")
    ev.add_argument("--no-baselines", action="store_true",
                    help="skip the baselines (stide, n-gram, DeepLog, covering)")
    ev.add_argument("--baselines", default="", metavar="NAMES",
                    help="only these baselines, comma-separated (stide, n-gram, DeepLog, "
                         "covering)")
    ev.add_argument("--combine", action="store_true",
                    help="also combine evidence at the trace level: standardised sums of the "
                         "network and the baselines, likelihood ratios against a 2-gram "
                         "background, and other trace aggregations of the network's window "
                         "scores (scores the calibration traces too)")
    ev.add_argument("--limit", type=int, default=0, help="at most N sequences per part "
                    "(a quick look, not the protocol)")
    ev.add_argument("--transfer-fraction", type=float, default=0.0,
                    help="also evaluate the transfer step with this fraction of attacks labelled")
    ev.add_argument("--json", default="eval-results.json", help="where to write the results")
    ev.add_argument("--plot", default="eval-roc.png", help="ROC plot (PNG); '' for none")
    ev.add_argument("--format", choices=("text", "json"), default="text",
                    help="the table (default) or the results (as --json writes them) as "
                         "one JSON object on stdout")
    add_model_arguments(ev)

    sc = sub.add_parser("score", help="score recorded traces with a model bundle, offline")
    # one input style across the verbs: --input, as train takes it; the positional
    # form of earlier releases is still read, unlisted
    sc.add_argument("--input", nargs="+", default=[], dest="input_flag", metavar="INPUT",
                    help="traces, as for train")
    sc.add_argument("input", nargs="*", help=argparse.SUPPRESS)
    sc.add_argument("--model", required=True, help="model bundle directory")
    sc.add_argument("--format", choices=("text", "json"), default="text",
                    help="json: one JSON object per sequence")
    sc.add_argument("--max-alerts", type=int, default=5, help="alerts shown per sequence")
    sc.add_argument("--exit-status", action="store_true",
                    help="exit 16 when any window is anomalous (1 stays an internal error)")

    run = sub.add_parser("run", help="the service's main job, in the foreground",
                         description="Learn this host (when there is no model), then detect: "
                         "alerts to journald, metrics on 127.0.0.1. Settings come from the "
                         "configuration file; these flags override it.")
    _add_run_arguments(run)
    ag = sub.add_parser("agent", help="run, as an agent of a fleet server that scores its "
                        "windows", description="`sysdream run` whose cache misses are scored "
                        "by a fleet server ([fleet] in the configuration); alerts stay on "
                        "this host, and the local model scores whenever the server does not "
                        "answer in time.")
    _add_run_arguments(ag)
    ag.add_argument("--server", help="[fleet] server, e.g. tcp://10.0.0.1:7478")
    ag.add_argument("--server-key", help="[fleet] server_key: the server's .curve file")
    ag.add_argument("--key", help="[fleet] key: this agent's .curve-secret file")
    ag.add_argument("--role", help="[fleet] role")
    sv = sub.add_parser("server", help="the fleet's scoring server, in the foreground",
                        description="Score the windows of the agents of a fleet ([server] in "
                        "the configuration): a CurveZMQ ROUTER in front of worker "
                        "processes, its own and `sysdream worker`s on other machines.")
    _add_section_flags(sv, "server")
    wk = sub.add_parser("worker", help="score for a fleet server, on a machine of its own",
                        description="An inference worker on another machine ([worker] in the "
                        "configuration): connects to the server's [server] worker_bind over "
                        "CurveZMQ, fetches the server's models, and scores what its broker "
                        "hands it.")
    _add_section_flags(wk, "worker")

    al = sub.add_parser("allow", help="mark a false alert's pattern benign; list or remove "
                        "such entries", description="An allowed pattern stops alerting at "
                        "once (the running daemon reads the state directory's allow.json "
                        "every second; probes stay attached).")
    what = al.add_mutually_exclusive_group()
    what.add_argument("--alert-id", help="the alert's pattern: its fingerprint (same "
                      "executable, lineage and kind of surprise), found in journald")
    what.add_argument("--fingerprint", help="alerts with this fingerprint")
    what.add_argument("--exe", help="every alert of this executable (absolute path; broad)")
    what.add_argument("--lineage", help="alerts whose lineage matches this shell pattern, "
                      "e.g. '* > cron > sh > /usr/local/bin/backup.sh'")
    what.add_argument("--list", action="store_true", help="the entries, one per line")
    what.add_argument("--remove", metavar="ID", help="remove an entry")
    al.add_argument("--comment", help="why (kept with the entry)")
    al.add_argument("--json-lines", metavar="FILE", help="find --alert-id in this JSON-lines "
                    "file instead of journald")
    al.add_argument("--config", help="configuration file, for the state directory")
    al.add_argument("--state-dir", help="[service] state_directory")
    al.add_argument("--format", choices=("text", "json"), default="text",
                    help="one line each (default) or one JSON object")

    from .status import add_parsers
    add_parsers(sub)

    ex = sub.add_parser("explain", help="explain one alert: per-position table and an "
                        "attention heat map")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--alert-id", help="the alert's id (SYSDREAM_ALERT_ID), found in "
                     "journald, or in --json-lines FILE")
    src.add_argument("--json", metavar="FILE", help="a file holding the alert as a JSON "
                     "line (from [alerts] json_lines, or `journalctl -o json`); - for stdin")
    src.add_argument("--cursor", help="the alert's journald cursor (__CURSOR)")
    ex.add_argument("--model", help="the bundle that raised it (default: the state "
                    "directory's model)")
    ex.add_argument("--config", help="configuration file, for the default model path")
    ex.add_argument("--plot", default="", help="write the attention heat map to this PNG")
    ex.add_argument("--json-lines", metavar="FILE", help="find --alert-id in this JSON-lines "
                    "file instead of journald")
    ex.add_argument("--format", choices=("text", "json"), default="text",
                    help="the table (default) or one JSON object")
    from ..version import build_info
    b = build_info()
    text = f"sysdream {b['version']} (python {b['python']}, kernel {b['kernel']})"
    for p in [parser, *sub.choices.values()]:     # --version on every verb, as on the verb
        p.add_argument("--version", action="version", version=text)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "doctor":
        from . import doctor
        return doctor.run(fmt=args.format)
    if args.verb == "top":
        from . import top
        if args.replay:
            from sysdream.probes.tracefile import TraceReplay
            return top.run(TraceReplay(args.replay), rows=args.rows, fmt=args.format)
        with _capture(args) as cap:
            return top.run(cap, args.interval, args.rows, args.iterations,
                           fmt=args.format)
    if args.verb == "record":
        from . import record
        return record.run(_settings(args), args.seconds, args.output, fmt=args.format)
    if args.verb == "keygen" and args.format == "json":
        if args.curve:
            from ..fleet.keys import keygen as curve_keygen
            secret, public = curve_keygen(args.output, args.name)
        else:
            from ..signing import keygen as signing_keygen
            secret, public = signing_keygen(args.output, args.name)
        print(json.dumps({"private": str(secret), "public": str(public),
                          "kind": "curve" if args.curve else "ed25519"}))
        return 0
    if args.verb == "keygen" and args.curve:
        from ..fleet.keys import keygen
        secret, public = keygen(args.output, args.name)
        print(f"{secret} (secret: only this host reads it)\n{public} (public: on the "
              "server, copy an agent's into [server] agents; on an agent, the server's is "
              "[fleet] server_key)")
        return 0
    if args.verb == "keygen":
        from ..signing import keygen
        private, public = keygen(args.output, args.name)
        print(f"{private} (private: keep it where only the signer reads it)\n{public} "
              "(public: list it in [service] trusted_keys)")
        return 0
    if args.verb == "train":
        from .train import run_train
        return run_train(args)
    if args.verb == "eval":
        from .evaluate import run_eval
        return run_eval(args)
    if args.verb == "score":
        from .score import run_score
        return run_score(args)
    if args.verb in ("run", "agent"):
        return _run(args)
    if args.verb == "server":
        return _server(args)
    if args.verb == "worker":
        return _worker(args)
    if args.verb == "explain":
        from .explain import run_explain
        return run_explain(args)
    if args.verb in ("status", "config", "model"):
        from . import status
        return {"status": status.run_status, "config": status.run_config_check,
                "model": status.run_model_show}[args.verb](args)
    if args.verb == "allow":
        from .. import config
        from ..alerting import allow
        state = Path(args.state_dir) if args.state_dir else \
            config.load(args.config, required=bool(args.config)).state_dir()
        return allow.run(args, state)
    raise AssertionError(args.verb)


def run_overrides(args: argparse.Namespace) -> dict:
    """`sysdream run` flags as configuration overrides (None: not given)."""
    o = {("service", "model"): args.model and str(Path(args.model).resolve()),
         ("service", "state_directory"): args.state_dir and str(Path(args.state_dir).resolve()),
         ("learning", "baseline_seconds"): args.learn_seconds,
         ("metrics", "address"): args.metrics_address,
         ("metrics", "port"): args.metrics_port,
         ("metrics", "enabled"): False if args.no_metrics else None,
         ("alerts", "json_lines"): args.json_lines if args.json_lines in (None, "-", "")
         else str(Path(args.json_lines).absolute()),  # not resolved: a link is refused
         ("alerts", "journald"): False if args.no_journald else None,
         ("alerts", "json_format"): args.json_format,
         ("capture", "chunk"): args.chunk,
         ("capture", "strict_compat"): True if args.strict_compat else None}
    o.update({("capture", key): values for key, values in filter_values(args).items()})
    if args.verb == "agent":
        o.update({("fleet", "server"): args.server, ("fleet", "role"): args.role,
                  ("fleet", "server_key"): args.server_key and
                  str(Path(args.server_key).absolute()),
                  ("fleet", "key"): args.key and str(Path(args.key).absolute())})
    return o


def _run(args: argparse.Namespace) -> int:
    from .. import config
    from ..service.loop import Service

    def load() -> config.Config:
        cfg = config.override(config.load(args.config, required=bool(args.config)),
                              run_overrides(args))
        return config.override(cfg, config.parse_set(args.set)) if args.set else cfg

    cfg = load()
    if args.verb == "agent" and not cfg.fleet.server:
        raise config.ConfigError(f"{cfg.source}: an agent needs its server: set [fleet] "
                                 "server (or --server tcp://HOST:PORT)")
    svc = Service(cfg, reload_config=load)
    try:
        svc.start()
        return svc.run()
    finally:
        svc.close()


# `sysdream server` and `sysdream worker`: each flag sets one key of the verb's section
# (flag, key, Path for a path made absolute, a tuple of choices, or a type; help)
SECTION_FLAGS = {
    "server": (("--bind", "bind", None, "e.g. tcp://0.0.0.0:7478"),
               ("--publish", "publish", None, ""),
               ("--key", "key", Path, "the server's .curve-secret file"),
               ("--agents", "agents", Path, "folder of agents' .curve files"),
               ("--models", "models", Path, "folder of model bundles"),
               ("--workers", "workers", int, ""),
               ("--device", "device", ("auto", "cpu", "cuda"), ""),
               ("--metrics-port", "metrics_port", int, "")),
    "worker": (("--server", "server", None, "the server's worker_bind, e.g. "
                "tcp://10.0.0.1:7480"),
               ("--server-key", "server_key", Path, "the server's .curve file"),
               ("--key", "key", Path, "this worker's .curve-secret file"),
               ("--models", "models", Path, "where fetched models are kept"),
               ("--device", "device", ("auto", "cpu", "cuda"), "")),
}


def _add_section_flags(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--config", help="configuration file (default "
                   "/etc/sysdream/sysdream.toml)")
    for flag, key, kind, text in SECTION_FLAGS[section]:
        kw = {"choices": kind} if isinstance(kind, tuple) else \
            {"type": kind} if kind in (int, float) else {}
        p.add_argument(flag, help=f"[{section}] {key}" + (f": {text}" if text else ""), **kw)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="any configuration key (repeatable)")


def _section_config(args: argparse.Namespace, section: str):
    """The configuration file with the verb's flags and --set applied in one override
    (keys that depend on each other are checked together)."""
    from .. import config
    flags = {}
    for flag, key, kind, _ in SECTION_FLAGS[section]:
        v = getattr(args, flag.lstrip("-").replace("-", "_"))
        flags[(section, key)] = str(Path(v).absolute()) if kind is Path and v else v
    return config.override(config.load(args.config, required=bool(args.config)),
                           {**flags, **config.parse_set(args.set)})


def _server(args: argparse.Namespace) -> int:
    from ..fleet import server
    return server.run(_section_config(args, "server"))


def _worker(args: argparse.Namespace) -> int:
    from .. import config
    from ..fleet import worker
    cfg = _section_config(args, "worker")
    if not cfg.worker.server:
        raise config.ConfigError(f"{cfg.source}: a worker needs its server: set [worker] "
                                 "server (or --server tcp://HOST:PORT, the server's "
                                 "[server] worker_bind)")
    return worker.remote(cfg)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a damaged trace read up to the damage) as one line, not Python's two."""
    print(f"sysdream: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    from ..service import runtime

    # SIGTERM stops like Ctrl-C (probes are detached on the way out) but, asked for, exits 0
    signal.signal(signal.SIGTERM, runtime.raise_terminated)
    try:
        rc = _dispatch(args)
        return int(Exit.INTERRUPTED) if rc == 0 and runtime.stopped_by == signal.SIGINT \
            else rc
    except runtime.Terminated:
        return int(Exit.OK)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    except ConfigError as exc:
        print(f"sysdream: error: {exc}", file=sys.stderr)
        return int(Exit.BAD_CONFIG)
    except ValueError as exc:
        print(f"sysdream: error: {exc}", file=sys.stderr)
        return int(Exit.USAGE)
    except (errors.CaptureError, errors.TraceFileError, BundleError, MetricsPortError,
            StateDirError, FleetEndpointError, UntrustedError, MissingPackageError) as exc:
        print(f"sysdream: error: {exc}", file=sys.stderr)
        return int(exit_code_for(exc))


if __name__ == "__main__":
    sys.exit(main())
