"""A trained detector: vocabulary + network + calibrated bound, built by training or loaded
from a bundle. It takes per-thread sequences of syscall names and gives window scores,
exceedances and what explains them.

Loaded from a bundle with the exported graph (model.onnx), it scores with ONNX Runtime
and does not import torch (model/export.py); otherwise with torch, as it was trained."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import archs, calibration
from . import bundle as bundle_io
from .calibration import GaussianBound
from .config import NetworkConfig, TrainSettings
from .embedding import train_word2vec
from .scoring import WindowScores, score
from .vocab import Vocabulary
from .windows import (
    COND_DROPOUT,
    COND_UNKNOWN,
    MIN_COND_WINDOWS,
    Geometry,
    Windows,
    condition,
    count,
    cut,
    cut_many,
    holdout,
)

if TYPE_CHECKING:
    from torch import nn

RUNTIMES = ("auto", "onnx", "torch")    # Detector.load: which network scores
AGGREGATE = "mean"  # a trace's score: the mean of its window scores (see docs/model.md)


def fingerprint(sequences: list[np.ndarray]) -> dict:
    """What the model was trained on, without the data: counts and a sha256 of the names."""
    h = hashlib.sha256()
    total = 0
    for s in sequences:
        h.update("\x1f".join(map(str, s.tolist())).encode())
        h.update(b"\x1e")
        total += len(s)
    return {"sequences": len(sequences), "syscalls": total, "sha256": h.hexdigest()}


def distinct_windows(w: Windows) -> np.ndarray:
    """Index of one occurrence of each distinct window (what the model read and scored)."""
    if len(w) == 0:
        return np.zeros(0, np.int64)
    key = np.concatenate([w.prev, w.src, w.tgt * np.where(w.mask, 1, -1)], axis=1)
    return np.sort(np.unique(key, axis=0, return_index=True)[1])


@dataclass
class SequenceScores:
    windows: Windows
    scores: WindowScores
    exceeds: np.ndarray          # [N] bool: window above the calibrated bound
    unknown: list[str]           # syscall names this model never saw
    names: np.ndarray            # the sequence as given (unknown names kept)

    @property
    def trace_score(self) -> float:
        return float(self.scores.score.mean()) if len(self.scores.score) else 0.0


class Detector:
    def __init__(self, cfg: NetworkConfig, vocab: Vocabulary, net: nn.Module,
                 bound: GaussianBound | None, embedding: np.ndarray, training: dict,
                 model_id: str = "", transfer: dict | None = None,
                 lineage: dict | None = None, alerting: dict | None = None):
        self.cfg, self.vocab, self.net, self.bound = cfg, vocab, net, bound
        self.embedding, self.training, self.model_id = embedding, training, model_id
        self.transfer = transfer
        self.lineage = lineage    # the daemon's lineage profile, carried as written
        self.alerting = alerting  # the daemon's alert bound (daemon/detect/evidence.py), likewise
        self.onnx: bytes | None = None      # the exported graph, as in the bundle
        self._weights: bytes | None = None  # weights.pt as read, when net is not torch's
        net.eval()

    @property
    def runtime(self) -> str:
        """What scores: "onnxruntime" (the exported graph) or "torch"."""
        return getattr(self.net, "runtime", "torch")

    # -- training ---------------------------------------------------------------------
    @classmethod
    def train(cls, train_seqs: list[np.ndarray], calib_seqs: list[np.ndarray] | None,
              cfg: NetworkConfig, settings: TrainSettings, confidence: float = 0.999,
              progress: Callable[[str], None] | None = None,
              val_fraction: float = 0.1, calib_fraction: float = 0.2,
              conds: list[str] | None = None, calib_conds: list[str] | None = None
              ) -> Detector:
        """Train on normal name sequences and calibrate the bound.

        With `calib_seqs` (other normal sequences, as an evaluation protocol gives them),
        early stopping holds out a tenth of the training sequences and the bound is fitted
        on `calib_seqs`. With None (a host's own recording), blocks of windows of every
        sequence are held out instead: `calib_fraction` for the bound, `val_fraction` for
        early stopping, each scored with its real preceding syscalls (windows.holdout).

        With cfg.condition, `conds` names each training sequence's program (and
        `calib_conds` each calibration sequence's; unknown when not given): its token heads
        every window's context (windows.condition), a seeded tenth of the training windows
        taking the unknown program's instead, so the model also knows programs in general."""
        calibration.check_confidence(confidence)
        if cfg.condition and (conds is None or len(conds) != len(train_seqs)):
            raise ValueError("a conditioned model needs one program name per sequence")
        if cfg.condition:
            conds = [c for c, s in zip(conds, train_seqs, strict=True) if len(s)]
        train_seqs = [s for s in train_seqs if len(s)]
        if cfg.condition:   # a program seen too little to learn alone: programs in general
            made = Counter()
            for c, s in zip(conds, train_seqs, strict=True):
                made[c] += len(s)
            few = {c for c, n in made.items() if n < MIN_COND_WINDOWS * cfg.window}
            conds = [COND_UNKNOWN if c in few else c for c in conds]
        if not train_seqs:
            raise ValueError("no training data: every input sequence is empty")
        from .training import train  # imports torch
        if calib_seqs is not None and \
                sum(count(len(s), cfg.window, cfg.stride) for s in calib_seqs) < 2:
            raise ValueError("too little calibration data (it needs two windows or more): give "
                             "more normal sequences that were not used for training")
        t0 = time.monotonic()
        vocab = Vocabulary.build(train_seqs)
        if cfg.condition:       # the programs' tokens after the syscalls'
            vocab = Vocabulary(vocab.names[2:] + [COND_UNKNOWN] + sorted(set(conds) - {
                COND_UNKNOWN}))
        cfg = NetworkConfig(**{**asdict(cfg), "vocab_size": len(vocab)}).validate()
        emb = train_word2vec(train_seqs, vocab, cfg.embed_dim, settings.seed)
        if cfg.condition:   # programs apart from the start: random vectors of the scale
            at = vocab.index[COND_UNKNOWN]      # of the syscalls' (word2vec knows none)
            rng = np.random.default_rng(settings.seed + 2)
            emb[at:] = rng.normal(0, float(emb[2:at].std()) or 1.0,
                                  (len(vocab) - at, emb.shape[1])).astype(emb.dtype)
        ids = [vocab.encode(s) for s in train_seqs]
        stride = min(settings.train_stride, cfg.window)
        if calib_seqs is None:
            h = holdout(ids, cfg.window, cfg.stride, stride, cfg.task, calib_fraction,
                        val_fraction, settings.seed)
            if len(distinct_windows(h.calibration)) < 2 or len(h.fit) == 0:
                raise ValueError(f"too little calibration data: {sum(map(len, ids))} syscalls "
                                 "leave fewer than two distinct held-out windows; record "
                                 "for longer or give other normal traces to calibrate on")
            fit_w, val_w, cal_w = h.fit, h.validation, h.calibration
            if cfg.condition:
                own = vocab.encode(np.array(conds, dtype=object))
                fit_w, val_w, cal_w = (condition(w, own[w.seq]) for w in (fit_w, val_w, cal_w))
            holdout_note = {"holdout": "blocks", "block_windows": h.block,
                            "blocks": dict(zip(("fit", "validation", "calibration"), h.blocks,
                                               strict=True))}
        else:
            rng = np.random.default_rng(settings.seed)
            held = np.zeros(len(ids), bool)
            if len(ids) >= 5:
                held[rng.permutation(len(ids))[:max(1, int(len(ids) * val_fraction))]] = True
            fit_w = cut_many([t for t, x in zip(ids, held, strict=True) if not x],
                             cfg.window, stride, cfg.task)
            val_w = cut_many([t for t, x in zip(ids, held, strict=True) if x],
                             cfg.window, cfg.window, cfg.task)
            cal_w = cut_many([vocab.encode(s) for s in calib_seqs], cfg.window, cfg.stride,
                             cfg.task)
            if cfg.condition:
                own = vocab.encode(np.array(conds, dtype=object))
                fit_w = condition(fit_w, own[~held][fit_w.seq])
                val_w = condition(val_w, own[held][val_w.seq])
                cal_w = condition(cal_w, vocab.encode(np.array(
                    calib_conds or [COND_UNKNOWN] * len(calib_seqs), dtype=object))[cal_w.seq])
            holdout_note = {"holdout": "sequences"}
        if cfg.condition:   # a tenth of the training windows: the unknown program
            drop = np.random.default_rng(settings.seed + 1).random(len(fit_w)) < COND_DROPOUT
            ids = fit_w.src[:, 0].copy()
            ids[drop] = vocab.index[COND_UNKNOWN]
            fit_w = condition(fit_w, ids)
        result = train(cfg, fit_w, val_w, settings, emb, progress)
        det = cls(cfg, vocab, result.net, None, emb, {})
        cal = score(det.net, cal_w, 1024, detail=False).score
        det.bound = calibration.fit(cal, confidence, distinct_windows(cal_w))
        det.training = {"settings": asdict(settings), "history": result.history,
                        "best_epoch": result.best_epoch, "seconds": time.monotonic() - t0,
                        "data": fingerprint(train_seqs),
                        "calibration_data": fingerprint(calib_seqs) if calib_seqs is not None
                        else {"windows": len(cal_w)}, **holdout_note,
                        "aggregate": AGGREGATE, "versions": bundle_io.versions(),
                        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return det

    # -- persistence ------------------------------------------------------------------
    def export(self, log: Callable[[str], None] | None = None) -> bytes | None:
        """The torch network exported for ONNX Runtime and checked against torch
        (model/export.py), kept for save; None, with one line, where it cannot be."""
        from . import export

        if self.runtime != "torch":
            return self.onnx
        try:
            self.onnx = export.export(self.net)
        except export.ExportError as exc:
            self.onnx = None
            (log or _stderr)(f"note: the network is saved without an ONNX export ({exc}); "
                             "the bundle will score with torch")
        return self.onnx

    def save(self, path, sign=None, log: Callable[[str], None] | None = None) -> str:
        """Write the bundle; a torch network is exported into it (model.onnx) first, once."""
        if self.runtime == "torch" and self.onnx is None:
            self.export(log)
        torch_net = self.runtime == "torch"
        b = bundle_io.Bundle(network=self.cfg.to_json(), vocabulary=self.vocab.to_json(),
                             embedding=self.embedding, calibration=self.bound.to_json(),
                             training=self.training,
                             state_dict=self.net.state_dict() if torch_net else None,
                             transfer=self.transfer, lineage=self.lineage,
                             alerting=self.alerting, onnx=self.onnx,
                             weights=None if torch_net else self._weights)
        self.model_id = bundle_io.save(b, path, sign)
        return self.model_id

    @classmethod
    def load(cls, path, runtime: str = "auto", threads: int = 1,
             log: Callable[[str], None] | None = None) -> Detector:
        """The bundle at `path`, every file checked. `runtime`: "auto" scores with ONNX
        Runtime when the bundle has the export and onnxruntime imports, and then never
        imports torch; else with torch, saying why in one line to `log` (stderr by
        default). "onnx" requires the export (BundleError without), "torch" the torch
        network (the fleet's GPU worker, training). `threads`: ONNX Runtime's threads
        inside an operator (one across them); torch's are the caller's to set."""
        from . import export

        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        b = bundle_io.load(path, weights=False)
        why = None
        if runtime == "torch":
            pass
        elif b.onnx is None:
            why = "it has no ONNX export (trained before sysdream exported one; retrain it)"
        elif not export.available():
            why = "onnxruntime is not importable here (install the pinned onnxruntime)"
        if runtime == "onnx" and why:
            raise bundle_io.BundleError(f"{path}: cannot score with ONNX Runtime: {why}")
        lean = runtime != "torch" and why is None
        if why:
            (log or _stderr)(f"note: {path} scores with torch: {why}")
        try:
            cfg = NetworkConfig.from_json(b.network)
            vocab = Vocabulary.from_json(b.vocabulary)
            bound = GaussianBound.from_json(b.calibration)
            if cfg.vocab_size != len(vocab):
                raise ValueError("network and vocabulary sizes differ")
            if lean:
                net = export.OnnxNetwork(cfg, b.onnx, threads)
            else:
                net = cfg.build()
                net.load_state_dict(bundle_io.torch_weights(path, b.weights))
            det = cls(cfg, vocab, net, bound, b.embedding, b.training, b.model_id, b.transfer,
                      b.lineage, b.alerting)
            det.onnx, det._weights = b.onnx, b.weights
            if b.transfer is not None:
                from . import transfer
                transfer.check(b.transfer, transfer.n_features(det))
        except bundle_io.BundleError:
            raise
        except Exception as exc:    # incl. ONNX Runtime's own errors on a graph it refuses
            if not isinstance(exc, (ValueError, TypeError, KeyError, RuntimeError,
                                    AttributeError, OverflowError)) and \
                    type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            raise bundle_io.BundleError(f"{path}: inconsistent bundle ({str(exc)[:200]}); "
                                        "retrain it with this version") from None
        return det

    # -- scoring ----------------------------------------------------------------------
    def condition_id(self, program: str) -> int:
        """The token of a program as a conditioned model knows it (the unknown program's
        for one it was not trained with)."""
        return self.vocab.index.get(program, self.vocab.index.get(COND_UNKNOWN, 1))

    def _conditioned(self, w: Windows) -> Windows:
        """Offline scoring knows no programs: a conditioned model reads the unknown one."""
        if not self.cfg.condition:
            return w
        return condition(w, np.full(len(w), self.condition_id(COND_UNKNOWN)))

    def cut(self, sequences: list[np.ndarray]) -> Windows:
        """The windows of name sequences, encoded, and under a conditioned model reading the
        unknown program: the one way offline paths (scores, evaluation, transfer) cut."""
        return self._conditioned(cut_many([self.vocab.encode(s) for s in sequences],
                                          self.cfg.window, self.cfg.stride, self.cfg.task))

    def explain_spans(self, tokens: np.ndarray, valid: np.ndarray, lead: int,
                      names: list[np.ndarray], top: int = 5, rows: int | None = None,
                      batch: int = 1024) -> tuple[list[dict], WindowScores]:
        """Explain windows given as spans: row k of `tokens` [n, lead + p] is the window's
        lead (its context) and then the window, `valid[k]` of its positions real, `names[k]`
        the names the thread made there (positions of the span). Scored together with detail,
        padded to `rows` by repeating the last (inference sees the batch shapes it knows).
        Returns each window's explanation (`explain`; positions within the span) and the
        windows' detailed scores (n rows)."""
        n = len(tokens)
        pad = np.r_[np.arange(n), np.full(max((rows or n) - n, 0), n - 1)]
        w = Geometry.of(self.cfg).windows(tokens[pad], np.asarray(valid)[pad],
                                          np.full(len(pad), lead))
        s = score(self.net, w, batch, detail=True)
        out = []
        for k in range(n):
            one = slice(k, k + 1)
            res = SequenceScores(w.take(one), WindowScores(
                *(getattr(s, f)[one] for f in ("score", "nll", "expected", "expected_p",
                                                "observed_p", "attention"))),
                np.zeros(1, bool), [], names[k])   # explain reads neither of the two
            out.append(self.explain(res, 0, top))
        fields = ("score", "nll", "expected", "expected_p", "observed_p", "attention")
        return out, WindowScores(*(getattr(s, f)[:n] for f in fields))

    def windows(self, names: np.ndarray, seq: int = 0) -> Windows:
        return self._conditioned(cut(self.vocab.encode(names), self.cfg.window,
                                     self.cfg.stride, self.cfg.task, seq))

    def window_scores(self, sequences: list[np.ndarray], batch: int = 1024) -> np.ndarray:
        return score(self.net, self.cut(sequences), batch, detail=False).score

    def score_sequence(self, names: np.ndarray, batch: int = 1024,
                       detail: bool = True) -> SequenceScores:
        names = np.asarray(names, dtype=object)
        w = self.windows(names)
        s = score(self.net, w, batch, detail)
        exceeds = self.bound.exceeds(s.score) if self.bound else np.zeros(len(w), bool)
        return SequenceScores(w, s, exceeds, self.vocab.unknown(names), names)

    def trace_scores(self, sequences: list[np.ndarray], batch: int = 1024) \
            -> tuple[np.ndarray, list[np.ndarray]]:
        """Each sequence's aggregate score and its window scores, scored in shared batches."""
        w = self.cut(sequences)
        sc = score(self.net, w, batch, detail=False).score
        bounds = np.searchsorted(w.seq, np.arange(len(sequences) + 1))
        per = [sc[bounds[i]:bounds[i + 1]] for i in range(len(sequences))]
        return np.array([x.mean() if len(x) else 0.0 for x in per]), per

    def transfer_scores(self, sequences: list[np.ndarray]) -> np.ndarray | None:
        """Each sequence's probability, by the supervised transfer classifier (`sysdream
        train --labels`), of being like the labelled anomalous traces; None without one.
        It ranks; alerts still come from the Gaussian bound."""
        if self.transfer is None:
            return None
        from . import transfer
        return transfer.trace_scores(self, self.transfer, sequences)

    def explain(self, result: SequenceScores, i: int, top: int = 5) -> dict:
        """One window's explanation: its names, the most surprising positions (observed vs
        expected syscall and their probabilities) and the most attended inputs."""
        w, s = result.windows, result.scores
        start = int(w.start[i])

        def name(k: int) -> str:  # position k of the sequence, as the thread made it
            return str(result.names[k]) if 0 <= k < len(result.names) else "<pad>"

        names = [name(start + j) for j in range(w.tgt.shape[1])]
        real = np.nonzero(w.mask[i])[0]
        worst = real[np.argsort(-s.nll[i][real], kind="stable")][:top]
        out = {"score": float(s.score[i]), "bound": self.bound.bound if self.bound else None,
               "start": start, "syscalls": [names[j] for j in real],
               "surprises": [{"position": int(j), "observed": names[j],
                              "observed_p": float(s.observed_p[i, j]),
                              "position_in_sequence": start + int(j),
                              "expected": str(self.vocab.decode([s.expected[i, j]])[0]),
                              "expected_p": float(s.expected_p[i, j])} for j in worst]}
        if s.attention.shape[-1]:
            a = s.attention[i]
            per_position = archs.get(self.cfg.arch).attends == "positions"
            row = a[worst[0]] if per_position and len(worst) else a[0]
            # what the model read: the source (and for event models the target after it)
            first = start if self.cfg.task == "reconstruct" else start - self.cfg.window
            order = np.argsort(-row, kind="stable")[:top]

            def read(k: int) -> str:  # a conditioned source begins with the program's token
                if self.cfg.condition and k == 0:
                    return str(self.vocab.decode([int(w.src[i, 0])])[0])
                return name(first + k)

            out["attention"] = [{"position": int(first + k), "syscall": read(int(k)),
                                 "weight": float(row[k])} for k in order]
        return out


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
