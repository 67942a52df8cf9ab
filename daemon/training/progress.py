"""Training progress: JSON lines on the trainer's own pipe for the supervising daemon, a
line on stderr, and in the foreground the learning bar.
"""

from __future__ import annotations

import json
import sys


def _progress(args, stage: str):
    """Training progress for stderr (ProgressLine), and with --progress-fd also as JSON
    lines for the process supervising this one: {"stage", "epoch", "epochs",
    "train_loss", "validation_loss"} at each epoch's end."""
    from sysdream.model.training import ProgressLine

    if args.progress_fd is None:
        return ProgressLine()
    out = args.progress_out

    class Report(ProgressLine):
        def epoch_done(self, epoch: int, epochs: int, train: float, val: float) -> None:
            _report(out, {"stage": stage, "epoch": epoch, "epochs": epochs,
                          "train_loss": round(train, 6), "validation_loss": round(val, 6)})
    return Report()


def _report(out, event: dict) -> None:
    """One JSON line to the supervisor; one that went away is not an error of training."""
    if out is None:
        return
    try:
        out.write(json.dumps(event) + "\n")
        out.flush()
    except OSError:
        pass


class LearningBar:
    """In the foreground on a terminal, the learning phase as a tqdm bar with the time
    left: the share of the baseline recorded, then the trainer's epochs. Elsewhere
    (journald, a pipe) nothing: systemd's STATUS carries the same."""
    active = None       # the bar on screen, which log lines are written above

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.stage = ""

    def show(self, stage: str, done: float, total: float, unit: str) -> None:
        if not self.tty:
            return
        from tqdm import tqdm  # only on a terminal
        if stage != self.stage:
            self.close()
            self.stage = stage
            LearningBar.active = tqdm(total=total, desc=stage, unit=unit, file=self.stream,
                                      dynamic_ncols=True, leave=False)
        bar = LearningBar.active
        bar.update(min(done, total) - bar.n)

    def close(self) -> None:
        if LearningBar.active is not None:
            LearningBar.active.close()
            LearningBar.active = None
        self.stage = ""
