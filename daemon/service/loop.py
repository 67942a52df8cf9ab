"""`sysdream run`: the service's main loop. Capture -> (learn | detect) -> alerts and metrics.

Owns the lifecycle: signals, the systemd notifications (READY, STATUS, WATCHDOG), /healthz,
the capture and its filters, the reader/scorer pipeline, configuration reloads and the
shutdown. Learning (baseline, trainer, fleet hand-off) is daemon/service/learner.py's, the model
in use and its loading and swapping daemon/service/modelslot.py's, scheduled retraining (recording
while detecting, the candidate's trainer, its shadow and the swap) daemon/service/retrainer.py's;
the Service owns one of each.

Lifecycle (systemd Type=notify): READY=1 once the probes are attached; STATUS= every
status interval; WATCHDOG=1 only while the reader loop turns and the scorer shows signs of
life; SIGHUP reloads the configuration and the model without detaching the probes
(RELOADING=1 ... READY=1; a bundle that does not load keeps the old model); SIGTERM or
SIGINT scores what is queued (at most 2 s), writes what was recorded, and exits 0.

Learn-then-detect: with no model, the daemon records this host into
state_directory/baseline-<time>.sdtrace for `baseline_seconds` (and at least
`min_syscalls`), trains in a child process at nice 19 and SCHED_IDLE while capture goes on,
saves the bundle to state_directory/model and switches to detection without a restart.
A failed training keeps the recordings and records again for another period.
"""

from __future__ import annotations

import os
import sys
import time
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
from ..fleet.agent import Control, Remote, events_of
from ..metrics.collector import Metrics
from ..metrics.labels import ExeLabels
from ..training.progress import LearningBar
from .behaviour import Behaviour
from .learner import Learner
from .modelslot import ModelSlot, trusted_keys
from .notify import Notifier
from .retrainer import Retrainer
from .runtime import adapt_torch, bound_torch_caches, on_signals, release_memory

DRAIN_S = 2.0
# Programs that take our alerts: their handling of them is not judged as their own
# behaviour (docs/architecture.md, "No feedback loop").
ALERT_TAKERS = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
FILTER_REFRESH_S = 5.0
HEALTH_BEAT_S = 10.0    # /healthz: the reader and the scorer turned within this long


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


def log(msg: str) -> None:
    if LearningBar.active is not None:
        LearningBar.active.write(f"sysdream: {msg}", file=sys.stderr)
        return
    print(f"sysdream: {msg}", file=sys.stderr, flush=True)


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
        self.slot = ModelSlot(cfg, self.sink, log, self._use_model, self.learner.stop)
        self.retrainer = Retrainer(cfg, self.sink, log, lambda: self.capture.settings,
                                   lambda: self.kernel_counters, self.slot.load,
                                   self._shadow, self._retrained)
        self._next_refresh = 0.0
        self.metrics = None
        self.capture = None
        self._stop = False
        self._reload = False
        self._loop_beat = time.monotonic()    # the main loop's last turn (health)
        self._missing_exes: list[str] = []
        self.remote = None      # fleet/agent.py Remote when this daemon is an agent
        self.control = None     # ... and its Control: baseline out, the role's model in

    # -- read-only views of the learner's and the slot's state -------------------------
    @property
    def phase(self) -> str:
        return self.learner.phase

    @property
    def model(self):
        return self.slot.model

    # -- what the metrics collector reads ---------------------------------------------
    def threads_tracked(self) -> int:
        return len(self.cutter.threads) if self.cutter else 0

    def cache_size(self) -> int:
        return len(self.scorer.cache) if self.scorer else 0

    def program_stats(self) -> dict:
        cap = self.capture
        return cap.program_stats() if cap is not None and cap.bpf is not None else {}

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
        bound_torch_caches()
        import torch  # only now: bound_torch_caches() must run first

        torch.set_num_threads(self.cfg.detection.torch_threads)
        adapt_torch(log)
        m = self.cfg.metrics
        if m.enabled:   # before the model is put in use: its scorer feeds the histograms
            self.metrics = Metrics(self)
            self.alerting.observe_latency = self.metrics.detection.observe
            try:
                self.metrics_port = self.metrics.serve(m.address, m.port, self.health)
            except OSError as exc:
                raise MetricsPortError(f"metrics endpoint {m.address}:{m.port}: "
                                       f"{exc.strerror or exc}; stop what holds the port or "
                                       "set [metrics] port (or --metrics-port)") from None
        model_path = self.cfg.model_path()
        if self.slot.present(model_path) or self.cfg.service.model:
            self._use_model(self.slot.load(model_path), event=False)
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
            log("warning: include_comms/exclude_comms match the process name, which any "
                "process can set for itself (prctl PR_SET_NAME): a process can leave the "
                "trace by calling itself an excluded name; exclude by exclude_exes, "
                "exclude_cgroup_paths or exclude_uids instead")

    def _use_model(self, view, event: bool = True) -> None:
        """The pipeline detects with `view` (built on the first model, switched after)."""
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
        self.slot.model = view
        self.learner.finish()
        self.slot.announce(view, event)
        # at start and after learning the schedule runs from the bundle's time; a model
        # swapped in (a reload, the fleet, a retraining) starts a whole interval
        self.retrainer.begin(from_bundle=not event)

    def _learning_tick(self) -> None:
        """The learner's second; a trainer that exited 0 left its bundle to load."""
        if not self.learner.tick():
            return
        try:
            view = self.slot.load(self.cfg.model_path())
        except Exception as exc:  # noqa: BLE001 (any failure: keep learning)
            self.learner.failed(f"the trained bundle does not load: {exc}")
            return
        self._use_model(view, event=False)
        text = (f"learning complete: detecting with model {view.model_id} "
                f"(bound {view.bound.bound:.4f})")
        self.sink.emit("learning-complete", kinds.NOTICE, text,
                       {"kind": "learning-complete", "model_id": view.model_id})

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

    def _retrained(self) -> None:
        """The retrained bundle is at the model path: in use like a reload's."""
        path = self.cfg.model_path()
        view = self.slot.try_load(path, "the retrained model refused, the running model "
                                  "stays", str(path))
        if view is None:
            self.retrainer.begin_next()
        else:
            self.slot.swap_in(view)

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
                log(f"reload: configuration refused, keeping the running one: {exc}")
                self.slot.reloads["failed"] += 1
                self.notify.ready(self._status())
                return
            self._apply_config(new)
            self.slot.trusted = trusted
        self.slot.reload()
        self.notify.ready(self._status())

    def _apply_config(self, new: Config) -> None:
        old = self.cfg
        fixed = ("chunk", "flush_age_s", "ring_buffer_pages", "strict_compat")
        changed = [k for k in fixed if old.capture.__dict__[k] != new.capture.__dict__[k]]
        if changed:
            log(f"reload: {', '.join(changed)} take effect at the next restart")
            for k in changed:
                new.values["capture"][k] = old.values["capture"][k]
            new = Config(new.values, new.source)
        self._configure_capture(new.capture_settings(self.cgroups))
        self._warn_spoofable(new)
        d = new.detection
        if self.scorer:
            self.scorer.set_rules(d.evidence_exceedances, d.evidence_windows)
            self.scorer.explain_positions = new.alerts.explain_positions
        if self.queue:
            self.queue.capacity = d.queue_windows
        if self.cutter:
            self.cutter.max_threads = d.max_threads
        if not self.alerting.apply(new, old):
            self.slot.reloads["failed"] += 1
        self.cfg = self.learner.cfg = self.slot.cfg = self.retrainer.cfg = new
        if new.values["retraining"] != old.values["retraining"] and self.phase == "detecting":
            self.retrainer.begin()      # what was under way ends; the new schedule starts

    # -- the loop ---------------------------------------------------------------------
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
        self.notify.ready(self._status())
        log(f"probes attached; {self._status()}")
        wd = self.notify.watchdog_s / 2 if self.notify.watchdog_s else 0.0
        tick = next_status = next_wd = time.monotonic()
        interval = self.cfg.service.status_interval_s
        while not self._stop:
            cap.wait()
            # context first: a process's record is sent before its first chunk
            self._take_context(cap.read_context())
            self._take_acts(cap.read_acts())
            self._take(cap.read())
            now = self._loop_beat = time.monotonic()
            if self._reload:
                self._reload = False
                self._do_reload()
            if now >= tick:
                tick = now + 1.0
                self.kernel_counters = cap.counters()
                self.learner.flush()
                self._learning_tick()
                self.retrainer.flush()
                if self.phase == "detecting":
                    self.retrainer.tick()
                if self.control is not None:
                    self.slot.take_from_fleet(self.control)
                self.alerting.tick(now)
                if self.behaviour is not None:
                    self.behaviour.tick(now)
                if now >= self._next_refresh:
                    self._next_refresh = now + FILTER_REFRESH_S
                    self._refresh_filters()
            if wd and now >= next_wd and self._watchdog_ok(now):
                self.notify.watchdog()
                next_wd = now + wd
            if now >= next_status:
                next_status = now + interval
                self.notify.status(self._status())
        return self._shutdown()

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

    def _take_acts(self, records: np.ndarray) -> None:
        """After the context records (an act's process is described first)."""
        b = self.behaviour
        if b is None:
            return
        news = b.take(records, self.phase, self.learner.progress)
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
        self._take_context(cap.read_context())
        self._take_acts(cap.read_acts())
        self._take(cap.read())
        self.kernel_counters = cap.counters()
        if self.behaviour is not None:
            self.behaviour.save()
        if self.scorer:
            self.scorer.stop(DRAIN_S)
        self.learner.shutdown()
        self.retrainer.shutdown()
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
