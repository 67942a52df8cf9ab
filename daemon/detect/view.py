"""The model as the pipeline uses it: a loaded bundle with its geometry, vocabulary, alert
bounds (one per program, or the shared one) and lineage judge, swapped whole.
"""

from __future__ import annotations

import numpy as np

from sysdream.model.windows import Geometry, condition_name
from sysdream.probes import syscalls

from ..training.profile import program
from .block import PAD_NUMBER, Block
from .evidence import GRADED_MAX, AlertBound

DEFAULT_EVIDENCE = 3.0  # the evidence that alerts under a model with no alert bound


# ... where one window weighs at most this: two odd windows alert, one alone never does (a
# thread's odd exit, a rare start-up: with one window at 8, bench/daemon.py's 10,000-thread
# phase raised 18,195 false alerts); a lineage novelty still weighs what it is worth
FALLBACK_WINDOW_MAX = DEFAULT_EVIDENCE / 2


NEVER_FOR_DELIVERY = ("execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace",
                      "setuid", "setreuid", "setresuid", "setgid", "setregid", "setresgid",
                      "setfsuid", "setfsgid", "capset", "init_module", "finit_module",
                      "delete_module", "mount", "umount2", "pivot_root", "chroot",
                      "memfd_create", "process_vm_writev", "bpf", "kexec_load",
                      "kexec_file_load", "socket", "connect", "bind", "listen", "accept",
                      "accept4", "unlink", "unlinkat", "rename", "renameat", "renameat2",
                      "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "symlink",
                      "symlinkat", "link", "linkat", "mprotect", "personality", "prctl")


class ModelView:
    """What the pipeline needs of a Detector, derived once per model: window geometry,
    the syscall-number -> token table and the bound at the configured confidence."""

    def __init__(self, detector, confidence: float = 0.0, arch: str | None = None,
                 lineage: bool = True):
        from sysdream.model.vocab import PAD

        self.det = detector
        cfg = detector.cfg
        self.geom = Geometry.of(cfg)     # model/windows.py owns the arithmetic
        self.p, self.s, self.task = cfg.window, cfg.stride, cfg.task
        self.lead, self.span = self.geom.lead, self.geom.span
        self.arch = arch or syscalls.native_arch()
        names = syscalls.names(np.arange(65536), self.arch)
        self.table = np.append(detector.vocab.encode(names), PAD).astype(np.int64)
        self.bound = detector.bound.with_confidence(confidence) if confidence \
            else detector.bound
        self.model_id = detector.model_id
        self.never_for_delivery = syscalls.known_numbers(NEVER_FOR_DELIVERY, self.arch)
        # the lineage profile learnt beside the model (daemon/lineage.py); None for a
        # model trained on datasets, which carry no process context
        self.alpha = (1 - self.bound.confidence) / 2      # the bound's upper tail
        # the alert bound (daemon/evidence.py), fitted by `sysdream train` on a host's
        # held-out baseline; the configured confidence is the alert bound's where there
        # is one (the statistic that raises an alert), the window bound's where not
        self.alert = None
        if detector.alerting is not None:
            self.alert = AlertBound.from_json(detector.alerting)
            self.bound = detector.bound
            self.alpha = (1 - self.bound.confidence) / 2
            if confidence:
                self.alert = self.alert.with_confidence(confidence)
        # a model conditioned on the program (model/windows.condition): each block's
        # program token heads its windows' context
        self.conditioned = bool(cfg.condition)
        self._conds: dict[str, int] = {}
        self.lineage = None
        if detector.lineage is not None and lineage:
            from ..training.profile import Profile
            from .judge import Judge
            self.lineage = Judge(Profile.from_json(detector.lineage), self.arch, self.alpha)

    def geometry(self) -> tuple[int, int, str]:
        return self.p, self.s, self.task

    def tokens(self, spans: np.ndarray, blocks: list[Block], rows: np.ndarray) -> np.ndarray:
        """Token ids of spans [N, span] of syscall numbers; `rows`: the block of each. A
        conditioned model reads the block's program at the head of the context."""
        out = self.table[spans]
        if self.conditioned and len(out):
            ids = np.array([self.condition_id(b) for b in blocks], np.int64)
            out[:, 0] = out[:, self.p] = ids[rows]
        return out

    def condition_id(self, b: Block) -> int:
        label = condition_name(b.label or (program(b.exe) if b.exe else ""))
        got = self._conds.get(label)
        if got is None:
            got = self._conds[label] = self.det.condition_id(label)
        return got

    def evidence_bound(self, configured: float = 0) -> float:
        """What a process's evidence must reach to alert, for a program without a bound
        of its own: `configured` where set (in windows at the window bound), else the
        alert bound, else DEFAULT_EVIDENCE."""
        if configured:
            return float(configured)
        return self.alert.bound if self.alert is not None else DEFAULT_EVIDENCE

    def window_max(self, configured: float = 0) -> float:
        """What one window may weigh: less than DEFAULT_EVIDENCE where that is the rule."""
        if configured or self.alert is not None:
            return GRADED_MAX
        return FALLBACK_WINDOW_MAX

    def program_bounds(self, configured: float = 0) -> dict[str, float]:
        """The programs with an alert bound of their own (none where `configured`)."""
        return {} if configured or self.alert is None else self.alert.bounds()

    def names(self, span: np.ndarray) -> np.ndarray:
        out = syscalls.names(np.minimum(span, 65535), self.arch).copy()
        out[span == PAD_NUMBER] = "<pad>"
        return out
