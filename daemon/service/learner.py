"""The service's learner: learn-then-detect up to the bundle.

Owns the baseline recorded into state_directory/baseline-<time>.sdtrace (a Recording of
service/recording.py, and what a refused write does), the trainer child (a TrainerChild:
`sysdream train` at nice 19 and SCHED_IDLE) and, on a fleet agent, the hand-off of the
baseline to the fleet server.
It reports where learning stands through `stats()` and `status()`; the main loop
(service/loop.py) feeds it and the model slot (service/modelslot.py) loads what it
trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..alerting import kinds
from ..config import Config
from ..training.command import train_command
from ..training.progress import LearningBar
from .recording import Recording, TrainerChild, unique_trace

LEARN_RETRY_S = 60.0    # after the state directory refused the baseline, recording waits


@dataclass(frozen=True)
class LearnerStats:
    """Where learning stands: the daemon's phase (learning, training, detecting),
    progress 0-1 (recording the baseline 0-0.5, training 0.5-1), syscalls in the
    baseline, writes the state directory refused."""
    phase: str
    progress: float
    baseline_syscalls: int
    write_errors: int


class Learner:
    """Baseline, trainer and fleet hand-off of one daemon. `phase` is the daemon's:
    learning, training, or detecting once `finish()` says a model is in use."""

    def __init__(self, cfg: Config, sink, log: Callable[[str], None],
                 settings: Callable[[], object], counters: Callable[[], dict]):
        self.cfg = cfg              # the main loop swaps it on a reload
        self.sink = sink
        self.log = log
        self._settings = settings   # the capture settings in use (the trace header)
        self._counters = counters   # the kernel counters last read (written with records)
        self.control = None         # fleet/agent.py Control: the fleet server trains
        self.phase = "learning"
        self.progress = 0.0         # recording 0-0.5, training 0.5-1
        self.write_errors = 0           # the state directory refused a write
        self.epoch = 0                  # the trainer's last epoch
        self._rec: Recording | None = None
        self._started = 0.0
        self._trainer: TrainerChild | None = None
        self._bar = LearningBar()
        self._baseline_path: Path | None = None
        self._cut = False           # a refused write after enough of the baseline
        self._retry_at = 0.0        # ... before: when recording starts again
        self._syscalls = 0          # of the baseline, kept when its file is closed

    @property
    def baseline_syscalls(self) -> int:
        return self._rec.syscalls if self._rec is not None else self._syscalls

    def stats(self) -> LearnerStats:
        """What the metrics read at a scrape."""
        return LearnerStats(self.phase, self.progress, self.baseline_syscalls,
                            self.write_errors)

    # -- recording --------------------------------------------------------------------
    def start(self) -> None:
        """A new baseline file, recording from now on."""
        self.phase = "learning"
        path = unique_trace(self.cfg.state_dir(), "baseline")
        self._baseline_path = path
        self._started = time.monotonic()
        self._syscalls = 0
        L = self.cfg.learning
        try:
            self._rec = Recording(path, self._settings(), self._counters, L.max_syscalls)
        except OSError as exc:
            self._write_failed(exc)
            return
        text = (f"no model at {self.cfg.model_path()}: learning this host for "
                f"{L.baseline_seconds:.0f} s (at least {L.min_syscalls} syscalls) into {path}")
        self.log(text)
        self.sink.emit("learning-started", kinds.NOTICE, text,
                       {"kind": "learning-started", "baseline": str(path)})

    def record(self, records: np.ndarray) -> None:
        if self._rec is not None:
            self._rec.add(records)

    def record_context(self, records: np.ndarray) -> None:
        """Process records while learning: the baseline keeps who was who."""
        if self.phase == "learning" and self._rec is not None:
            self._rec.add_context(records)

    def flush(self) -> None:
        try:
            if self._rec is not None:
                self._rec.flush()
        except OSError as exc:
            self._write_failed(exc)

    def close_baseline(self) -> None:
        """Flush and close the baseline being recorded (a failure as in a flush)."""
        if self._rec is not None:
            try:
                self._rec.close()
            except OSError as exc:
                self._write_failed(exc)
            else:
                self._syscalls = self._rec.syscalls
                self._rec = None

    def _write_failed(self, exc: OSError) -> None:
        """The state directory refused a write (full, read-only, gone): what was written
        stays, capture and detection go on. With enough syscalls written the baseline ends
        there and training starts; otherwise recording starts again in LEARN_RETRY_S."""
        self.write_errors += 1
        written = self._rec.writer.syscalls if self._rec is not None else 0
        if self._rec is not None:
            self._rec.abandon()
            self._rec = None
        self._syscalls = written
        L, where = self.cfg.learning, self.cfg.state_dir()
        if written >= L.min_syscalls:
            self._cut = True
            text = (f"state directory {where}: {exc.strerror or exc} after {written} "
                    "syscalls of the baseline; training on what was written")
        else:
            self._retry_at = time.monotonic() + LEARN_RETRY_S
            text = (f"state directory {where}: {exc.strerror or exc} with {written} syscalls "
                    f"of the baseline written ({L.min_syscalls} needed); free space there: "
                    f"recording starts again in {LEARN_RETRY_S:.0f} s, capture goes on")
        self.log(text)
        self.sink.emit("learning-failed", kinds.ERR, text, {"kind": "learning-failed"})

    # -- where it stands --------------------------------------------------------------
    def _time_left(self, frac: float) -> str:
        """", about N min left" of the baseline at the pace so far (the slower of time
        and syscalls decides); "" before there is a pace."""
        elapsed = time.monotonic() - self._started
        if not 0.01 <= frac < 1 or elapsed < 5:
            return ""
        return f", about {elapsed * (1 - frac) / frac / 60:.0f} min left"

    def status(self, lost: int) -> str:
        """systemd's STATUS while learning or training."""
        if self.phase == "learning":
            frac = self.progress / 0.5
            return (f"learning this host: {frac:.0%} of the baseline recorded "
                    f"({self.baseline_syscalls} syscalls{self._time_left(frac)}), {lost} "
                    "syscalls lost")
        if self.control is not None:
            return (f"waiting for role {self.cfg.fleet.role}'s model from the fleet server "
                    f"(baseline sent), capture continues, {lost} syscalls lost")
        return (f"training on the baseline (epoch {self.epoch} of "
                f"{self.cfg.learning.epochs}), capture continues, {lost} syscalls lost")

    def tick(self) -> bool:
        """Once a second: the baseline ends, training starts, the trainer is polled.
        True when the trainer exited 0: its bundle is at the model path to be loaded."""
        L = self.cfg.learning
        if self.phase == "learning" and self._rec is None and not self._cut:
            if time.monotonic() >= self._retry_at:     # after a write failure
                self.start()
            return False
        if self.phase == "learning":
            elapsed = time.monotonic() - self._started
            frac = min(elapsed / L.baseline_seconds, self.baseline_syscalls / L.min_syscalls,
                       1.0)
            if self._cut:
                frac = 1.0
            self.progress = 0.5 * frac
            self._bar.show("learning this host", round(100 * frac, 1), 100, "%")
            if frac >= 1.0:
                self.close_baseline()
                self._cut = False
                if self.control is not None:      # the fleet server trains the role's
                    self._bar.close()
                    self.control.upload(self._baseline_path)
                    self.phase = "training"
                    self.log(f"baseline recorded ({self.baseline_syscalls} syscalls); "
                             "sending it to the fleet server, which trains role "
                             f"{self.cfg.fleet.role}'s model; capture continues")
                else:
                    self._start_training()
        elif self.phase == "training" and self._trainer is not None:
            rc = self._trainer.poll()
            self.epoch = self._trainer.epoch
            self.progress = 0.5 + 0.5 * min(self.epoch / L.epochs, 1.0)
            if rc is None:
                self._bar.show("training", self.epoch, L.epochs, "epoch")
                return False
            self._bar.close()
            trainer, self._trainer = self._trainer, None
            if rc == 0:
                return True
            self.failed(trainer.why(rc))
        return False

    def finish(self) -> None:
        """A model is in use: the daemon detects."""
        self.phase = "detecting"
        self.progress = 1.0

    def failed(self, why: str) -> None:
        """Training gave no model: the recordings stay, a new baseline starts."""
        self._bar.close()
        text = f"training failed ({why}); recording more of this host and trying again"
        self.log(text)
        self.sink.emit("learning-failed", kinds.ERR, text, {"kind": "learning-failed"})
        self.start()

    # -- the trainer ------------------------------------------------------------------
    def _start_training(self) -> None:
        L = self.cfg.learning
        state = self.cfg.state_dir()
        cmd = train_command(self.cfg, sorted(state.glob("baseline-*.sdtrace")),
                            self.cfg.model_path())
        if self.cfg.detection.confidence:   # training only starts with no model in use
            cmd += ["--confidence", str(self.cfg.detection.confidence)]
        self.log(f"baseline recorded ({self.baseline_syscalls} syscalls); training at nice "
                 f"{L.nice}: {' '.join(cmd[3:])}")
        self.phase = "training"
        self.epoch = 0
        self._trainer = TrainerChild(cmd, L.nice, L.threads, self.log)

    # -- the end ----------------------------------------------------------------------
    def stop(self) -> None:
        """A model came from elsewhere (a reload, the fleet): training and recording end."""
        if self._trainer is not None:
            self._trainer.kill()
            self._trainer = None
        self.close_baseline()
        self._bar.close()

    def shutdown(self) -> None:
        """The daemon stops: what was recorded is written, the trainer killed."""
        self.close_baseline()
        if self._trainer is not None:
            self._trainer.kill()

    def close(self) -> None:
        self._bar.close()
