"""`sysdream explain`: one alert, rescored with its model, position by position.

The alert carries the window's syscalls and the context the model read before them, so the
window can be scored again from the alert alone: the table shows each position's observed
syscall and its probability, the syscall the model expected and its probability, and the
surprise (NLL); --plot draws the attention weights as a heat map.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from sysdream.probes.errors import TraceFileError

from ..alerting import origin
from ..alerting.fields import MAX_ALERT_LINE, json_lines
from ..context.printable import reprinted


def _field(alert: dict, name: str):
    if name in alert:
        return alert[name]
    return alert.get(f"SYSDREAM_{name.upper()}")


def _names(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split()


def _novelty(value) -> list[dict]:
    """The alert's lineage events: a list (JSON lines) or its JSON text (journald)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return []
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _state_dir(args) -> Path | None:
    """The state directory whose owner is the service's user (None: no configuration)."""
    from .. import config
    try:
        return config.load(getattr(args, "config", None)).state_dir()
    except (config.ConfigError, OSError):
        return None


def read_alert(args) -> dict:
    if getattr(args, "alert_id", None):
        from ..alerting.allow import find_alert
        try:
            alert = find_alert(args.alert_id, args.json_lines, _state_dir(args))
        except ValueError as exc:
            raise TraceFileError(str(exc)) from None
        where = f"alert {args.alert_id}"
    elif args.cursor:
        try:
            out = subprocess.run(["journalctl", "-o", "json", "--no-pager", "--cursor",
                                  args.cursor, "-n", "all"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TraceFileError(f"cannot run journalctl: {exc}") from None
        first = out.stdout.splitlines()[:1]
        if out.returncode or not first:
            raise TraceFileError(f"journald has no entry at cursor {args.cursor!r}"
                                 f"{': ' + out.stderr.strip() if out.stderr.strip() else ''}")
        where = f"cursor {args.cursor}"
        alert = next(json_lines(io.StringIO(first[0])), None)
        if alert is not None:       # only an entry sysdream wrote (alerting/origin.py)
            alert = origin.pick([alert], f"explain --cursor {args.cursor}", _state_dir(args))
            print(f"alert written by {origin.origin(alert)}", file=sys.stderr)
    else:
        where = args.json
        try:
            if args.json == "-":
                alert = next(json_lines(sys.stdin), None)
            else:
                with open(args.json, encoding="utf-8", errors="replace") as f:
                    alert = next(json_lines(f), None)
        except OSError as exc:
            raise TraceFileError(f"{args.json}: {exc.strerror}") from None
    if alert is None:
        raise TraceFileError(f"{where}: not a JSON alert (one JSON object per line of at "
                             f"most {MAX_ALERT_LINE} characters, as written by [alerts] "
                             "json_lines or `journalctl -o json`)")
    if _field(alert, "kind") != "anomaly":
        raise TraceFileError(f"{where}: not a sysdream anomaly alert (no kind=anomaly field)")
    if not _names(_field(alert, "syscalls")):
        raise TraceFileError(f"{where}: the alert lists no syscalls")
    return alert


def run_explain(args) -> int:
    from sysdream.model import archs
    from sysdream.model.detector import Detector
    from sysdream.model.windows import Geometry

    if args.plot:           # before any work: without matplotlib, the fix in one line
        from .plots import pyplot
        pyplot()
    alert = read_alert(args)
    fmt = getattr(args, "format", "text")       # callers that build args by hand: text
    if args.model:
        path = Path(args.model)
    else:
        from .. import config
        path = config.load(args.config).model_path()
    det = Detector.load(path)
    model_id = str(_field(alert, "model_id") or "")
    if model_id and model_id != det.model_id:
        print(f"sysdream explain: warning: the alert came from model {model_id}, this is "
              f"{det.model_id}; the figures below are this model's", file=sys.stderr)
    geom = Geometry.of(det.cfg)
    p, lead = geom.window, geom.lead
    target = _names(_field(alert, "syscalls"))[:p]
    context = _names(_field(alert, "context"))[-lead:]
    span = ["<pad>"] * (lead - len(context)) + context + target + ["<pad>"] * (p - len(target))
    names = np.array(span, dtype=object)
    tokens = det.vocab.encode(names)[None, :]
    (ex,), s = det.explain_spans(tokens, np.array([len(target)]), lead, [names],
                                 top=len(target), batch=1)
    unknown = det.vocab.unknown(names)
    try:
        offset = int(_field(alert, "position") or 0)
    except (TypeError, ValueError, OverflowError):
        offset = 0
    out = [f"alert: {reprinted(str(_field(alert, 'comm')))} pid {_field(alert, 'pid')} "
           f"({reprinted(str(_field(alert, 'exe') or '')) or 'exe unknown'}), syscalls "
           f"{offset}-{offset + len(target) - 1} of its thread"]
    why = _field(alert, "why")
    if why:
        out.append(f"why: {reprinted(str(why))}")
    for label, name in (("command line", "cmdline"), ("parent", "parent_cmdline"),
                        ("user", "user"), ("lineage", "lineage_text"), ("cgroup", "cgroup"),
                        ("container", "container_id"), ("executable", "exe_flags"),
                        ("sha256", "exe_sha256"), ("alert id", "alert_id"),
                        ("fingerprint", "fingerprint"), ("entity", "entity_id"),
                        ("time", "time_rfc3339")):
        value = _field(alert, name)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        if value not in (None, "", -1, "-1"):
            out.append(f"{label}: {reprinted(str(value))}")
    out.append(f"score {float(s.score[0]):.4f}, bound {det.bound.bound:.4f} "
               f"({det.bound.confidence:.1%}): "
               f"{'ABOVE the bound' if det.bound.exceeds(s.score)[0] else 'within the bound'}")
    if unknown:
        out.append(f"never seen in training: {', '.join(unknown)}")
    out.append(f"evidence: {_field(alert, 'evidence')}")
    novelty = _novelty(_field(alert, "novelty"))
    for e in novelty:
        out.append(f"new to this host: {e.get('kind')} {reprinted(str(e.get('what', '')))} "
                   f"(p={e.get('p')}, worth {e.get('weight')} windows above the bound)")
    out.append(f"{'pos':>5}  {'observed':20} {'p(obs)':>8}  {'expected':20} {'p(exp)':>7} "
               f"{'surprise':>8}")
    positions = []
    top3 = np.sort(s.nll[0][:len(target)])[-3:].min()
    for j in range(len(target)):
        exp = str(det.vocab.decode([s.expected[0, j]])[0])
        positions.append({"position": offset + j, "observed": target[j],
                          "observed_p": float(s.observed_p[0, j]), "expected": exp,
                          "expected_p": float(s.expected_p[0, j]),
                          "surprise": float(s.nll[0, j])})
        mark = "  <-" if s.nll[0, j] >= top3 else ""
        out.append(f"{offset + j:>5}  {target[j]:20} {s.observed_p[0, j]:>8.3g}  {exp:20} "
                   f"{s.expected_p[0, j]:>7.2f} {s.nll[0, j]:>8.2f}{mark}")
    if ex.get("attention"):
        top = ", ".join(f"{a['syscall']}@{a['position'] - lead + offset} ({a['weight']:.2f})"
                        for a in ex["attention"][:5])
        out.append(f"most attended inputs: {top}")
    if fmt == "json":
        print(json.dumps({
            "alert_id": _field(alert, "alert_id"), "model_id": det.model_id,
            "score": float(s.score[0]), "bound": det.bound.bound,
            "above_bound": bool(det.bound.exceeds(s.score)[0]), "unknown_syscalls": list(unknown),
            "evidence": _field(alert, "evidence"), "why": why, "novelty": novelty,
            "positions": positions, "attention": ex.get("attention", [])}, default=str))
    else:
        print("\n".join(out))
    attends = archs.get(det.cfg.arch).attends
    if args.plot and not attends:
        print(f"sysdream explain: no heat map: the {det.cfg.arch} architecture has no "
              "attention weights", file=sys.stderr)
    elif args.plot:
        _plot(args.plot, s.attention[0], span, lead, p, det.cfg.task, target, attends)
        print(f"attention heat map written to {args.plot}", file=sys.stderr
              if fmt == "json" else sys.stdout)
    return 0


def _plot(path: str, attn: np.ndarray, span: list[str], lead: int, p: int, task: str,
          target: list[str], attends: str) -> None:
    """The attention weights as a heat map: one row over the source for a model that
    attends once per window (DReAM's s, which makes Z), a row per scored position for one
    that attends at each (model/archs.py says which)."""
    from .plots import pyplot
    plt = pyplot()

    first = lead - p if task == "predict-next" else lead
    inputs = span[first:first + attn.shape[1]]
    per_position = attends == "positions"
    labels = target if per_position else ["Z (window)"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(inputs)), max(2.5, 0.35 * len(labels))))
    im = ax.imshow(attn[:len(labels)], aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(inputs)), inputs, rotation=70, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("input syscall (what the model read)")
    ax.set_ylabel("scored position" if per_position else "")
    fig.colorbar(im, ax=ax, label="attention weight")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
