"""The service's model slot: which model the daemon detects with, and how another one
gets in.

Owns the model in use, the keys trusted to sign bundles ([service] trusted_keys), loading
a bundle (checksums, signature, a calibrated bound, one window of padding scored) and
swapping one in without a restart, from a reload (SIGHUP), from the learner's trainer,
from the retrainer or from the fleet server; a bundle that does not load is refused,
counted and said while the model in use stays. `use()` is the one way a model goes in
use: the pipeline takes it (the cutter and scorer are the main loop's, service/loop.py,
handed in as `pipeline`), learning ends, it is announced, and the retraining schedule
starts over. `stats()` is what the metrics read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sysdream.model import bundle as bundle_io
from sysdream.model.bundle import BundleError, install
from sysdream.model.windows import cut

from ..alerting import kinds
from ..config import Config, ConfigError
from ..detect.view import DEFAULT_EVIDENCE, FALLBACK_WINDOW_MAX, ModelView
from ..signing import SIGNATURE, check_bytes, load_public, signer, signing_key
from .runtime import prepare_torch

NAN = float("nan")
NOVELTY_KINDS = ("new_program", "new_edge", "fileless_exec", "new_syscall", "new_sequence")


@dataclass(frozen=True)
class ModelStats:
    """The model in use, as the metrics show it. The three per-hour figures are NaN when
    the bundle has none: no lineage profile, not replayed, no alert bound."""
    model_id: str
    arch: str
    task: str
    window: int
    trained_at: str
    vocabulary: int
    bound: float
    confidence: float
    lineage_heldout_per_hour: float     # lineage novelty evidence, held-out quarter
    heldout_alerts_per_hour: float      # the alert rule replayed on the held-out quarter
    expected_false_alerts_per_hour: float


@dataclass(frozen=True)
class SlotStats:
    """Model loads after start by result, lineage novelty events by kind (across swaps),
    and the model in use (None while there is none)."""
    reloads: dict[str, int]
    lineage_events: dict[str, int]
    model: ModelStats | None


def model_stats(m: ModelView) -> ModelStats:
    held = (m.lineage.profile.heldout or {}) if m.lineage is not None else {}
    t = m.det.training or {}
    replay = t.get("heldout_alerts")
    per_hour = replay.get("per_hour") if isinstance(replay, dict) else None
    return ModelStats(
        m.model_id, m.det.cfg.arch, m.task, m.p, str(t.get("trained_at", "")),
        len(m.det.vocab), m.bound.bound, m.bound.confidence,
        held.get("weight_per_hour", NAN),
        float(per_hour) if isinstance(per_hour, (int, float)) else NAN,
        m.alert.expected_per_hour() if m.alert is not None else NAN)


def trusted_keys(cfg: Config) -> dict[str, bytes]:
    """[service] trusted_keys read (key id -> raw key); [learning] signing_key checked
    too. ConfigError (exit 12) for a key that cannot be used."""
    out = dict(load_public(p) for p in cfg.service.trusted_keys)
    if signing_key(cfg.learning.signing_key):
        signer(signing_key(cfg.learning.signing_key))
    elif out and not cfg.service.model:
        raise ConfigError(f"{cfg.source}: [service] trusted_keys asks for signed models, but "
                          "the model this daemon learns would be unsigned; set [learning] "
                          "signing_key (and trust its .pub) or [service] model")
    return out


def lineage_line(view: ModelView, enabled: bool) -> str:
    if not enabled:
        return "lineage novelty off ([detection] lineage = false): the sequence model alone"
    if view.lineage is None:
        return ("no lineage profile in this model (trained without process context): "
                "alerts rest on the sequence model alone")
    prof = view.lineage.profile
    h = prof.heldout or {}
    held = (f"; its held-out last {h['seconds']:.0f} s gave {h['weight_per_hour']:.1f} "
            "windows' worth of novelty evidence an hour") if "weight_per_hour" in h else ""
    seqs = (f", {sum(map(len, prof.grams.values()))} 6-syscall sequences"
            if prof.grams and prof.gram_default else "")
    text = (f"lineage profile: {len(prof.programs)} programs, "
            f"{sum(map(len, prof.edges.values()))} exec edges{seqs} over "
            f"{prof.seconds:.0f} s{held}")
    h = view.det.training.get("heldout_alerts")
    if isinstance(h, dict) and "per_hour" in h:
        text += (f"; the alert rule ({h.get('evidence')}, at {h.get('confidence', 0):.1%}) "
                 f"replayed on that held-out part raised {h.get('alerts')} alerts, "
                 f"{h['per_hour']} an hour")
    return text


def alert_line(view: ModelView, configured: float, m: int) -> str:
    if configured:
        return (f"alert rule: a process alerts when its last {m} windows weigh {configured:g} "
                "windows at the bound ([detection] evidence_exceedances)")
    a = view.alert
    if a is None:
        return (f"no alert bound in this model (trained without a host's baseline, or too "
                f"few excursions held out of it to fit one): a process alerts when its last "
                f"{m} windows weigh {DEFAULT_EVIDENCE:g} windows at the bound, one window "
                f"at most {FALLBACK_WINDOW_MAX:g}")
    own = "; ".join(f"{p} {b:.2f}" for p, b in sorted(a.bounds().items()))
    return (f"alert bound {a.bound:.2f} at {a.confidence:.3%} ({a.fit.transform} fit on "
            f"{a.fit.samples} excursions in {a.seconds:.0f} s held out of learning, KS "
            f"{a.fit.ks_statistic:.3f})" + (f", programs with their own: {own}" if own
                                              else "") +
            f": {a.expected_per_hour():.2f} false alerts an hour expected of activity like "
            "the baseline's")


def verify(view: ModelView) -> None:
    """Score one window of padding: a bundle that loads but cannot run is refused."""
    from sysdream.model.scoring import score  # imports torch: after runtime's setup
    try:
        s = score(view.det.net, cut(np.ones(view.p, np.int64), view.p, view.s, view.task),
                  1, detail=False).score
    except Exception as exc:
        raise BundleError(f"the model does not run: {str(exc)[:200]}") from None
    if not np.all(np.isfinite(s)):
        raise BundleError("the model scores a window as NaN or infinite; retrain it")


class ModelSlot:
    """The model in use and the way in for the next one."""

    def __init__(self, cfg: Config, sink, log: Callable[[str], None],
                 pipeline: Callable[[ModelView], None], learner, retrainer):
        self.cfg = cfg              # the main loop swaps it on a reload
        self.sink = sink
        self.log = log
        self._pipeline = pipeline   # the cutter and the scorer detect with the view
        self.learner = learner      # service/learner.py: a model in use ends learning
        self.retrainer = retrainer  # service/retrainer.py: ... and starts its schedule
        self.model: ModelView | None = None
        self.trusted: dict[str, bytes] = {}     # [service] trusted_keys, read at start
        self.reloads: dict[str, int] = defaultdict(int)
        self.lineage_events: Counter = Counter()    # lineage novelty, by kind (metrics)

    def stats(self) -> SlotStats:
        """What the metrics read at a scrape."""
        m = self.model
        return SlotStats({"ok": 0, "failed": 0, **self.reloads},
                         {k: 0 for k in NOVELTY_KINDS} | dict(self.lineage_events),
                         model_stats(m) if m is not None else None)

    @staticmethod
    def present(path: Path) -> bool:
        """Whether a bundle is there; one the daemon may not read is a bad model (exit
        11), not a missing one to learn over."""
        try:
            return (path / "manifest.json").exists()
        except PermissionError:
            raise BundleError(f"{path}: not readable by uid {os.geteuid()}; give the daemon "
                              "read access to the model (or run it as the unit does)") from None

    def load(self, path: Path) -> ModelView:
        """The bundle at `path` loaded and checked; BundleError when it cannot be used."""
        from sysdream.model.detector import Detector
        if not path.exists():
            raise BundleError(f"{path}: no model bundle there; train one with `sysdream "
                              "train` or leave [service] model empty to learn this host")
        if self.trusted:
            # one read: the signature checked over the manifest bytes whose checksums
            # the files read with them match, and the model loaded from a private copy
            # of those very bytes (no second read an attacker could swap in between)
            manifest, files = bundle_io.read_verified(path, (SIGNATURE,))
            signed = check_bytes(path, manifest, files.pop(SIGNATURE, None), self.trusted)
            with tempfile.TemporaryDirectory(prefix="sysdream-bundle-") as private:
                bundle_io.copy_to(files, manifest, private)
                det = Detector.load(private, runtime="auto",
                                    threads=self.cfg.detection.torch_threads, log=self.log)
            if det.model_id != signed:
                raise BundleError(f"{path}: the signed manifest names model {signed}, the "
                                  f"bundle is {det.model_id}; restore or re-sign it")
        else:
            det = Detector.load(path, runtime="auto",
                                threads=self.cfg.detection.torch_threads, log=self.log)
        if det.runtime == "torch":
            prepare_torch(self.cfg.detection.torch_threads, self.log)
        if det.bound is None:
            raise BundleError(f"{path}: the bundle has no calibrated bound; retrain it")
        try:
            view = ModelView(det, self.cfg.detection.confidence,
                             lineage=self.cfg.detection.lineage)
        except ValueError as exc:   # lineage.json that is not a profile
            raise BundleError(f"{path}: inconsistent bundle ({exc}); retrain it") from None
        verify(view)
        if view.lineage is not None:
            view.lineage.events = self.lineage_events   # counted across model swaps
        return view

    def try_load(self, path: Path, refused: str, where: str) -> ModelView | None:
        """The bundle at `path` loaded and checked, or None: refused, counted, said."""
        try:
            return self.load(path)
        except (BundleError, OSError, ValueError) as exc:
            self.reloads["failed"] += 1
            text = f"{refused}: {exc}"
            self.log(text)
            self.sink.emit("model-rejected", kinds.ERR, text,
                           {"kind": "model-rejected", "path": where})
            return None

    def announce(self, view: ModelView, event: bool) -> None:
        """What the model now in use is, in the log and (event) as a service event."""
        d = self.cfg.detection
        b = view.bound
        text = (f"model {view.model_id} in use: {view.det.cfg.arch} window {view.p}, "
                f"vocabulary {len(view.det.vocab)}, bound {b.bound:.4f} at "
                f"{b.confidence:.1%}")
        self.log(text)
        self.log(lineage_line(view, d.lineage))
        self.log(alert_line(view, d.evidence_exceedances, d.evidence_windows))
        if event:
            self.sink.emit("model-loaded", kinds.INFO, text,
                           {"kind": "model-loaded", "model_id": view.model_id})

    def use(self, view: ModelView, swapped: bool = False) -> None:
        """The one way a model goes in use. At the start or from the learner's trainer
        (`swapped` False) the retraining schedule runs from the bundle's time, so that
        restarts do not put it off; a model swapped in without a restart (a reload, the
        fleet, a retraining) ends the learning and training under way, is counted and
        sent as an event, and the next retraining waits a whole interval."""
        if swapped:
            self.learner.stop()
        self._pipeline(view)
        self.model = view
        self.learner.finish()
        self.announce(view, swapped)
        self.retrainer.begin(from_bundle=not swapped)
        if swapped:
            self.reloads["ok"] += 1

    def learnt(self) -> None:
        """The learner's trainer exited 0: the bundle it left at the model path in use,
        or, when it does not load, learning goes on."""
        try:
            view = self.load(self.cfg.model_path())
        except Exception as exc:  # noqa: BLE001 (any failure: keep learning)
            self.learner.failed(f"the trained bundle does not load: {exc}")
            return
        self.use(view)
        text = (f"learning complete: detecting with model {view.model_id} "
                f"(bound {view.bound.bound:.4f})")
        self.sink.emit("learning-complete", kinds.NOTICE, text,
                       {"kind": "learning-complete", "model_id": view.model_id})

    def retrained(self) -> None:
        """The retrainer installed its candidate at the model path: in use like a
        reload's, or refused and the next retraining an interval away."""
        path = self.cfg.model_path()
        view = self.try_load(path, "the retrained model refused, the running model "
                             "stays", str(path))
        if view is None:
            self.retrainer.begin_next()
        else:
            self.use(view, swapped=True)

    def reload(self) -> None:
        """SIGHUP: the bundle at the model path again, when there is one."""
        path = self.cfg.model_path()
        if self.present(path) or self.cfg.service.model:
            view = self.try_load(path, "model reload refused, the running model stays",
                                 str(path))
            if view is not None:
                self.use(view, swapped=True)

    def take_from_fleet(self, control) -> None:
        """A role model the agent's Control fetched and checked: loaded (checksums,
        signature, one window run) and swapped in like a reload, or refused."""
        folder = control.take()
        if folder is None:
            return
        view = self.try_load(folder, "the fleet's model refused, the model in use stays",
                             "fleet")
        if view is None:
            shutil.rmtree(folder, ignore_errors=True)
            control.refused()
            return
        install(folder, self.cfg.model_path())
        self.use(view, swapped=True)
        control.want(view.model_id)
        self.sink.emit("learning-complete", kinds.NOTICE,
                       f"the fleet's model {view.model_id} for role "
                       f"{self.cfg.fleet.role} in use",
                       {"kind": "learning-complete", "model_id": view.model_id})
