"""The scenario suite's driver, shared by bench/scenarios.py and the test suite's short run.

1. A cgroup for the benign workload and one per attack kind (below one of the suite's own),
   created before the daemon starts; the daemon traces those cgroups only (--cgroup), so
   the rest of the machine neither adds nor hides alerts; with `whole_host` it traces
   every process, as a user runs it, and whatever the rest of the host raises is false.
2. `sysdream run` with no model, alerts to a systemd-journald in a private mount namespace
   and to a JSON-lines file: it learns the benign workload (benign.py, one seed, restarted
   half-way with another: restarts are part of normal life) for `learn_s`, trains with
   its defaults and starts detecting.
3. The benign workload restarts with a third seed and runs `benign_s` alone, then goes on
   while each attack kind runs in turn in its own cgroup, `settle_s` apart.
   With `compare`, a second daemon detects beside the first from the same model with
   `[detection] lineage = false` (the sequence model alone): both judge the very same
   activity, so the difference between their reports is lineage novelty's alone.
4. Alerts are told apart by their cgroup id: an alert from an attack's cgroup is that
   attack's (but for the helpers an attack starts that are not the attack, such as the web
   application instance it sends its request to); every other alert after detection
   started is a false alert. Time to alert: the first alert's time less the moment just
   before the attack's first syscall.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests" / "daemon"))
import attacks  # noqa: E402
from harness import Daemon, JournalNamespace, wait_for  # noqa: E402
from listeners import HttpEnd, ShellListener  # noqa: E402

from sysdream.daemon.context.cgroups import mount_point  # noqa: E402
from sysdream.daemon.detect.news import PERSISTENCE  # noqa: E402

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_in(cgroup_dir: Path, cmd: list[str], **kw) -> subprocess.Popen:
    """Start `cmd` inside a cgroup (the child moves itself there before it executes)."""
    procs = str(cgroup_dir / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as f:
            f.write("0")
    return subprocess.Popen(cmd, preexec_fn=enter, **kw)


class AttackContext:
    """What an attack function gets: where to write, how to start a process in its own
    cgroup, and the suite's network ends."""

    def __init__(self, root: Path, cgroup_dir: Path, http: HttpEnd):
        self.root, self.cgroup_dir, self.http = root, cgroup_dir, http
        self.root.mkdir(parents=True, exist_ok=True)

    def spawn(self, cmd: list[str], **kw) -> subprocess.Popen:
        return start_in(self.cgroup_dir, cmd, **kw)

    @staticmethod
    def shell_listener(script: bytes) -> ShellListener:
        return ShellListener(script)

    @staticmethod
    def free_port() -> int:
        return free_port()


class Suite:
    def __init__(self, work: Path, learn_s: float, benign_s: float, *, epochs: int = 15,
                 settle_s: float = 6.0, kinds: list[str] | None = None,
                 min_syscalls: int = 100000, record: Path | None = None,
                 train_timeout_s: float = 1800, compare: bool = False,
                 sequences: bool = False, folds: int = 1, condition: str = "",
                 whole_host: bool = False, seed: int = 1, log=None):
        self.work, self.learn_s, self.benign_s = work, learn_s, benign_s
        self.epochs, self.settle_s, self.min_syscalls = epochs, settle_s, min_syscalls
        self.kinds = kinds or list(attacks.KINDS)
        unknown = set(self.kinds) - set(attacks.KINDS)
        if unknown:
            raise ValueError(f"unknown attack kinds {sorted(unknown)}; "
                             f"known: {', '.join(attacks.KINDS)}")
        self.record, self.train_timeout_s = record, train_timeout_s
        self.compare, self.sequences, self.folds = compare, sequences, folds
        self.condition, self.whole_host = condition, whole_host
        # run N's workload seeds: learning 3N-2 then 3N, detection 3N-1 (run 1: 1, 3, 2)
        self.seed = seed
        self.seeds = {"learn": (3 * seed - 2, 3 * seed), "detect": 3 * seed - 1}
        self.other: Daemon | None = None
        self.log = log or (lambda m: print(f"scenarios: {m}", file=sys.stderr, flush=True))
        self.groups: dict[str, Path] = {}
        self.ids: dict[str, int] = {}       # cgroup name -> id (its directory's inode)
        self.daemon: Daemon | None = None
        self.journal: JournalNamespace | None = None
        self.benign: subprocess.Popen | None = None

    # -- parts ----------------------------------------------------------------------------
    def _cgroups(self) -> None:
        root = mount_point()
        if root is None:
            raise RuntimeError("no cgroup v2 hierarchy: the suite needs one")
        self.base = root / f"sysdream-scenarios-{os.getpid()}"
        self.base.mkdir()
        for name in ["benign", *(f"attack-{k}" for k in self.kinds)]:
            d = self.base / name
            d.mkdir()
            self.groups[name] = d
            self.ids[name] = d.stat().st_ino

    def _remove_cgroups(self) -> None:
        for d in [*self.groups.values(), getattr(self, "base", None)]:
            if d is None:
                continue
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:     # processes still leaving it
                    for pid in (d / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    time.sleep(0.1)

    def _config(self, name: str = "sysdream.toml", extra: str = "") -> Path:
        cfg = self.work / name
        places = list(PERSISTENCE) + attacks.sandbox_persistence(self.work / "attacker")
        cfg.write_text(
            extra +
            "[learning]\n"
            f"epochs = {self.epochs}\n"
            f"sequences = {'true' if self.sequences else 'false'}\n"
            f"folds = {self.folds}\n"
            f"condition = \"{self.condition}\"\n"
            f"min_syscalls = {self.min_syscalls}\n"
            "[alerts]\n"
            "# every alert kept: the suite counts what the detector raised\n"
            "rate_limit_burst = 100000\n"
            "rate_limit_ceiling_per_minute = 100000\n"
            "# lows too: the suite reports incidents at medium or above and lows apart\n"
            "min_severity = \"low\"\n"
            "[profiles]\n"
            "# the persistence attack writes under a sandbox /etc: its places beside the\n"
            "# real ones\n"
            f"persistence_paths = {json.dumps(places)}\n")
        return cfg

    def _start_benign(self, seed: int) -> None:
        self.benign = start_in(self.groups["benign"],
                               [PY, str(HERE / "benign.py"), str(self.work / "host"),
                                str(free_port()), str(seed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _stop_benign(self) -> None:
        if self.benign is not None and self.benign.poll() is None:
            self.benign.terminate()
            try:
                self.benign.wait(30)
            except subprocess.TimeoutExpired:
                self.benign.kill()
                self.benign.wait()
        self.benign = None

    def _recorder(self, group: str, out: Path, seconds: float) -> subprocess.Popen:
        """`sysdream record` of one of the suite's cgroups into `out`."""
        out.parent.mkdir(parents=True, exist_ok=True)
        err = self.work / f"record-{out.stem}.err"
        p = subprocess.Popen([PY, "-m", "sysdream.daemon", "record", "--cgroup",
                              str(self.ids[group]), "--seconds", str(int(seconds)),
                              "-o", str(out)],
                             stdout=subprocess.DEVNULL, stderr=err.open("w"))
        wait_for(lambda: "probes attached" in err.read_text() or p.poll() is not None, 120,
                 f"the recorder for {out.stem}")
        return p

    @staticmethod
    def _stop_recorder(p: subprocess.Popen | None) -> None:
        if p is not None:
            p.terminate()
            p.wait(60)

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict:
        self.work.mkdir(parents=True, exist_ok=True)
        alerts_path = self.work / "alerts.jsonl"
        http = HttpEnd()
        self._cgroups()
        try:
            self.journal = JournalNamespace()
            args = ["--config", str(self._config()), "--state-dir", str(self.work / "state"),
                    "--learn-seconds", str(self.learn_s), "--json-lines", str(alerts_path)]
            if not self.whole_host:
                for i in self.ids.values():
                    args += ["--cgroup", str(i)]
            self.daemon = Daemon(args, self.work, prefix=self.journal.prefix)
            self.daemon.wait_attached()
            self.log(f"daemon attached; learning the benign workload for {self.learn_s:g} s")
            self._start_benign(seed=self.seeds["learn"][0])
            t0 = time.time()
            time.sleep(self.learn_s / 2)
            self._stop_benign()
            self._start_benign(seed=self.seeds["learn"][1])
            self.daemon.wait_phase("detecting", self.learn_s / 2 + self.train_timeout_s)
            trained = time.time() - t0
            self.log(f"detecting after {trained:.0f} s (learning and training)")
            if self.compare:
                cfg = self._config("without-lineage.toml", "[detection]\nlineage = false\n")
                args = ["--config", str(cfg), "--model", str(self.work / "state" / "model"),
                        "--state-dir", str(self.work / "state-other"), "--no-journald",
                        "--json-lines", str(self.work / "alerts-without-lineage.jsonl")]
                if not self.whole_host:
                    for i in self.ids.values():
                        args += ["--cgroup", str(i)]
                self.other = Daemon(args, self.work)
                self.other.wait_attached()
                self.log("a second daemon detects beside it without lineage novelty")
            self._stop_benign()
            # with --record, the benign activity judged (not learnt) too: what false
            # alerts come from, to replay offline
            benign = self._recorder("benign", self.record / "benign" / "detecting.sdtrace",
                                    self.benign_s + 3600) if self.record else None
            detect_start = time.time()
            self._start_benign(seed=self.seeds["detect"])
            time.sleep(self.benign_s)
            outcomes: dict[str, attacks.Outcome] = {}
            for kind in self.kinds:
                recorder = self._recorder(f"attack-{kind}",
                                          self.record / "attack" / f"{kind}.sdtrace", 600) \
                    if self.record else None
                ctx = AttackContext(self.work / "attacker", self.groups[f"attack-{kind}"],
                                    http)
                self.log(f"attack {kind}")
                outcomes[kind] = attacks.KINDS[kind](ctx)
                time.sleep(self.settle_s)
                self._stop_recorder(recorder)
            self._stop_benign()
            self._stop_recorder(benign)
            detect_end = time.time()
            time.sleep(2)   # the last alerts on their way
            metrics = self.daemon.metrics()
            journal_ids = {e.get("SYSDREAM_ALERT_ID") for kind in ALERT_KINDS
                           for e in self.journal.entries(SYSDREAM_KIND=kind)}
            model_id = self._model_id()
            rc, _ = self.daemon.stop(30)
            if self.other is not None:
                self.other.stop(30)
            if self.record is not None:
                self._copy_baseline()
        finally:
            self._stop_benign()
            for d in (self.daemon, self.other):
                if d is not None:
                    d.kill()
            if self.journal is not None:
                self.journal.close()
            http.close()
            self._remove_cgroups()
        alerts = [a for a in _read_lines(alerts_path) if a.get("kind") in ALERT_KINDS]
        report = self._report(alerts, outcomes, detect_start, detect_end, trained, metrics,
                              journal_ids, model_id, rc)
        if self.compare:
            other = [a for a in _read_lines(self.work / "alerts-without-lineage.jsonl")
                     if a.get("kind") in ALERT_KINDS]
            part = self._report(other, outcomes, detect_start, detect_end, trained, {}, set(),
                                model_id, 0)
            report["without_lineage"] = {k: part[k] for k in ("attacks", "benign", "alerts")}
        return report

    def _model_id(self) -> str:
        try:
            m = json.loads((self.work / "state" / "model" / "manifest.json").read_text())
            return m.get("model_id", "")
        except (OSError, ValueError):
            return ""

    def _copy_baseline(self) -> None:
        normal = self.record / "normal"
        normal.mkdir(parents=True, exist_ok=True)
        for p in sorted((self.work / "state").glob("baseline-*.sdtrace")):
            shutil.copy(p, normal / p.name)

    def _report(self, alerts, outcomes, detect_start, detect_end, trained, metrics,
                journal_ids, model_id, rc) -> dict:
        by_group = {i: name for name, i in self.ids.items()}
        attacks_out, false = {}, []
        own: dict[str, list] = {k: [] for k in self.kinds}
        for a in alerts:
            if a.get("time", 0) < detect_start:
                continue
            group = by_group.get(a.get("cgroup_id"), "")
            kind = group.removeprefix("attack-") if group.startswith("attack-") else None
            o = outcomes.get(kind) if kind else None
            if o is not None and a.get("pid") not in o.not_attack_pids and not (
                    a.get("pid") in o.turned_pids and a.get("time", 0) < o.started):
                own[kind].append(a)
            else:
                false.append(a)
        for kind in self.kinds:
            o = outcomes[kind]
            mine = sorted(own[kind], key=lambda a: a["time"])
            serious = [a for a in mine if _serious(a)]
            attacks_out[kind] = {
                "ran": o.ok, "detail": o.detail, "alerted": bool(mine),
                "time_to_alert_s": round(mine[0]["time"] - o.started, 2) if mine else None,
                "alerts": len(mine),
                "incident": bool(serious),
                "time_to_incident_s": round(serious[0]["time"] - o.started, 2)
                if serious else None,
                "severity": max((a.get("severity", "") for a in mine), key=_rank,
                                default="")}
        hours = (detect_end - detect_start) / 3600
        incidents: dict[str, dict] = {}     # incident id -> its alert at its highest
        for a in false:
            i = a.get("incident_id") or a.get("alert_id")
            if i not in incidents or _rank(a.get("severity")) > \
                    _rank(incidents[i].get("severity")):
                incidents[i] = a
        false_incidents = [a for a in incidents.values() if _serious(a)]
        by_exe: dict[str, int] = {}
        for a in false:
            by_exe[a.get("exe") or a.get("comm", "?")] = \
                by_exe.get(a.get("exe") or a.get("comm", "?"), 0) + 1
        return {
            "learn_s": self.learn_s, "benign_alone_s": self.benign_s, "seed": self.seed,
            "workload_seeds": self.seeds,
            "learning_and_training_s": round(trained, 1), "model_id": model_id,
            "daemon_exit": rc,
            "attacks": attacks_out,
            "benign": {"seconds": round(detect_end - detect_start, 1),
                       "false_alerts": len(false),
                       "per_hour": round(len(false) / hours, 1) if hours else None,
                       # the patterns an operator would answer (allow) one by one
                       "fingerprints": len({a.get("fingerprint") for a in false}),
                       "by_exe": dict(sorted(by_exe.items(), key=lambda kv: -kv[1])),
                       "false_incidents": len(false_incidents),
                       "incidents_per_hour": round(len(false_incidents) / hours, 2)
                       if hours else None,
                       "low_incidents": len(incidents) - len(false_incidents),
                       "false_incidents_list": [
                           {"severity": a.get("severity"), "kind": a.get("kind"),
                            "program": a.get("program") or a.get("exe"),
                            "lineage": a.get("lineage_text"),
                            "evidence": a.get("incident_evidence") or a.get("news")
                            or a.get("evidence")} for a in false_incidents]},
            "alerts_in_journald": sum(1 for a in alerts if a.get("alert_id") in journal_ids),
            "alerts_total": len(alerts),
            "suppressed": sum(v for k, v in metrics.items()
                              if k.startswith("sysdream_alerts_suppressed_total")),
            "lost_syscalls": sum(v for k, v in metrics.items()
                                 if k.startswith("sysdream_syscalls_lost_total")),
            "alerts": [_brief(a, by_group) for a in alerts if a.get("time", 0) >= detect_start],
            "outcomes": {k: asdict(v) for k, v in outcomes.items()},
        }


ALERT_KINDS = ("anomaly", "behaviour")
_RANK = {"low": 0, "medium": 1, "high": 2}


def _rank(severity) -> int:
    return _RANK.get(severity or "", -1)


def _serious(a: dict) -> bool:
    """An incident at medium or above (issue 32's targets count those)."""
    return _rank(a.get("severity")) >= 1


def _brief(a: dict, by_group: dict) -> dict:
    return {"time": a.get("time"), "group": by_group.get(a.get("cgroup_id"), "?"),
            "pid": a.get("pid"), "exe": a.get("exe"), "lineage": a.get("lineage_text"),
            "score": a.get("score"), "sigmas": a.get("sigmas"), "evidence": a.get("evidence"),
            "episode": bool(a.get("episode")), "unknown": a.get("unknown_syscalls"),
            "kind": a.get("kind"), "severity": a.get("severity"),
            "incident_id": a.get("incident_id"), "news": a.get("news")}


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def table(report: dict) -> str:
    """The report as text: one line per attack kind, then the benign figures (and the
    same for the daemon without lineage novelty, when it ran)."""
    lines = _part(report, "default settings")
    if "without_lineage" in report:
        lines += [""] + _part(report["without_lineage"], "[detection] lineage = false")
    lines.append(f"run seed {report.get('seed', 1)}; learning {report['learn_s']:g} s; detecting "
                 f"{report['learning_and_training_s']:.0f} s after the start; model "
                 f"{report['model_id']}; suppressed {report['suppressed']:g}; "
                 f"syscalls lost {report['lost_syscalls']:g}")
    return "\n".join(lines)


def _part(report: dict, title: str) -> list[str]:
    lines = [title, f"{'attack kind':<18} {'ran':<4} {'alerted':<8} {'time to alert':>13}  "
             f"alerts  {'severity':<8} {'medium+ in':>10}", "-" * 78]
    for kind, r in report["attacks"].items():
        t = f"{r['time_to_alert_s']:.2f} s" if r["time_to_alert_s"] is not None else "-"
        ti = r.get("time_to_incident_s")
        ti = f"{ti:.2f} s" if ti is not None else "-"
        lines.append(f"{kind:<18} {'yes' if r['ran'] else 'NO':<4} "
                     f"{'yes' if r['alerted'] else 'no':<8} {t:>13}  {r['alerts']:<6}  "
                     f"{r.get('severity') or '-':<8} {ti:>10}")
    b = report["benign"]
    caught = sum(r["alerted"] for r in report["attacks"].values())
    serious = sum(bool(r.get("incident")) for r in report["attacks"].values())
    lines += ["", f"attack kinds alerted: {caught} of {len(report['attacks'])} "
                  f"(an incident at medium or above: {serious})",
              f"false alerts (raw, every severity): {b['false_alerts']} in "
              f"{b['seconds']:.0f} s of benign activity ({b['per_hour']} per hour), "
              f"{b['fingerprints']} distinct fingerprints",
              f"false incidents at medium or above: {b.get('false_incidents')} "
              f"({b.get('incidents_per_hour')} per hour); low incidents: "
              f"{b.get('low_incidents')}"]
    for a in b.get("false_incidents_list", [])[:10]:
        lines.append(f"  {a['severity']:<6} {a['kind']:<9} {a['program']} "
                     f"[{a['lineage']}]: {str(a['evidence'])[:100]}")
    for exe, n in list(b["by_exe"].items())[:10]:
        lines.append(f"  {n:5d}  {exe}")
    return lines
