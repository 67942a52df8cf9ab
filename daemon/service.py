"""`sysdream run`: the service. Capture -> (learn | detect) -> alerts and metrics.

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

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from sysdream.probes.capture import kernel_dev

from . import alerts
from .alerting import AlertPath
from .cgroups import CgroupPaths
from .config import Config, ConfigError
from .exitcodes import MetricsPortError, StateDirError
from .labels import ExeLabels
from .notify import Notifier
from .pipeline import Counters
from .processes import ProcessTable
from .runtime import trainer_child

DRAIN_S = 2.0
# Programs that take our alerts: their handling of them is not judged as their own
# behaviour (docs/architecture.md, "No feedback loop").
ALERT_TAKERS = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
FILTER_REFRESH_S = 5.0
HEALTH_BEAT_S = 10.0    # /healthz: the reader and the scorer turned within this long
LEARN_RETRY_S = 60.0    # after the state directory refused the baseline, recording waits


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
        from tqdm import tqdm
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


def _new_baseline(state: Path) -> Path:
    """A name no earlier baseline has: the wall clock may have stepped back to a second
    already used (the writer replaces a file of the same name)."""
    stamp = int(time.time())
    path, n = state / f"baseline-{stamp}.sdtrace", 0
    while path.exists():
        n += 1
        path = state / f"baseline-{stamp}-{n}.sdtrace"
    return path


def _lineage_line(view, enabled: bool) -> str:
    if not enabled:
        return "lineage novelty off ([detection] lineage = false): the sequence model alone"
    if view.lineage is None:
        return ("no lineage profile in this model (trained without process context): "
                "alerts rest on the sequence model alone")
    prof = view.lineage.profile
    h = prof.heldout or {}
    held = (f"; its held-out last {h['seconds']:.0f} s gave {h['weight_per_hour']:.1f} "
            "windows' worth of novelty evidence an hour") if "weight_per_hour" in h else ""
    text = (f"lineage profile: {len(prof.programs)} programs, "
            f"{sum(map(len, prof.edges.values()))} exec edges over {prof.seconds:.0f} s"
            f"{held}")
    h = view.det.training.get("heldout_alerts")
    if isinstance(h, dict) and "per_hour" in h:
        text += (f"; the alert rule ({h.get('evidence')}, at {h.get('confidence', 0):.1%}) "
                 f"replayed on that held-out part raised {h.get('alerts')} alerts, "
                 f"{h['per_hour']} an hour")
    return text


def _alert_line(view, configured: float, m: int) -> str:
    from .pipeline import DEFAULT_EVIDENCE
    if configured:
        return (f"alert rule: a process alerts when its last {m} windows weigh {configured:g} "
                "windows at the bound ([detection] evidence_exceedances)")
    a = view.alert
    if a is None:
        return (f"no alert bound in this model (trained without a host's baseline, or too "
                f"few excursions held out of it to fit one): a process alerts when its last "
                f"{m} windows weigh {DEFAULT_EVIDENCE:g} windows at the bound")
    own = "; ".join(f"{p} {b:.2f}" for p, b in sorted(a.bounds().items()))
    return (f"alert bound {a.bound:.2f} at {a.confidence:.3%} ({a.fit.transform} fit on "
            f"{a.fit.samples} excursions in {a.seconds:.0f} s held out of learning, KS "
            f"{a.fit.ks_statistic:.3f})" + (f", programs with their own: {own}" if own
                                              else "") +
            f": {a.expected_per_hour():.2f} false alerts an hour expected of activity like "
            "the baseline's")


def trusted_keys(cfg) -> dict[str, bytes]:
    """[service] trusted_keys read (key id -> raw key); [learning] signing_key checked
    too. ConfigError (exit 12) for a key that cannot be used."""
    from .signing import load_public, signer
    out = dict(load_public(p) for p in cfg.service.trusted_keys)
    if cfg.learning.signing_key:
        signer(cfg.learning.signing_key)
    elif out and not cfg.service.model:
        raise ConfigError(f"{cfg.source}: [service] trusted_keys asks for signed models, but "
                          "the model this daemon learns would be unsigned; set [learning] "
                          "signing_key (and trust its .pub) or [service] model")
    return out


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
        self.model = None
        self.phase = "learning"
        self.learning_progress = 0.0
        self.baseline_syscalls = 0
        self.reloads: dict[str, int] = defaultdict(int)
        self.labels = ExeLabels(cfg.metrics.exe_labels)
        self.counters = Counters(labels=self.labels)
        self.cgroups = CgroupPaths()
        self.processes = ProcessTable(cfg.detection.max_processes, cgroups=self.cgroups)
        self.lineage_events: Counter = Counter()    # lineage novelty, by kind (metrics)
        self.processes.delivery_exes = alert_takers()
        self.alerting = AlertPath(cfg, self.processes, self.labels, log)
        self.sink = self.alerting.sink      # service events go the same way as alerts
        self._next_refresh = 0.0
        self.metrics = None
        self.capture = None
        self._stop = False
        self._reload = False
        self._loop_beat = time.monotonic()    # the main loop's last turn (health)
        self.trusted: dict[str, bytes] = {}   # [service] trusted_keys, read at start
        self._writer = None
        self._pending: list[np.ndarray] = []
        self._pending_context: list[np.ndarray] = []
        self._learn_started = 0.0
        self._trainer: subprocess.Popen | None = None
        self._trainer_log: list[str] = []
        self._train_epoch = 0
        self._bar = LearningBar()
        self.remote = None      # fleet/agent.py Remote when this daemon is an agent
        self.control = None     # ... and its Control: baseline out, the role's model in
        self._baseline_path: Path | None = None
        self.write_errors = 0           # the state directory refused a write
        self._baseline_cut = False      # ... after enough of the baseline was written
        self._learn_retry_at = 0.0      # ... before: when recording starts again

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
        from sysdream.probes import preflight
        preflight.check_privileges().raise_if_failed()
        check_state_dir(self.cfg.state_dir())
        self.alerting.load_allow(self.cfg.state_dir() / "allow.json")
        self.trusted = trusted_keys(self.cfg)
        f = self.cfg.fleet
        if f.server:     # an agent: the fleet server scores what the cache misses
            from .fleet.agent import Remote
            self.remote = Remote(f.server, f.server_key, f.key, f.role, f.timeout_ms,
                                 f.retry_s)
            log(f"agent {self.remote.name} of role {f.role}: the fleet server at {f.server} "
                f"scores, the local model when it does not answer in {f.timeout_ms} ms")
            self.alerting.fleet_server = f"{self.remote.server_name}@{f.server}"
            from .fleet.agent import Control, events_of
            self.control = Control(self.remote, f.events or events_of(f.server),
                                   self.cfg.state_dir(), f.fetch_s)
        from .runtime import adapt_torch, bound_torch_caches, release_memory
        bound_torch_caches()
        import torch

        torch.set_num_threads(self.cfg.detection.torch_threads)
        adapt_torch(log)
        m = self.cfg.metrics
        if m.enabled:   # before the model is put in use: its scorer feeds the histograms
            from .metrics import Metrics
            self.metrics = Metrics(self)
            self.alerting.observe_latency = self.metrics.detection.observe
            try:
                self.metrics_port = self.metrics.serve(m.address, m.port, self.health)
            except OSError as exc:
                raise MetricsPortError(f"metrics endpoint {m.address}:{m.port}: "
                                       f"{exc.strerror or exc}; stop what holds the port or "
                                       "set [metrics] port (or --metrics-port)") from None
        model_path = self.cfg.model_path()
        if self._has_model(model_path) or self.cfg.service.model:
            self._use_model(self._load(model_path), event=False)
        from sysdream.probes.capture import Capture
        self.capture = Capture(self.cfg.capture_settings(self.cgroups))
        self._configure_capture(self.capture.settings)
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
            self._start_learning()

    @staticmethod
    def _warn_spoofable(cfg: Config) -> None:
        c = cfg.capture
        if c.exclude_comms or c.include_comms:
            log("warning: include_comms/exclude_comms match the process name, which any "
                "process can set for itself (prctl PR_SET_NAME): a process can leave the "
                "trace by calling itself an excluded name; exclude by exclude_exes, "
                "exclude_cgroup_paths or exclude_uids instead")

    @staticmethod
    def _has_model(path: Path) -> bool:
        """Whether a bundle is there; one the daemon may not read is a bad model (exit
        11), not a missing one to learn over."""
        from sysdream.model.bundle import BundleError
        try:
            return (path / "manifest.json").exists()
        except PermissionError:
            raise BundleError(f"{path}: not readable by uid {os.geteuid()}; give the daemon "
                              "read access to the model (or run it as the unit does)") from None

    def _load(self, path: Path):
        from sysdream.model.bundle import BundleError
        from sysdream.model.detector import Detector

        from .pipeline import ModelView
        if not path.exists():
            raise BundleError(f"{path}: no model bundle there; train one with `sysdream "
                              "train` or leave [service] model empty to learn this host")
        signed = None
        if self.trusted:
            from .signing import check
            signed = check(path, self.trusted)
        det = Detector.load(path)
        if signed is not None and det.model_id != signed:
            raise BundleError(f"{path}: changed while it was read (the signed manifest names "
                              f"model {signed}); load it again")
        if det.bound is None:
            raise BundleError(f"{path}: the bundle has no calibrated bound; retrain it")
        try:
            view = ModelView(det, self.cfg.detection.confidence,
                             lineage=self.cfg.detection.lineage)
        except ValueError as exc:   # lineage.json that is not a profile
            raise BundleError(f"{path}: inconsistent bundle ({exc}); retrain it") from None
        self._verify(view)
        if view.lineage is not None:
            view.lineage.events = self.lineage_events   # counted across model swaps
        return view

    @staticmethod
    def _verify(view) -> None:
        """Score one window of padding: a bundle that loads but cannot run is refused."""
        from sysdream.model.bundle import BundleError
        from sysdream.model.scoring import score
        from sysdream.model.windows import cut
        try:
            s = score(view.det.net, cut(np.ones(view.p, np.int64), view.p, view.s, view.task),
                      1, detail=False).score
        except Exception as exc:
            raise BundleError(f"the model does not run: {str(exc)[:200]}") from None
        if not np.all(np.isfinite(s)):
            raise BundleError("the model scores a window as NaN or infinite; retrain it")

    def _use_model(self, view, event: bool = True) -> None:
        from .pipeline import Cutter, Scorer, WindowQueue
        d = self.cfg.detection
        if self.queue is None:
            self.queue = WindowQueue(d.queue_windows, self.counters)
        if self.cutter is None:
            self.cutter = Cutter(view, self.queue, self.counters, d.max_threads,
                                 self.processes)
            self.scorer = Scorer(view, self.queue, self.counters, self.alerting.detected,
                                 d.evidence_exceedances, d.evidence_windows, d.cache_windows,
                                 d.batch_windows, d.batch_wait_ms,
                                 self.cfg.alerts.explain_positions,
                                 observe=self.metrics.observe if self.metrics else None,
                                 deliveries=self.alerting.deliveries, remote=self.remote)
            self.scorer.start()
        else:
            self.cutter.set_model(view)
            self.scorer.set_model(view)
        self.model = view
        self.phase = "detecting"
        self.learning_progress = 1.0
        b = view.bound
        text = (f"model {view.model_id} in use: {view.det.cfg.arch} window {view.p}, "
                f"vocabulary {len(view.det.vocab)}, bound {b.bound:.4f} at "
                f"{b.confidence:.1%}")
        log(text)
        log(_lineage_line(view, self.cfg.detection.lineage))
        log(_alert_line(view, d.evidence_exceedances, d.evidence_windows))
        if event:
            self.sink.emit("model-loaded", alerts.INFO, text,
                           {"kind": "model-loaded", "model_id": view.model_id})

    # -- learning ---------------------------------------------------------------------
    def _start_learning(self) -> None:
        import dataclasses

        from sysdream.probes.tracefile import TraceWriter, host_header
        self.phase = "learning"
        settings = self.capture.settings
        path = _new_baseline(self.cfg.state_dir())
        self._baseline_path = path
        try:
            self._writer = TraceWriter(path, host_header(settings.chunk,
                                                         dataclasses.asdict(settings)))
        except OSError as exc:
            with contextlib.suppress(OSError):     # a file without a whole header is no
                path.unlink(missing_ok=True)        # baseline
            self._baseline_write_failed(exc)
        self._learn_started = time.monotonic()
        self.baseline_syscalls = 0
        L = self.cfg.learning
        if self._writer is None:       # the state directory refused the new file
            return
        text = (f"no model at {self.cfg.model_path()}: learning this host for "
                f"{L.baseline_seconds:.0f} s (at least {L.min_syscalls} syscalls) into {path}")
        log(text)
        self.sink.emit("learning-started", alerts.NOTICE, text,
                       {"kind": "learning-started", "baseline": str(path)})

    def _record(self, records: np.ndarray) -> None:
        if self._writer is None or not records.size:
            return
        if self.baseline_syscalls >= self.cfg.learning.max_syscalls:
            return
        self._pending.append(records)
        self.baseline_syscalls += int(records["count"].sum())

    def _flush_baseline(self) -> None:
        try:
            if self._writer is not None and self._pending_context:
                self._writer.write_context(np.concatenate(self._pending_context))
                self._pending_context.clear()
            if self._writer is not None and self._pending:
                self._writer.write_records(np.concatenate(self._pending))
                self._pending.clear()
                self._writer.write_counters(self.kernel_counters)
        except OSError as exc:
            self._baseline_write_failed(exc)

    def _close_baseline(self) -> None:
        """Flush and close the baseline being recorded (a failure as in a flush)."""
        self._flush_baseline()
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                self._baseline_write_failed(exc)
            self._writer = None

    def _baseline_write_failed(self, exc: OSError) -> None:
        """The state directory refused a write (full, read-only, gone): what was written
        stays, capture and detection go on. With enough syscalls written the baseline ends
        there and training starts; otherwise recording starts again in LEARN_RETRY_S."""
        self.write_errors += 1
        written = self._writer.syscalls if self._writer is not None else 0
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None
        self._pending.clear()
        self._pending_context.clear()
        L, where = self.cfg.learning, self.cfg.state_dir()
        if written >= L.min_syscalls:
            self._baseline_cut = True
            text = (f"state directory {where}: {exc.strerror or exc} after {written} "
                    "syscalls of the baseline; training on what was written")
        else:
            self._learn_retry_at = time.monotonic() + LEARN_RETRY_S
            text = (f"state directory {where}: {exc.strerror or exc} with {written} syscalls "
                    f"of the baseline written ({L.min_syscalls} needed); free space there: "
                    f"recording starts again in {LEARN_RETRY_S:.0f} s, capture goes on")
        log(text)
        self.sink.emit("learning-failed", alerts.ERR, text, {"kind": "learning-failed"})

    def _time_left(self, frac: float) -> str:
        """", about N min left" of the baseline at the pace so far (the slower of time
        and syscalls decides); "" before there is a pace."""
        elapsed = time.monotonic() - self._learn_started
        if not 0.01 <= frac < 1 or elapsed < 5:
            return ""
        return f", about {elapsed * (1 - frac) / frac / 60:.0f} min left"

    def _learning_tick(self) -> None:
        L = self.cfg.learning
        if self.phase == "learning" and self._writer is None and not self._baseline_cut:
            if time.monotonic() >= self._learn_retry_at:     # after a write failure
                self._start_learning()
            return
        if self.phase == "learning":
            elapsed = time.monotonic() - self._learn_started
            frac = min(elapsed / L.baseline_seconds, self.baseline_syscalls / L.min_syscalls,
                       1.0)
            if self._baseline_cut:
                frac = 1.0
            self.learning_progress = 0.5 * frac
            self._bar.show("learning this host", round(100 * frac, 1), 100, "%")
            if frac >= 1.0:
                self._close_baseline()
                self._baseline_cut = False
                if self.control is not None:      # the fleet server trains the role's
                    self._bar.close()
                    self.control.upload(self._baseline_path)
                    self.phase = "training"
                    log(f"baseline recorded ({self.baseline_syscalls} syscalls); sending it "
                        f"to the fleet server, which trains role {self.cfg.fleet.role}'s "
                        "model; capture continues")
                else:
                    self._start_training()
        elif self.phase == "training" and self._trainer is not None:
            rc = self._trainer.poll()
            self.learning_progress = 0.5 + 0.5 * min(self._train_epoch / L.epochs, 1.0)
            if rc is None:
                self._bar.show("training", self._train_epoch, L.epochs, "epoch")
                return
            self._bar.close()
            self._trainer = None
            if rc == 0:
                try:
                    view = self._load(self.cfg.model_path())
                except Exception as exc:  # noqa: BLE001 (any failure: keep learning)
                    self._training_failed(f"the trained bundle does not load: {exc}")
                    return
                self._use_model(view, event=False)
                text = (f"learning complete: detecting with model {view.model_id} "
                        f"(bound {view.bound.bound:.4f})")
                self.sink.emit("learning-complete", alerts.NOTICE, text,
                               {"kind": "learning-complete", "model_id": view.model_id})
            else:
                last = self._trainer_log[-1] if self._trainer_log else f"exit {rc}"
                self._training_failed(last)

    def _fleet_tick(self) -> None:
        """A role model the agent's Control fetched and checked: loaded (checksums,
        signature, one window run) and swapped in like a reload, or refused."""
        folder = self.control.take()
        if folder is None:
            return
        import shutil
        view = self._try_load(folder, "the fleet's model refused, the model in use stays",
                              "fleet")
        if view is None:
            shutil.rmtree(folder, ignore_errors=True)
            self.control.refused()
            return
        from sysdream.model.bundle import install
        install(folder, self.cfg.model_path())
        self._swap_in(view)
        self.control.want(view.model_id)
        self.sink.emit("learning-complete", alerts.NOTICE,
                       f"the fleet's model {view.model_id} for role "
                       f"{self.cfg.fleet.role} in use",
                       {"kind": "learning-complete", "model_id": view.model_id})

    def _training_failed(self, why: str) -> None:
        self._bar.close()
        text = f"training failed ({why}); recording more of this host and trying again"
        log(text)
        self.sink.emit("learning-failed", alerts.ERR, text, {"kind": "learning-failed"})
        self._start_learning()

    def _start_training(self) -> None:
        L = self.cfg.learning
        state = self.cfg.state_dir()
        inputs = [f"trace:{p}" for p in sorted(state.glob("baseline-*.sdtrace"))]
        sign = ["--sign", L.signing_key] if L.signing_key else []
        cmd = [sys.executable, "-m", "sysdream.daemon.cli", "train", *sign, "--input", *inputs,
               "-o", str(self.cfg.model_path()), "--arch", L.arch, "--window", str(L.window),
               "--hidden", str(L.hidden), "--embed", str(L.embed), "--epochs", str(L.epochs),
               "--threads", str(L.threads)]
        if self.model is None and self.cfg.detection.confidence:
            cmd += ["--confidence", str(self.cfg.detection.confidence)]
        log(f"baseline recorded ({self.baseline_syscalls} syscalls); training at nice "
            f"{L.nice}: {' '.join(cmd[3:])}")
        self.phase = "training"
        self._train_epoch = 0
        self._trainer_log = []
        env = {**os.environ, "OMP_NUM_THREADS": str(L.threads)}
        self._trainer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env=env,
                                         preexec_fn=trainer_child(L.nice))
        threading.Thread(target=self._read_trainer, args=(self._trainer,), daemon=True,
                         name="sysdream-trainer-log").start()

    def _read_trainer(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            line = line.strip()
            if not line:
                continue
            self._trainer_log.append(line)
            del self._trainer_log[:-20]
            if m := re.match(r"epoch (\d+):", line):
                self._train_epoch = int(m.group(1))
            log(f"trainer: {line}")

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
                self.reloads["failed"] += 1
                self.notify.ready(self._status())
                return
            self._apply_config(new)
            self.trusted = trusted
        path = self.cfg.model_path()
        if self._has_model(path) or self.cfg.service.model:
            view = self._try_load(path, "model reload refused, the running model stays",
                                  str(path))
            if view is not None:
                self._swap_in(view)
        self.notify.ready(self._status())

    def _try_load(self, path: Path, refused: str, where: str):
        """The bundle at `path` loaded and checked, or None: refused, counted, said."""
        from sysdream.model.bundle import BundleError
        try:
            return self._load(path)
        except (BundleError, OSError, ValueError) as exc:
            self.reloads["failed"] += 1
            text = f"{refused}: {exc}"
            log(text)
            self.sink.emit("model-rejected", alerts.ERR, text,
                           {"kind": "model-rejected", "path": where})
            return None

    def _swap_in(self, view) -> None:
        """A new model in use without a restart: learning and training in progress end."""
        if self._trainer is not None:
            self._trainer.kill()
            self._trainer = None
        self._close_baseline()
        self._bar.close()
        self._use_model(view)
        self.reloads["ok"] += 1

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
            self.reloads["failed"] += 1
        self.cfg = new

    # -- the loop ---------------------------------------------------------------------
    def _status(self) -> str:
        k = self.kernel_counters
        lost = k.get("lost_syscalls", 0) + k.get("lost_nostorage", 0)
        if self.phase == "learning":
            frac = self.learning_progress / 0.5
            return (f"learning this host: {frac:.0%} of the baseline recorded "
                    f"({self.baseline_syscalls} syscalls{self._time_left(frac)}), {lost} "
                    "syscalls lost")
        if self.phase == "training" and self.control is not None:
            return (f"waiting for role {self.cfg.fleet.role}'s model from the fleet server "
                    f"(baseline sent), capture continues, {lost} syscalls lost")
        if self.phase == "training":
            return (f"training on the baseline (epoch {self._train_epoch} of "
                    f"{self.cfg.learning.epochs}), capture continues, {lost} syscalls lost")
        c = self.counters
        return (f"detecting with model {self.model.model_id}: {self.syscalls_read} syscalls, "
                f"{c.windows_scored + c.windows_cached} windows, "
                f"{self.alerting.sent.total()} alerts, {lost} syscalls lost, "
                f"{sum(c.windows_shed.values())} windows shed")

    def health(self) -> dict:
        """What /healthz answers: healthy while the reader turns and, when detecting, the
        scorer thread is alive and has beaten within HEALTH_BEAT_S."""
        now = time.monotonic()
        s = self.scorer
        scorer_ok = s is None or (s.thread is not None and s.thread.is_alive()
                                  and now - s.beat < HEALTH_BEAT_S)
        reader_ok = now - self._loop_beat < HEALTH_BEAT_S
        return {"healthy": bool(scorer_ok and reader_ok), "phase": self.phase,
                "ready": self.phase == "detecting",
                "model_id": self.model.model_id if self.model is not None else "",
                "scorer_ok": bool(scorer_ok), "reader_ok": bool(reader_ok),
                "learning_progress": round(self.learning_progress, 4)}

    def _watchdog_ok(self, now: float) -> bool:
        s = self.scorer
        if s is None:  # learning: the reader loop turning is all there is to check
            return True
        limit = max(self.notify.watchdog_s / 2, 0.5)
        alive = s.thread is not None and s.thread.is_alive()
        return alive and now - s.beat < limit + 0.25

    def run(self) -> int:
        cap = self.capture
        signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop", True))
        self.notify.ready(self._status())
        log(f"probes attached; {self._status()}")
        wd = self.notify.watchdog_s / 2 if self.notify.watchdog_s else 0.0
        tick = next_status = next_wd = time.monotonic()
        interval = self.cfg.service.status_interval_s
        while not self._stop:
            cap.wait()
            # context first: a process's record is sent before its first chunk
            self._take_context(cap.read_context())
            self._take(cap.read())
            now = self._loop_beat = time.monotonic()
            if self._reload:
                self._reload = False
                self._do_reload()
            if now >= tick:
                tick = now + 1.0
                self.kernel_counters = cap.counters()
                self._flush_baseline()
                self._learning_tick()
                if self.control is not None:
                    self._fleet_tick()
                self.alerting.tick(now)
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
        from sysdream.probes.capture import exe_keys

        self.capture.configure(settings)
        missing = exe_keys(settings.exclude_exes)[1]
        if missing != getattr(self, "_missing_exes", []):
            self._missing_exes = missing
            if missing:
                log(f"exclude_exes: no such file (yet): {', '.join(missing)}; excluded "
                    "once it exists")

    def _take_context(self, records: np.ndarray) -> None:
        if not records.size:
            return
        self.processes.ingest(records)
        if self.model is not None and self.model.lineage is not None:
            self.model.lineage.on_context(records, self.processes)
        if self.phase == "learning" and self._writer is not None and \
                self.baseline_syscalls < self.cfg.learning.max_syscalls:
            self._pending_context.append(records)   # the baseline keeps who was who

    def _take(self, records: np.ndarray) -> None:
        if not records.size:
            return
        width = records.dtype["ids"].shape[0]
        self.syscalls_read += int(np.minimum(records["count"], width).sum())
        if self.phase == "detecting":
            self.cutter.ingest(records)
        elif self.phase == "learning":
            self._record(records)

    def _shutdown(self) -> int:
        self.notify.stopping()
        cap = self.capture
        self._take_context(cap.read_context())
        self._take(cap.read())
        self.kernel_counters = cap.counters()
        if self.scorer:
            self.scorer.stop(DRAIN_S)
        self._close_baseline()
        if self._trainer is not None:
            self._trainer.kill()
        self.close()
        k = self.kernel_counters
        log(f"stopped: {self.syscalls_read} syscalls read, "
            f"{k.get('lost_syscalls', 0) + k.get('lost_nostorage', 0)} lost, "
            f"{self.alerting.sent.total()} alerts")
        return 0

    def close(self) -> None:
        self._bar.close()
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
