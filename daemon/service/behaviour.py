"""The service's behaviour profiles: acts in from the capture, news out to the alert path,
the profiles kept in the state directory across restarts.

Learning (the baseline) learns every act; three quarters into the baseline's recording
the profiles are copied, and the news of the settled ones over the last quarter gives the
expected false incidents an hour at medium (training/behaviour.py HeldOut), saved with
the profiles. Detecting, `Watch` (detect/news.py) judges each act and AlertPath.news makes
incidents of what is new.

Acts wait one pass before they are judged. The loop reads the context ring after the
acts ring (Capture.read_pass), so a pass describes the processes its acts name; but a
ring is read up to its first record still being written, and a context record held
behind one that another CPU has not finished waits for the next pass. Judged at once, a
child's first act (its connect) would then be taken for the program the process ran
before its exec (a shell connecting to nscd, when it was the getent it started). One
pass later (100 ms) its process's records are in.
"""

from __future__ import annotations

import os
import time

from sysdream.probes import acts as act_records

from ..detect.news import Watch
from ..training.behaviour import Profiles

FILE = "profiles.json"
HELD_OUT_AT = 0.375     # Learner.progress three quarters into recording (which is 0-0.5)


class Behaviour:
    def __init__(self, cfg, processes, log):
        p = cfg.profiles
        self.path = cfg.state_dir() / FILE
        self.profiles = Profiles(p.min_events, p.max_unseen)
        self.watch = Watch(self.profiles, processes, p.persistence_paths, p.package_managers)
        self.save_s = p.save_interval_s
        self.log = log
        self._next_save = time.monotonic() + self.save_s
        self._held_out_done = False
        self._held = None       # the last pass's acts, judged on the next one

    def apply(self, cfg) -> None:
        """A reload's [profiles] (`enabled` applies at the next start)."""
        p = cfg.profiles
        self.profiles.min_events, self.profiles.max_unseen = p.min_events, p.max_unseen
        self.watch.configure(p.persistence_paths, p.package_managers)
        if p.save_interval_s != self.save_s:
            self.save_s = p.save_interval_s
            self._next_save = min(self._next_save, time.monotonic() + self.save_s)

    def load(self) -> None:
        """The profiles a previous run saved; one that does not verify is set aside (its
        programs start unsettled: their news stays low until they settle again)."""
        try:
            n = self.profiles.load(self.path)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            bad = self.path.with_name(FILE + ".refused")
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            self.log(f"behaviour profiles refused ({exc}); set aside as {bad}, learning "
                     "them afresh")
            return
        self._held_out_done = self.profiles.expected_per_hour is not None
        self.log(f"behaviour profiles: {n} programs from {self.path} "
                 f"({self.profiles.counts()['settled']} settled)")

    def take(self, records, phase: str, progress: float, final: bool = False) -> list:
        """Act records (probes layout.ACT_DTYPE) of one pass: the news, while detecting,
        of the previous pass's acts (`final`: of these as well, at the stop)."""
        w = self.watch
        w.learning = phase != "detecting"
        taken = w.held_out.since_ns is not None
        if phase == "learning" and progress >= HELD_OUT_AT and not taken \
                and not self._held_out_done:
            w.held_out.take(self.profiles, time.monotonic_ns())
        elif phase != "learning" and taken and not self._held_out_done:
            self._held_out_done = True
            self.profiles.expected_per_hour = w.held_out.per_hour(time.monotonic_ns())
            w.held_out.since_ns = None      # judged no more
            self.log(f"behaviour profiles: {self.profiles.counts()['settled']} of "
                     f"{len(self.profiles)} programs settled; held out: "
                     f"{len(w.held_out.incidents)} news incidents in "
                     f"{w.held_out.seconds:.0f} s")
        ready = [self._held] if self._held is not None else []
        self._held = records.copy() if len(records) else None
        if final and self._held is not None:
            ready.append(self._held)
            self._held = None
        return [n for r in ready for n in w.take(act_records.decode(r))]

    def tick(self, now: float) -> None:
        if now >= self._next_save:
            self._next_save = now + self.save_s
            self.save()

    def save(self) -> None:
        try:
            self.profiles.save(self.path)
        except OSError as exc:
            self.log(f"behaviour profiles not saved to {self.path}: {exc.strerror or exc}")

