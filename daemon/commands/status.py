"""`sysdream status`, `sysdream config check` and `sysdream model show`: what an operator
asks of a host (is it running and healthy; will this configuration load; what does this
model expect), each as text or as one JSON object (--format json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..exitcodes import Exit


def add_parsers(sub) -> None:
    st = sub.add_parser("status", help="the running daemon: phase, model, learning "
                        "progress, alerts by severity, outputs' health",
                        description="Reads the status the daemon writes to its state "
                        "directory every [service] status_interval_s (status.json). Exit 0 "
                        "while it runs, 17 when it does not or its status is stale.")
    st.add_argument("--config", help="configuration file, for the state directory")
    st.add_argument("--state-dir", help="[service] state_directory")
    st.add_argument("--format", choices=("text", "json"), default="text")

    cf = sub.add_parser("config", help="config check: does the configuration (and its "
                        "conf.d drop-ins) load? exit 0, or 12 with FILE:LINE and the fix, "
                        "like nginx -t; nothing is started")
    cf.add_argument("action", choices=("check",), help="check")
    cf.add_argument("--config", help="configuration file (default "
                    "/etc/sysdream/sysdream.toml, then conf.d/*.toml beside it)")
    cf.add_argument("--format", choices=("text", "json"), default="text")

    md = sub.add_parser("model", help="model show [MODEL]: a bundle's bounds per program, "
                        "expected false alerts an hour, training data and signature")
    md.add_argument("action", choices=("show",), help="show")
    md.add_argument("model", nargs="?", metavar="MODEL", help="bundle directory (default: "
                    "the configuration's model)")
    md.add_argument("--config", help="configuration file, for the default model path")
    md.add_argument("--format", choices=("text", "json"), default="text")


def _emit(doc: dict, fmt: str, text_lines: list[str]) -> None:
    if fmt == "json":
        print(json.dumps(doc, sort_keys=True))
    else:
        print("\n".join(text_lines))


def run_status(args) -> int:
    from .. import config
    from ..service import statusfile

    state = Path(args.state_dir) if args.state_dir else \
        config.load(args.config, required=bool(args.config)).state_dir()
    try:
        doc = statusfile.read(state)
    except ValueError as exc:
        if args.format == "json":
            print(json.dumps({"running": False, "error": str(exc)}))
        else:
            print(f"sysdream: not running: {exc}", file=sys.stderr)
        return int(Exit.NOT_RUNNING)
    lines = [f"sysdream {doc.get('version', '?')}: "
             f"{'running' if doc['running'] else 'NOT running'} (pid {doc.get('pid')}, "
             f"status written {doc['age_s']:.0f} s ago)",
             f"phase: {doc.get('phase')}" + (
                 f", learning {100 * doc.get('learning_progress', 0):.0f}% done"
                 if doc.get("phase") in ("learning", "training") else ""),
             f"model: {doc.get('model_id') or '(none yet)'} ({doc.get('model_path', '')})",
             "alerts: " + (", ".join(f"{n} {sev}" for sev, n in doc.get("alerts", {}).items())
                           or "none") + f" ({doc.get('alerts_total', 0)} in all)",
             f"syscalls: {doc.get('syscalls_read', 0)} read, {doc.get('syscalls_lost', 0)} "
             "lost"]
    for name, s in sorted(doc.get("sinks", {}).items()):
        lines.append(f"output {name}: {'ok' if s.get('healthy') else 'FAILING'} "
                     f"({s.get('sent', 0)} sent, {s.get('failed', 0)} failed, "
                     f"{s.get('dropped', 0)} dropped, {s.get('pending', 0)} waiting)")
    lines.append(f"status: {doc.get('status', '')}")
    _emit(doc, args.format, lines)
    return int(Exit.OK) if doc["running"] else int(Exit.NOT_RUNNING)


def run_config_check(args) -> int:
    """ConfigError propagates to the CLI edge: one line, FILE:LINE first, exit 12."""
    from .. import config

    p = Path(args.config) if args.config else config.DEFAULT_PATH
    cfg = config.load(args.config, required=bool(args.config))
    cfg.capture_settings()          # what the kernel would refuse (e.g. too many filters)
    files = ([str(p)] if p.is_file() else []) + [str(q) for q in config.dropins(p)]
    doc = {"ok": True, "files": files, "source": cfg.source}
    _emit(doc, args.format, [f"sysdream: configuration {cfg.source} is ok"
                             + ("" if files else " (no file: the defaults)")])
    return int(Exit.OK)


def model_summary(path: Path) -> dict:
    """What `model show` prints: BundleError when the bundle does not load."""
    from sysdream.model.detector import Detector

    from ..detect.view import ModelView

    det = Detector.load(path)
    alert = ModelView(det).alert
    t = det.training or {}
    sig = _json(path / "signature.json")
    return {
        "path": str(path), "model_id": det.model_id, "arch": det.cfg.arch,
        "task": det.cfg.task, "window": det.cfg.window,
        "trained_at": t.get("trained_at", ""),
        "training_seconds": t.get("seconds"), "best_epoch": t.get("best_epoch"),
        "training_data": t.get("data", {}), "calibration_data": t.get("calibration_data", {}),
        "window_bound": det.bound.bound, "window_confidence": det.bound.confidence,
        "alert_bound": alert.bound if alert is not None else None,
        "alert_confidence": alert.confidence if alert is not None else None,
        "program_bounds": dict(sorted(alert.bounds().items())) if alert is not None else {},
        "expected_false_alerts_per_hour":
            alert.expected_per_hour() if alert is not None else None,
        "calibration_seconds": alert.seconds if alert is not None else None,
        "lineage_profile": det.lineage is not None,
        "signature": {"algorithm": sig.get("algorithm", ""), "key_id": sig.get("key_id", "")}
        if sig else None,
    }


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def run_model_show(args) -> int:
    from .. import config
    from ..context.printable import printable

    path = Path(args.model) if args.model else config.load(args.config).model_path()
    doc = model_summary(path)
    rate = doc["expected_false_alerts_per_hour"]
    lines = [f"model {doc['model_id']} ({doc['path']}): {doc['arch']} {doc['task']}, "
             f"window {doc['window']}, trained {doc['trained_at'] or 'at an unknown time'}",
             f"window bound {doc['window_bound']:.4f} ({doc['window_confidence']:.2%})"]
    if doc["alert_bound"] is None:
        lines.append("alert bound: none fitted (a dataset model: [detection] "
                     "evidence_exceedances decides)")
    else:
        lines.append(f"alert bound {doc['alert_bound']:.3g} for programs without their own "
                     f"({doc['alert_confidence']:.2%}); expected false alerts: "
                     f"{rate:.3g} an hour of activity like the "
                     f"{doc['calibration_seconds'] / 3600:.2g} h held out")
        for prog, b in doc["program_bounds"].items():
            lines.append(f"  {printable(prog)}: {b:.3g}")
    lines.append(f"training data: {json.dumps(doc['training_data'], sort_keys=True)[:300]}")
    lines.append(f"calibration data: "
                 f"{json.dumps(doc['calibration_data'], sort_keys=True)[:300]}")
    sig = doc["signature"]
    lines.append(f"lineage profile: {'yes' if doc['lineage_profile'] else 'no'}; signature: "
                 + (f"{sig['algorithm']} by key {sig['key_id']}" if sig else "none"))
    _emit(doc, args.format, lines)
    return int(Exit.OK)
