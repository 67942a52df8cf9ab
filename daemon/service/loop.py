"""`sysdream run`: the service's main loop. Capture -> (learn | detect) -> alerts and metrics.

Owns the lifecycle: signals, the systemd notifications (READY, STATUS, WATCHDOG), /healthz,
the capture and its filters, the reader/scorer pipeline, configuration reloads and the
shutdown. Learning (baseline, trainer, fleet hand-off) is service/learner.py's, the model
in use (loading it, and the one way it goes in use, from the start, the learner, a reload,
the fleet or a retraining) service/modelslot.py's, scheduled retraining (recording while
detecting, the candidate's trainer, its shadow and the swap) service/retrainer.py's; the
Service owns one of each. Reloads: what applies at once and what waits for the next start
is config.RESTART_ONLY; each owner's stats() feeds the metrics.

Lifecycle (systemd Type=notify): READY=1 once the probes are attached; STATUS= every
status interval; WATCHDOG=1 only while the reader loop turns and the scorer shows signs of
life; SIGHUP reloads the configuration and the model without detaching the probes
(RELOADING=1 ... READY=1; a bundle that does not load keeps the old model); SIGTERM or
SIGINT scores what is queued (at most 2 s), writes what was recorded, and exits 0 (130 after
SIGINT, the shell's code for Ctrl-C).

Learn-then-detect: with no model, the daemon records this host into
state_directory/baseline-<time>.sdtrace for `baseline_seconds` (and at least
`min_syscalls`), trains in a child process at nice 19 and SCHED_IDLE while capture goes on,
saves the bundle to state_directory/model and switches to detection without a restart.
A failed training keeps the recordings and records again for another period.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sysdream.probes import preflight
from sysdream.probes.capture import Capture, exe_keys, kernel_dev

from ..alerting import kinds
from ..alerting.path import AlertPath
from ..config import Config, ConfigError
from ..context.cgroups import CgroupPaths
from ..context.processes import ProcessTable
from ..detect.cutter import Cutter
from ..detect.queue import Counters, WindowQueue
from ..detect.scorer import Scorer, Shadow
from ..exitcodes import MetricsPortError, StateDirError
from ..fleet.agent import Control, Remote, collect, events_of
from ..metrics.collector import Metrics, Sources
from ..metrics.labels import ExeLabels
from .behaviour import Behaviour
from .learner import Learner
from .logs import log, warn
from .logs import setup as setup_logging
from .modelslot import ModelSlot, trusted_keys
from .notify import Notifier
from .retrainer import Retrainer
from .runtime import bound_torch_caches, on_signals, release_memory
from .statusfile import StatusFile

DRAIN_S = 2.0
# Programs that take our alerts: their handling of them is not judged as their own
# behaviour (docs/architecture.md, "No feedback loop").
ALERT_TAKERS = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
FILTER_REFRESH_S = 5.0
HEALTH_BEAT_S = 10.0    # /healthz: the reader and the scorer turned within this long


@dataclass(frozen=True)
class CaptureStats:
    """The kernel's counters as last read, syscalls the reader read, and the BPF
    programs' (runs, nanoseconds) by name."""
    kernel: dict[str, int]
    syscalls_read: int
    programs: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class PipelineStats:
    """Threads in the thread table, windows in the cache and in the queue, the queue's
    capacity, and the alert bounds in force (NaN: no model yet)."""
    threads_tracked: int
    cache_windows: int
    queue_windows: int
    queue_capacity: int
    alert_bound: float
    program_bounds: dict[str, float]    # empty unless [metrics] detection_internals


def alert_takers() -> set[tuple[int, int]]:
    """(kernel dev, inode) of the journald binaries on this host."""
    out = set()
    for path in ALERT_TAKERS:
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.add((kernel_dev(st.st_dev), st.st_ino))
    return out


def check_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StateDirError(f"state directory {path}: {exc.strerror or exc}; create it "
                            "writable by the daemon (systemd: StateDirectory=sysdream) or "
                            "set [service] state_directory") from None


class Service:
    def __init__(self, cfg: Config, reload_config=None, notifier: Notifier | None = None):
        self.cfg = cfg
        setup_logging(cfg.service.log_level)
        self.reload_config = reload_config      # () -> Config, for SIGHUP
        self.notify = notifier or Notifier()
        self.kernel_counters: dict[str, int] = {}
        self.syscalls_read = 0
        self.queue = None
        self.cutter = None
        self.scorer = None
        self.labels = ExeLabels(cfg.metrics.exe_labels)
        self.counters = Counters(labels=self.labels)
        self.cgroups = CgroupPaths()
        self.processes = ProcessTable(cfg.detection.max_processes, cgroups=self.cgroups)
        self.processes.delivery_exes = alert_takers()
        self.alerting = AlertPath(cfg, self.processes, self.labels, log)
        self.sink = self.alerting.sink      # service events go the same way as alerts
        self.behaviour = Behaviour(cfg, self.processes, log) \
            if cfg.values["profiles"]["enabled"] else None
        self.learner = Learner(cfg, self.sink, log, lambda: self.capture.settings,
                               lambda: self.kernel_counters)
        self.retrainer = Retrainer(cfg, self.sink, log, lambda: self.capture.settings,
                                   lambda: self.kernel_counters,
                                   lambda path: self.slot.load(path), self._shadow,
                                   lambda: self.slot.retrained(),
                                   lambda: self.slot.model)
        self.slot = ModelSlot(cfg, self.sink, log, self._detect_with, self.learner,
                              self.retrainer)
        self._next_refresh = 0.0
        self.statusfile = StatusFile(cfg.state_dir(), cfg.service.status_interval_s)
        self._losses_seen: dict[str, int] = {}
        self._next_losses = 0.0
        self.metrics = None
        self.capture = None
        self._stop = False
        self._reload = False
        self._loop_beat = time.monotonic()    # the main loop's last turn (health)
        self._attached = False      # run() has begun: the probes are attached
        self._missing_exes: list[str] = []
        self.remote = None      # fleet/agent.py Remote when this daemon is an agent
        self.control = None     # ... and its Control: baseline out, the role's model in

    # -- read-only views of the learner's and the slot's state -------------------------
    @property
    def phase(self) -> str:
        """"starting" until the probes are attached (a model may be in use already: the
        capture program is compiled after it loads), then the learner's."""
        return self.learner.phase if self._attached else "starting"

    @property
    def model(self):
        return self.slot.model

    # -- what the metrics read: each owner's snapshot -----------------------------------
    def behaviour_stats(self) -> dict:
        b = self.behaviour
        if b is None:
            return {}
        return {**b.profiles.counts(), "acts": b.watch.acts,
                "unresolved_reads": b.watch.unresolved_reads}

    def capture_stats(self) -> CaptureStats:
        cap = self.capture
        return CaptureStats(dict(self.kernel_counters), self.syscalls_read,
                            cap.program_stats() if cap is not None and cap.bpf is not None
                            else {})

    def pipeline_stats(self) -> PipelineStats:
        s, q = self.scorer, self.queue
        return PipelineStats(len(self.cutter.threads) if self.cutter else 0,
                             len(s.cache) if s else 0, q.size if q else 0,
                             q.capacity if q else 0,
                             s.evidence.k if s is not None else float("nan"),
                             dict(s.evidence.bounds) if s is not None
                             and self.cfg.metrics.detection_internals else {})

    def new_metrics(self) -> Metrics:
        """The registry, with a collector per owner (and a fleet agent's own)."""
        metrics = Metrics(Sources(
            capture=self.capture_stats, counters=self.counters.stats,
            pipeline=self.pipeline_stats, alerts=self.alerting.stats,
            deliveries=self.sink.stats, processes=self.processes.stats,
            learner=lambda: dataclasses.replace(self.learner.stats(), phase=self.phase),
            model=self.slot.stats,
            retraining=self.retrainer.stats, exe_labels=lambda: self.labels.evictions,
            evictions=lambda: {**self.counters.stats().evictions,
                               "rate_limits": self.alerting.stats().limiter_evicted},
            behaviour=self.behaviour_stats))
        if self.remote is not None:
            remote, control = self.remote, self.control
            metrics.add(lambda: collect(remote, control))
        return metrics

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        """Everything that can fail on bad input, before anything is attached. Privileges
        first: without them every later step fails for that reason (exit 3), not another."""
        preflight.check_privileges().raise_if_failed()
        check_state_dir(self.cfg.state_dir())
        self.alerting.load_allow(self.cfg.state_dir() / "allow.json")
        if self.behaviour is not None:
            self.behaviour.load()
        self.slot.trusted = trusted_keys(self.cfg)
        f = self.cfg.fleet
        if f.server:     # an agent: the fleet server scores what the cache misses
            self.remote = Remote(f.server, f.server_key, f.key, f.role, f.timeout_ms,
                                 f.retry_s)
            log(f"agent {self.remote.name} of role {f.role}: the fleet server at {f.server} "
                f"scores, the local model when it does not answer in {f.timeout_ms} ms")
            self.alerting.fleet_server = f"{self.remote.server_name}@{f.server}"
            self.control = Control(self.remote, f.events or events_of(f.server),
                                   self.cfg.state_dir(), f.fetch_s)
            self.learner.control = self.control
        bound_torch_caches()    # before anything imports torch (service/runtime.py)
        m = self.cfg.metrics
        if m.enabled:   # before the model is put in use: its scorer feeds the histograms
            self.metrics = self.new_metrics()
            self.alerting.observe_latency = self.metrics.detection.observe
            try:
                self.metrics_port = self.metrics.serve(m.address, m.port, self.health,
                                                       m.web_config)
            except OSError as exc:
                raise MetricsPortError(f"metrics endpoint {m.address}:{m.port}: "
                                       f"{exc.strerror or exc}; stop what holds the port or "
                                       "set [metrics] port (or --metrics-port)") from None
        model_path = self.cfg.model_path()
        if self.slot.present(model_path) or self.cfg.service.model:
            self.slot.use(self.slot.load(model_path))
        self.capture = Capture(self.cfg.capture_settings(self.cgroups))
        self._configure_capture(self.capture.settings)
        if self.behaviour is not None and not self.capture.acts:
            log("behaviour profiles off: the kernel sends no act records here (no BTF or "
                "not x86_64); the sequence model alone judges")
            self.behaviour = None
        if self.behaviour is not None:
            self.alerting.watch = self.behaviour.watch
            self.alerting.behaviour_expected = self.behaviour.profiles.expected_per_hour
        if not self.capture.context:
            log(f"process context off ({self.capture.context_missing or 'configured so'}): "
                "alerts name processes from /proc, which a short-lived one has left")
        self._warn_spoofable(self.cfg)
        release_memory()
        self.kernel_counters = self.capture.counters()
        if self.control is not None and not self.cfg.service.model:
            # the role's model, when the server has one (a bundle named in [service] model
            # is the operator's choice and stays)
            self.control.want(self.model.model_id if self.model is not None else "")
        if self.model is None:
            self.learner.start()

    @staticmethod
    def _warn_spoofable(cfg: Config) -> None:
        c = cfg.capture
        if c.exclude_comms or c.include_comms:
            warn("include_comms/exclude_comms match the process name, which any "
                "process can set for itself (prctl PR_SET_NAME): a process can leave the "
                "trace by calling itself an excluded name; exclude by exclude_exes, "
                "exclude_cgroup_paths or exclude_uids instead")

    def _detect_with(self, view) -> None:
        """The pipeline detects with `view` (built on the first model, switched after);
        the model slot's use() is the way in."""
        d = self.cfg.detection
        if self.queue is None:
            self.queue = WindowQueue(d.queue_windows, self.counters)
        if self.cutter is None:
            self.cutter = Cutter(view, self.queue, self.counters, d.max_threads,
                                 self.processes)
            self.scorer = Scorer(view, self.queue, self.counters, self.alerting.detected,
                                 self.cfg.scorer_settings(),
                                 observe=self.metrics.observe if self.metrics else None,
                                 deliveries=self.alerting.deliveries, remote=self.remote)
            self.scorer.start()
        else:
            self.cutter.set_model(view)
            self.scorer.set_model(view)

    # -- scheduled retraining (daemon/service/retrainer.py) -----------------------------------
    def _shadow(self, view) -> dict | None:
        """A candidate judges the same windows as the model in use (`view`), or the one
        that did is taken down (None): what it found."""
        if view is not None:
            self.scorer.shadow = Shadow(view, self.cfg.scorer_settings(),
                                        self.alerting.deliveries)
            return None
        shadow, self.scorer.shadow = self.scorer.shadow, None
        return shadow.result() if shadow is not None else \
            {"windows": 0, "alerts": 0, "current": 0, "by_exe": {}}

    # -- reload -----------------------------------------------------------------------
    def _do_reload(self) -> None:
        self.notify.reloading()
        log("reloading (SIGHUP)")
        if self.reload_config is not None:
            try:
                new = self.reload_config()
                new.capture_settings(self.cgroups)      # what the kernel would refuse
                trusted = trusted_keys(new)
            except (ConfigError, ValueError) as exc:
                warn(f"reload: configuration refused, keeping the running one: {exc}")
                self.slot.reloads["failed"] += 1
                self.notify.ready(self._status())
                return
            self._apply_config(new)
            self.slot.trusted = trusted
        self.slot.reload()
        self.notify.ready(self._status())

    def _apply_config(self, new: Config) -> None:
        """Every key the table in config.py (RESTART_ONLY) does not hold for the next
        start takes effect now; each one it does that changed is said and keeps its start
        value."""
        old = self.cfg
        setup_logging(new.service.log_level)
        later = old.restart_changes(new)
        for section, key in later:
            log(f"[{section}] {key} changed: applies at the next start")
        if later:
            new = new.keeping(old, later)
        self._configure_capture(new.capture_settings(self.cgroups))
        self._warn_spoofable(new)
        d = new.detection
        if self.scorer:
            self.scorer.set_rules(d.evidence_exceedances, d.evidence_windows)
            self.scorer.explain_positions = new.alerts.explain_positions
            # read at each cycle of the scorer thread: the next cycle batches so
            self.scorer.batch_windows = d.batch_windows
            self.scorer.batch_wait = d.batch_wait_ms / 1000
        if self.queue:
            self.queue.capacity = d.queue_windows
        if self.cutter:
            self.cutter.max_threads = d.max_threads
        self.processes.max = d.max_processes    # the reader's thread, as ingest()
        if self.behaviour is not None:
            self.behaviour.apply(new)
        if not self.alerting.apply(new, old):
            self.slot.reloads["failed"] += 1
        self.cfg = self.learner.cfg = self.slot.cfg = self.retrainer.cfg = new
        if new.values["retraining"] != old.values["retraining"] and self.phase == "detecting":
            self.retrainer.begin()      # what was under way ends; the new schedule starts

    # -- the loop ---------------------------------------------------------------------
    def status_line(self) -> str:
        """The one-line state systemctl status shows (sd_notify STATUS=)."""
        return self._status()

    def _status(self) -> str:
        k = self.kernel_counters
        lost = k.get("lost_syscalls", 0) + k.get("lost_nostorage", 0)
        if self.phase != "detecting":
            return self.learner.status(lost)
        c = self.counters
        retraining = self.retrainer.status()
        return (f"detecting with model {self.model.model_id}: {self.syscalls_read} syscalls, "
                f"{c.windows_scored + c.windows_cached} windows, "
                f"{self.alerting.sent.total()} alerts, {lost} syscalls lost, "
                f"{sum(c.windows_shed.values())} windows shed"
                + (f"; {retraining}" if retraining else ""))

    def health(self) -> dict:
        """What /healthz answers: healthy while the reader turns and, when detecting, the
        scorer thread is alive and has beaten within HEALTH_BEAT_S."""
        now = time.monotonic()
        s = self.scorer
        scorer_ok = s is None or (s.thread is not None and s.thread.is_alive()
                                  and now - s.beat < HEALTH_BEAT_S)
        reader_ok = now - self._loop_beat < HEALTH_BEAT_S
        model = self.model
        return {"healthy": bool(scorer_ok and reader_ok), "phase": self.phase,
                "ready": self.phase == "detecting",
                "model_id": model.model_id if model is not None else "",
                "scorer_ok": bool(scorer_ok), "reader_ok": bool(reader_ok),
                "learning_progress": round(self.learner.progress, 4)}

    def _watchdog_ok(self, now: float) -> bool:
        s = self.scorer
        if s is None:  # learning: the reader loop turning is all there is to check
            return True
        limit = max(self.notify.watchdog_s / 2, 0.5)
        alive = s.thread is not None and s.thread.is_alive()
        return alive and now - s.beat < limit + 0.25

    def run(self) -> int:
        cap = self.capture
        on_signals(lambda: setattr(self, "_stop", True),
                   lambda: setattr(self, "_reload", True))
        self._attached = True
        self.notify.ready(self._status())
        self.statusfile.write(self)
        log(f"probes attached; {self._status()}")
        wd = self.notify.watchdog_s / 2 if self.notify.watchdog_s else 0.0
        tick = next_status = next_wd = time.monotonic()
        while not self._stop:
            cap.wait()
            self._take_pass(cap.read_pass())
            now = self._loop_beat = time.monotonic()
            if self._reload:
                self._reload = False
                self._do_reload()
                # a shorter status interval counts from now, not from the old one's end
                next_status = min(next_status, now + self.cfg.service.status_interval_s)
            if now >= tick:
                tick = now + 1.0
                self.kernel_counters = cap.counters()
                self.learner.flush()
                if self.learner.tick():     # its trainer left a bundle to load
                    self.slot.learnt()
                self.retrainer.flush()
                if self.phase == "detecting":
                    self.retrainer.tick()
                if self.control is not None:
                    self.slot.take_from_fleet(self.control)
                self.alerting.tick(now)
                self._losses(now)
                if self.behaviour is not None:
                    self.behaviour.tick(now)
                if now >= self._next_refresh:
                    self._next_refresh = now + FILTER_REFRESH_S
                    self._refresh_filters()
            if wd and now >= next_wd and self._watchdog_ok(now):
                self.notify.watchdog()
                next_wd = now + wd
            if now >= next_status:
                next_status = now + self.cfg.service.status_interval_s
                self.notify.status(self._status())
                self.statusfile.write(self)
        return self._shutdown()

    def _losses(self, now: float) -> None:
        """An evidence-lost event, at most one a minute, when what detection needs was
        dropped since the last: state evicted to stay bounded, windows shed from a full
        queue, syscalls lost. Each is something a process can cause on purpose (many
        children, a flood) to hide what it does next, so it is said, not only counted."""
        c, k = self.counters, self.kernel_counters
        seen = {**c.evictions, "rate_limits": self.alerting.limiter.evicted,
                "windows_shed": c.windows_shed.get("queue_full", 0),
                "syscalls_lost": k.get("lost_syscalls", 0) + k.get("lost_nostorage", 0)}
        rose = {w: n - self._losses_seen.get(w, 0) for w, n in seen.items()
                if n > self._losses_seen.get(w, 0)}
        if not rose or now < self._next_losses:
            return
        self._losses_seen, self._next_losses = seen, now + 60.0
        text = ("detection lost state it needed (an attacker can cause this on purpose): "
                + ", ".join(f"{n} {w.replace('_', ' ')}" for w, n in sorted(rose.items())))
        self.sink.emit("evidence-lost", kinds.WARNING, text,
                       {"kind": "evidence-lost", "lost": rose})

    def _refresh_filters(self) -> None:
        """Exclusions by path follow the files and cgroups they name: a package upgrade
        replaces an excluded binary, a container starts under a matching cgroup path.
        Exited processes leave the process table here too."""
        self.processes.expire()
        cap = self.capture
        try:
            want = self.cfg.capture_settings(self.cgroups)
            if cap.exes_changed() or want.exclude_cgroups != cap.settings.exclude_cgroups:
                self._configure_capture(want)
        except ValueError as exc:   # e.g. more matching cgroups than the kernel map holds
            log(f"capture filters not refreshed: {exc}")

    def _configure_capture(self, settings) -> None:
        self.capture.configure(settings)
        missing = exe_keys(settings.exclude_exes)[1]
        if missing != self._missing_exes:
            self._missing_exes = missing
            if missing:
                log(f"exclude_exes: no such file (yet): {', '.join(missing)}; excluded "
                    "once it exists")

    def _take_pass(self, p, final: bool = False) -> None:
        """Context first: the chunks and acts of a pass name processes it describes."""
        self._take_context(p.context)
        self._take_acts(p.acts, final=final)
        self._take(p.records)

    def _take_context(self, records: np.ndarray) -> None:
        if not records.size:
            return
        self.processes.ingest(records)
        model = self.model
        if model is not None and model.lineage is not None:
            model.lineage.on_context(records, self.processes)
        shadow = self.scorer.shadow if self.scorer is not None else None
        if shadow is not None and shadow.model.lineage is not None:
            shadow.model.lineage.on_context(records, self.processes)
        self.learner.record_context(records)
        self.retrainer.record_context(records)

    def _take_acts(self, records: np.ndarray, final: bool = False) -> None:
        """After the context records (an act's process is described first; the acts
        of a pass are judged on the next: service/behaviour.py)."""
        b = self.behaviour
        if b is None:
            return
        news = b.take(records, self.phase, self.learner.progress, final)
        self.alerting.behaviour_expected = b.profiles.expected_per_hour
        if news:
            self.alerting.news(news)

    def _take(self, records: np.ndarray) -> None:
        if not records.size:
            return
        width = records.dtype["ids"].shape[0]
        self.syscalls_read += int(np.minimum(records["count"], width).sum())
        if self.phase == "detecting":
            self.cutter.ingest(records)
            self.retrainer.record(records)
        elif self.phase == "learning":
            self.learner.record(records)

    def _shutdown(self) -> int:
        self.notify.stopping()
        cap = self.capture
        self._take_pass(cap.read_pass(), final=True)
        self.kernel_counters = cap.counters()
        if self.behaviour is not None:
            self.behaviour.save()
        if self.scorer:
            self.scorer.stop(DRAIN_S)
        self.learner.shutdown()
        self.retrainer.shutdown()
        self.statusfile.write(self, phase="stopped")
        self.close()
        k = self.kernel_counters
        shed = self.counters.windows_shed.get("shutdown", 0)
        log(f"stopped: {self.syscalls_read} syscalls read, "
            f"{k.get('lost_syscalls', 0) + k.get('lost_nostorage', 0)} lost, "
            f"{self.alerting.sent.total()} alerts"
            + (f", {shed} windows left unscored at the stop" if shed else ""))
        return 0

    def close(self) -> None:
        self.learner.close()
        if self.capture is not None:
            self.capture.close()
            self.capture = None
        if self.metrics is not None:
            self.metrics.close()
        self.alerting.close()
        if self.control is not None:      # first: its sockets share the remote's context
            self.control.close()
            self.control = None
        if self.remote is not None:
            self.remote.close()
            self.remote = None
