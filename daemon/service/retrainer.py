"""Scheduled retraining: the model follows what the host does now, without being taught an
attack.

With [retraining] interval_s set, each interval after the model in use was trained (its
bundle's time, so a restart does not put it off) the daemon, while it detects:

1. records the interval's last record_seconds as a baseline is recorded
   (STATE_DIRECTORY/recent-<time>.sdtrace, at most [learning] max_syscalls; the newest
   `keep` recordings are kept, older ones removed);
2. trains a candidate in a child at [learning] nice and SCHED_IDLE (`sysdream train` with
   `--recent`, `--guard` and `--allowed`) on the baselines, the kept recordings less what
   the poisoning guard removes, and the windows of every `sysdream allow` entry; the
   lineage profile and the alert bound's held-out replay see the same guarded activity;
3. shadow-scores the candidate beside the model in use for shadow_seconds: both judge the
   same windows with their whole alert rule (pipeline.Shadow); the candidate's alerts are
   counted, never sent;
4. swaps it in without a restart (the model before it kept at
   STATE_DIRECTORY/model.previous) when it scored windows and raised no more alerts than
   the model in use on the same activity; otherwise rejects it (kept at
   STATE_DIRECTORY/model.rejected for a look). Either way a journald event says so, with
   both alert counts and the candidate's expected false alerts an hour.

The poisoning guard the trainer runs: training/guard.py.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..alerting import kinds
from ..config import Config
from .recording import Recording, TrainerChild, unique_trace

OUTCOMES = ("swapped", "rejected", "failed")


@dataclass(frozen=True)
class RetrainerStats:
    """Where scheduled retraining stands (`state`: off, waiting, recording, training or
    shadow), its outcomes so far (OUTCOMES) and when the next candidate trains (Unix
    time; 0 when off)."""
    state: str
    outcomes: dict[str, int]
    next_at: float
    shown: bool         # [metrics] detection_internals: the schedule is served


def bound_rise(current, candidate, limit: float) -> str:
    """Which bound of `candidate` rose more than `limit` (a fraction) over the one of
    `current` (ModelViews): "" when none did. The window bound, the alert bound and
    each program's own alert bound are compared."""
    if current is None:
        return ""
    pairs = [("window bound", current.bound.bound, candidate.bound.bound)]
    a, b = current.alert, candidate.alert
    if a is not None and b is not None:
        pairs.append(("alert bound", a.bound, b.bound))
        old, new = a.bounds(), b.bounds()
        pairs += [(f"alert bound for {p}", old[p], new[p]) for p in sorted(set(old) & set(new))]
    for what, old, new in pairs:
        if old > 0 and new > old * (1 + limit):
            return f"{what} rose from {old:.4g} to {new:.4g}"
    return ""


# -- online: the daemon's side -----------------------------------------------------------
class Retrainer:
    """When to record, the candidate's trainer, its shadow and the swap, for one daemon.
    `state`: off, waiting, recording, training or shadow. The main loop (daemon/service.py)
    feeds it records while it detects, ticks it once a second and hands in:
    `load(path)` -> ModelView (the model slot's checks), `shadow(view or None)` -> the
    finished Shadow's result when one is taken down, and `swap()` (the bundle now at the
    model path goes in use)."""

    def __init__(self, cfg: Config, sink, log: Callable[[str], None],
                 settings: Callable[[], object], counters: Callable[[], dict],
                 load: Callable, shadow: Callable, swap: Callable[[], None],
                 current: Callable[[], object] = lambda: None):
        self.cfg = cfg              # the main loop swaps it on a reload
        self.sink, self.log = sink, log
        self._settings, self._counters = settings, counters
        self._load, self._shadow, self._swap = load, shadow, swap
        self._current = current     # the ModelView in use (None before one)
        self.state = "off"
        self.outcomes: Counter = Counter()      # swapped, rejected, failed (metrics)
        self.next_at = 0.0          # wall-clock time the next candidate's training starts
        self._due = self._record_at = 0.0        # monotonic
        self._shadow_start = self._shadow_end = 0.0
        self._rec = None
        self._trainer = None
        self._candidate = None      # the candidate's ModelView while it is shadowed
        self._started = 0.0

    def stats(self) -> RetrainerStats:
        """What the metrics read at a scrape."""
        return RetrainerStats(self.state, {o: self.outcomes[o] for o in OUTCOMES},
                              self.next_at if self.state != "off" else 0.0,
                              self.cfg.metrics.detection_internals)

    def why_off(self) -> str:
        """"" when retraining applies to this daemon, else why not."""
        if not self.cfg.retraining.interval_s:
            return "interval_s is 0"
        if self.cfg.fleet.server:
            return "a fleet agent's model is its role's, trained by the fleet server"
        if self.cfg.service.model:
            return "[service] model names the operator's bundle"
        return ""

    @property
    def candidate_path(self) -> Path:
        return self.cfg.state_dir() / "model.candidate"

    def begin(self, from_bundle: bool = False) -> None:
        """A model came into use: what was under way for the one before ends, and the
        next retraining is scheduled an interval from now, or with `from_bundle` (the
        daemon's start, a model just learnt) from the bundle's time, so that restarts do
        not put it off. A reload (a rollback to model.previous, say) waits an interval."""
        self.cancel()
        why = self.why_off()
        if why:
            self.state = "off"
            return
        R = self.cfg.retraining
        made = time.time()
        if from_bundle:
            with contextlib.suppress(OSError):
                made = (self.cfg.model_path() / "manifest.json").stat().st_mtime
        record = min(R.record_seconds, R.interval_s)
        # overdue (a restart, a rollback to an older bundle): first a whole recording
        left = max(record, made + R.interval_s - time.time())
        self._schedule(left)
        self.log(f"retraining every {R.interval_s:.0f} s: the next candidate trains in "
                 f"{left:.0f} s on the {record:.0f} s before it")

    def _schedule(self, left: float) -> None:
        R = self.cfg.retraining
        self._due = time.monotonic() + left
        self._record_at = self._due - min(R.record_seconds, R.interval_s)
        self.next_at = time.time() + left
        self.state = "waiting"

    def cancel(self) -> None:
        """Whatever is under way ends: the recording is closed (it stays for the next
        retraining), the trainer killed, the shadow taken down."""
        if self._rec is not None:
            with contextlib.suppress(OSError):
                self._rec.close()
            self._rec = None
        if self._trainer is not None:
            self._trainer.kill()
            self._trainer = None
        if self._candidate is not None:
            self._shadow(None)
            self._candidate = None

    # -- recording --------------------------------------------------------------------
    def record(self, records: np.ndarray) -> None:
        if self._rec is not None:
            self._rec.add(records)

    def record_context(self, records: np.ndarray) -> None:
        if self._rec is not None:
            self._rec.add_context(records)

    def flush(self) -> None:
        if self._rec is None:
            return
        try:
            self._rec.flush()
        except OSError as exc:
            where = self._rec.path
            self._rec.abandon()
            self._rec = None
            self._fail(f"the state directory refused the recording {where} "
                       f"({exc.strerror or exc}); what was written stays")

    def _start_recording(self) -> None:
        path = unique_trace(self.cfg.state_dir(), "recent")
        try:
            self._rec = Recording(path, self._settings(), self._counters,
                                  self.cfg.learning.max_syscalls)
        except OSError as exc:
            self._fail(f"cannot record {path} ({exc.strerror or exc})")
            return
        self.state = "recording"
        self.log(f"retraining: recording this host into {path} until the candidate trains")

    def _recordings(self) -> list[Path]:
        """The newest `keep` recordings; older ones are removed."""
        found = sorted(self.cfg.state_dir().glob("recent-*.sdtrace"),
                       key=lambda p: p.stat().st_mtime)
        keep = self.cfg.retraining.keep
        for old in found[:-keep]:
            with contextlib.suppress(OSError):
                old.unlink()
        return found[-keep:]

    # -- the candidate ----------------------------------------------------------------
    def _start_training(self) -> None:
        from ..training.command import train_command

        rec, self._rec = self._rec, None
        if rec is not None:
            try:
                rec.close()
            except OSError as exc:
                rec.abandon()
                self._fail(f"the state directory refused the recording ({exc.strerror})")
                return
        recent = self._recordings()
        if not recent:
            self._fail("nothing was recorded")
            return
        R, state = self.cfg.retraining, self.cfg.state_dir()
        shutil.rmtree(self.candidate_path, ignore_errors=True)
        cmd = train_command(self.cfg, sorted(state.glob("baseline-*.sdtrace")),
                            self.candidate_path)
        cmd += ["--recent", *map(str, recent), "--guard", str(self.cfg.model_path()),
                "--guard-near", str(R.near), "--program-share", str(R.program_share)]
        if (state / "allow.json").exists():
            cmd += ["--allowed", str(state / "allow.json")]
        if self.cfg.detection.confidence:
            cmd += ["--confidence", str(self.cfg.detection.confidence)]
        self.log(f"retraining: training a candidate at nice {self.cfg.learning.nice}: "
                 f"{' '.join(cmd[3:])}")
        try:
            L = self.cfg.learning
            self._trainer = TrainerChild(cmd, L.nice, L.threads, self.log, "retrainer")
        except OSError as exc:
            self._fail(f"cannot start the trainer ({exc.strerror or exc})")
            return
        self._started = time.monotonic()
        self.state = "training"

    def _trained(self, rc: int) -> None:
        trainer, self._trainer = self._trainer, None
        if rc != 0:
            self._fail(f"the candidate's training failed ({trainer.why(rc)})")
            return
        guard = next((ln for ln in trainer.lines if "guard:" in ln), "")
        self.try_candidate(f"trained in {time.monotonic() - self._started:.0f} s"
                           + (f" ({guard.partition('guard:')[2].strip()})" if guard else ""))

    def try_candidate(self, how: str = "") -> None:
        """The bundle at candidate_path loaded and put in the shadow for shadow_seconds;
        a bundle that does not load fails this retraining."""
        try:
            view = self._load(self.candidate_path)
        except Exception as exc:  # noqa: BLE001 (any failure: keep the model in use)
            self._fail(f"the candidate does not load: {exc}")
            return
        rose = bound_rise(self._current(), view, self.cfg.retraining.max_bound_rise)
        if rose:
            self._reject(view, f"its {rose}, over [retraining] max_bound_rise "
                         f"{self.cfg.retraining.max_bound_rise:g}", "", {
                             "model_id": view.model_id})
            return
        if view.lineage is not None:
            view.lineage.events = Counter()     # the shadow's novelty is not the host's
        self._candidate = view
        self._shadow(view)
        self._shadow_start = time.monotonic()
        self._shadow_end = self._shadow_start + self.cfg.retraining.shadow_seconds
        self.state = "shadow"
        self.log(f"retraining: candidate {view.model_id}" + (f" {how}" if how else "")
                 + "; shadow-scoring it beside the model in use for "
                 f"{self.cfg.retraining.shadow_seconds:.0f} s")

    def decide(self) -> None:
        """The shadow ends: the candidate swapped in, or rejected (see the module's
        docstring)."""
        view, self._candidate = self._candidate, None
        got = self._shadow(None)
        seconds = time.monotonic() - self._shadow_start
        exp = view.alert.expected_per_hour() if view.alert is not None else None
        fields = {"model_id": view.model_id, "shadow_seconds": round(seconds, 1),
                  "shadow_windows": got["windows"], "candidate_alerts": got["alerts"],
                  "current_alerts": got["current"],
                  "expected_per_hour": round(exp, 3) if exp is not None else -1}
        said = (f"in {seconds:.0f} s of shadow over {got['windows']} windows the candidate "
                f"{view.model_id} raised {got['alerts']} alerts, the model in use "
                f"{got['current']}; expected false alerts an hour: "
                + (f"{exp:.2f}" if exp is not None else "not fitted (no alert bound)"))
        if got["windows"] == 0 or got["alerts"] > got["current"]:
            why = ("it scored no windows (another window size?)" if got["windows"] == 0
                   else "it raised more alerts than the model in use")
            self._reject(view, why, f": {said}", fields)
            return
        from sysdream.model.bundle import install

        model, previous = self.cfg.model_path(), self.cfg.state_dir() / "model.previous"
        try:
            shutil.rmtree(previous, ignore_errors=True)
            shutil.copytree(model, previous)
            install(self.candidate_path, model)
        except OSError as exc:
            self._fail(f"cannot put the candidate at {model} ({exc.strerror or exc})")
            return
        self.outcomes["swapped"] += 1
        text = f"retraining: model {view.model_id} in use, {said}; the one before at {previous}"
        self.log(text)
        self.sink.emit("model-retrained", kinds.NOTICE, text,
                       {"kind": "model-retrained", **fields})
        self._swap()        # the new model in use: begin() schedules the next one

    def _reject(self, view, why: str, said: str, fields: dict) -> None:
        rejected = self.cfg.state_dir() / "model.rejected"
        shutil.rmtree(rejected, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.candidate_path.rename(rejected)
        self.outcomes["rejected"] += 1
        text = f"retraining: candidate rejected, {why}{said}; kept at {rejected}"
        self.log(text)
        self.sink.emit("retraining-rejected", kinds.WARNING, text,
                       {"kind": "retraining-rejected", "reason": why, **fields})
        self.begin_next()

    def begin_next(self) -> None:
        """The next retraining an interval from now (the model in use stays)."""
        self._schedule(self.cfg.retraining.interval_s)

    def _fail(self, why: str) -> None:
        self.outcomes["failed"] += 1
        text = f"retraining: {why}; the model in use stays, the next try in an interval"
        self.log(text)
        self.sink.emit("retraining-rejected", kinds.WARNING, text,
                       {"kind": "retraining-rejected", "reason": why})
        self.cancel()
        self.begin_next()

    def tick(self) -> None:
        """Once a second, while detecting."""
        now = time.monotonic()
        if self.state == "waiting" and now >= self._record_at:
            self._start_recording()
        if self.state == "recording" and (now >= self._due or self._rec is None
                                          or self._rec.full):
            self._start_training()
        elif self.state == "training" and self._trainer is not None:
            rc = self._trainer.poll()
            if rc is not None:
                self._trained(rc)
        elif self.state == "shadow" and now >= self._shadow_end:
            self.decide()

    def status(self) -> str:
        """A few words for systemd's STATUS; "" while nothing is under way."""
        if self.state == "recording":
            return f"retraining: recording ({self._rec.syscalls} syscalls)" \
                if self._rec is not None else ""
        if self.state == "training":
            return (f"retraining: training a candidate (epoch {self._trainer.epoch} of "
                    f"{self.cfg.learning.epochs})") if self._trainer is not None else ""
        if self.state == "shadow":
            return f"retraining: shadow-scoring candidate {self._candidate.model_id}"
        return ""

    def shutdown(self) -> None:
        """The daemon stops: the recording is written, the trainer killed."""
        self.cancel()
