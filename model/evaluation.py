"""One evaluation run: every method trained, calibrated and tested on the same splits.

A method turns token-id sequences into window scores. Every method's bound comes from a
Gaussian fit to its calibration windows (never from attack data); a trace is flagged at the
bound when any of its windows exceeds it. A trace's score for the ROC is the mean of its
window scores. Where attack traces come in files that hold several processes (UNM labels
per file: an intrusion file also holds the ordinary processes the attack ran), an
intrusion counts as detected when any of its traces is flagged, as in Forrest et al.

Every row after the first carries a paired bootstrap interval of its ROC-AUC minus the
first row's (the same resampled traces for both). With `combine`, more rows follow: the
first method's window scores aggregated otherwise (AGGREGATIONS), and evidence combined
at the trace level (COMBINATIONS: standardised sums of different families, likelihood
ratios against a background model). Their bound is the Gaussian interval on the
calibration traces' scores, and a trace is flagged when its own score exceeds it.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from . import calibration, metrics
from .baselines import DeepLog, NGram, SequenceCovering, Stide
from .config import NetworkConfig, TrainSettings
from .detector import Detector


@dataclass
class Split:
    """Sequences as syscall-name arrays; `groups` is the attack type of each attack trace."""
    train: list[np.ndarray]
    calibrate: list[np.ndarray]
    test_normal: list[np.ndarray]
    test_attack: list[np.ndarray]
    attack_groups: list[str]
    name: str = ""
    notes: list[str] = field(default_factory=list)
    attack_sources: list[str] = field(default_factory=list)  # intrusion (file) of each


@dataclass
class MethodResult:
    method: str
    roc_auc: float
    pr_auc: float
    dr_at_1pct_fpr: float
    dr_at_01pct_fpr: float
    fpr_at_bound: float
    dr_at_bound: float
    bound: float
    transform: str
    ks_statistic: float
    per_attack_type: dict
    intrusions_detected_at_bound: dict   # source -> detected; {} when sources are unknown
    train_seconds: float
    windows_per_second: float
    roc: dict = field(repr=False, default_factory=dict)
    # [low, high]: 95% paired bootstrap interval of this ROC-AUC minus the first row's
    roc_auc_minus_first: list = field(default_factory=list)


@dataclass
class TraceScores:
    """A method's trace scores (the mean of its window scores)."""
    normal: np.ndarray
    attack: np.ndarray
    calibrate: np.ndarray | None = None     # scored only when rows are combined
    windows: dict | None = None     # part -> its traces' window scores (the same case)


def _sliding_max(x: np.ndarray, k: int) -> float:
    """The largest mean of k consecutive windows (of all of them, for fewer)."""
    k = min(k, len(x))
    c = np.r_[0.0, np.cumsum(x)]
    return float(((c[k:] - c[:-k]) / k).max())


# other ways to turn a trace's window scores into its score, tried on the first method
AGGREGATIONS = {
    "max": lambda x: float(x.max()),
    "top-10% mean": lambda x: float(np.sort(x)[-max(1, -(-len(x) // 10)):].mean()),
    "max of a sliding mean of 8": lambda x: _sliding_max(x, 8),
}


@dataclass(frozen=True)
class Combination:
    """Trace-level evidence from several methods: sum(weight * score), each score first
    standardised on the calibration traces ("z": minus their mean, over their standard
    deviation) or taken as it is ("raw": for a likelihood ratio, both in nats a call).
    "{net}" stands for the first (neural) method."""
    name: str
    members: tuple[str, ...]
    weights: tuple[float, ...]
    scale: str      # "z" or "raw"


COMBINATIONS = (
    Combination("z: {net} + n-gram", ("{net}", "n-gram"), (1.0, 1.0), "z"),
    Combination("z: {net} + stide", ("{net}", "stide"), (1.0, 1.0), "z"),
    Combination("z: {net} + covering", ("{net}", "covering"), (1.0, 1.0), "z"),
    Combination("z: {net} + n-gram + stide", ("{net}", "n-gram", "stide"), (1.0, 1.0, 1.0),
                "z"),
    # Ren et al. 2019: the model's likelihood over a background model's, which carries
    # what is common to all sequences (here the syscall frequencies and pairs)
    Combination("LR: {net} / 2-gram", ("{net}", "2-gram"), (1.0, -1.0), "raw"),
    Combination("LR: n-gram / 2-gram", ("n-gram", "2-gram"), (1.0, -1.0), "raw"),
)
BOOTSTRAP = 1000


class NeuralMethod:
    def __init__(self, cfg: NetworkConfig, settings: TrainSettings, progress=None):
        self.cfg, self.settings, self.progress = cfg, settings, progress
        self.name = cfg.arch if cfg.task == "predict-next" else f"{cfg.arch} ({cfg.task})"
        self.detector: Detector | None = None

    def fit(self, train: list[np.ndarray], calibrate: list[np.ndarray], confidence: float):
        self.detector = Detector.train(train, calibrate, self.cfg, self.settings, confidence,
                                       self.progress)
        return self.detector.bound

    def window_scores(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        return self.detector.trace_scores(seqs)[1]


class WorstPosition:
    """The first (neural) method's network, its window scored by its most surprising
    position (the largest per-call NLL) instead of the mean over the window: one odd call
    among 16 moves a mean little. No training of its own: it runs after that method."""

    def __init__(self, base: NeuralMethod):
        self.base = base
        self.name = f"{base.name}, worst position"

    def fit(self, train: list[np.ndarray], calibrate: list[np.ndarray], confidence: float):
        return calibration.fit(np.concatenate(self.window_scores(calibrate)), confidence)

    def window_scores(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        from .scoring import score

        det = self.base.detector
        w = det.cut(seqs)
        nll = score(det.net, w, 1024, detail=True).nll
        worst = np.where(w.mask, nll, 0.0).max(1)     # NLL >= 0; padding 0
        bounds = np.searchsorted(w.seq, np.arange(len(seqs) + 1))
        return [worst[bounds[i]:bounds[i + 1]] for i in range(len(seqs))]


class BaselineMethod:
    def __init__(self, make, window: int, name: str = ""):
        self.make, self.window, self.model = make, window, None
        self.name, self.fixed_name = name, name
        self.vocab = None

    def fit(self, train: list[np.ndarray], calibrate: list[np.ndarray], confidence: float):
        from .vocab import Vocabulary

        self.vocab = Vocabulary.build(train)
        self.model = self.make(len(self.vocab)).fit([self.vocab.encode(s) for s in train])
        self.name = self.fixed_name or self.model.name
        cal = np.concatenate(self.window_scores(calibrate))
        return calibration.fit(cal, confidence)  # baselines: every window counts

    def window_scores(self, seqs: list[np.ndarray]) -> list[np.ndarray]:
        return [self.model.window_scores(self.vocab.encode(s), self.window, self.window)
                if len(s) else np.zeros(0) for s in seqs]


BASELINES = ("stide", "n-gram", "DeepLog", "covering")


def baselines(window: int, seed: int, names: tuple[str, ...] = BASELINES
              ) -> list[BaselineMethod]:
    """The baselines named (BASELINES, in that order)."""
    make = {"stide": lambda v: Stide(v), "n-gram": lambda v: NGram(v),
            "DeepLog": lambda v: DeepLog(v, seed=seed),
            "covering": lambda v: SequenceCovering(v)}
    unknown = set(names) - set(make)
    if unknown:
        raise ValueError(f"baselines: no {', '.join(sorted(unknown))} (there are "
                         f"{', '.join(BASELINES)})")
    return [BaselineMethod(make[n], window) for n in BASELINES if n in names]


def background(window: int) -> BaselineMethod:
    """The background model of the likelihood-ratio combinations: syscall pairs."""
    return BaselineMethod(lambda v: NGram(v, n=2), window, name="2-gram")


def _aggregate(per: list[np.ndarray]) -> np.ndarray:
    return np.array([x.mean() if len(x) else 0.0 for x in per])


def run_method(method, split: Split, confidence: float, keep: dict | None = None,
               calibrate: bool = False) -> MethodResult:
    """Train, calibrate and test one method; with `keep`, its trace scores are put there
    under its name (with `calibrate`, the calibration traces' too)."""
    t0 = time.monotonic()
    bound = method.fit(split.train, split.calibrate, confidence)
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    normal_w = method.window_scores(split.test_normal)
    attack_w = method.window_scores(split.test_attack)
    score_s = time.monotonic() - t0
    n_windows = sum(len(x) for x in normal_w + attack_w)
    normal, attack = _aggregate(normal_w), _aggregate(attack_w)
    if keep is not None and calibrate:
        cal_w = method.window_scores(split.calibrate)
        keep[method.name] = TraceScores(normal, attack, _aggregate(cal_w), {
            "normal": normal_w, "attack": attack_w, "calibrate": cal_w})
    elif keep is not None:
        keep[method.name] = TraceScores(normal, attack)
    flag_n = np.array([bound.exceeds(x).any() for x in normal_w])
    flag_a = np.array([bound.exceeds(x).any() for x in attack_w])
    return _result(method.name, split, normal, attack, flag_n, flag_a, bound, train_s,
                   n_windows / max(score_s, 1e-9))


def _result(name: str, split: Split, normal: np.ndarray, attack: np.ndarray,
            flag_n: np.ndarray, flag_a: np.ndarray, bound, train_s: float,
            windows_per_s: float) -> MethodResult:
    groups: dict = {}
    for g in sorted(set(split.attack_groups)):
        sel = np.array([x == g for x in split.attack_groups])
        groups[g] = {"traces": int(sel.sum()), "detected_at_bound": float(flag_a[sel].mean())}
    intrusions: dict[str, bool] = {}
    for src, flagged in zip(split.attack_sources, flag_a, strict=False):
        intrusions[src] = intrusions.get(src, False) or bool(flagged)
    fpr, tpr = metrics.roc_curve(normal, attack)
    return MethodResult(
        name, metrics.roc_auc(normal, attack), metrics.pr_auc(normal, attack),
        metrics.detection_at_fpr(normal, attack, 0.01),
        metrics.detection_at_fpr(normal, attack, 0.001),
        float(flag_n.mean()) if len(flag_n) else float("nan"),
        float(flag_a.mean()) if len(flag_a) else float("nan"),
        bound.bound, bound.transform, bound.ks_statistic, groups, intrusions, train_s,
        windows_per_s, {"fpr": fpr.tolist(), "tpr": tpr.tolist()})


def combine(c: Combination, net: str, scores: dict[str, TraceScores], split: Split,
            confidence: float, train_s: dict[str, float]
            ) -> tuple[MethodResult, TraceScores] | None:
    """One combination's row and trace scores, or None when a member did not run (or the
    first method is one of the others)."""
    members = [m.replace("{net}", net) for m in c.members]
    if any(m not in scores for m in members) or len(set(members)) < len(members):
        return None
    parts = {"normal": 0.0, "attack": 0.0, "calibrate": 0.0}
    for m, w in zip(members, c.weights, strict=True):
        t = scores[m]
        mu, sd = (t.calibrate.mean(), t.calibrate.std() or 1.0) if c.scale == "z" \
            else (0.0, 1.0)
        for part in parts:
            parts[part] = parts[part] + w * (getattr(t, part) - mu) / sd
    bound = calibration.fit(parts["calibrate"], confidence)
    row = _result(c.name.replace("{net}", net), split, parts["normal"], parts["attack"],
                  bound.exceeds(parts["normal"]), bound.exceeds(parts["attack"]), bound,
                  sum(train_s[m] for m in members), float("nan"))
    return row, TraceScores(parts["normal"], parts["attack"], parts["calibrate"])


def aggregate(name: str, net: str, t: TraceScores, split: Split, confidence: float,
              train_s: float) -> tuple[MethodResult, TraceScores]:
    """A row of the method `net` with its traces scored by AGGREGATIONS[name]; the bound
    is fitted on the calibration traces' scores."""
    f = AGGREGATIONS[name]
    got = {part: np.array([f(x) if len(x) else 0.0 for x in t.windows[part]])
           for part in ("normal", "attack", "calibrate")}
    bound = calibration.fit(got["calibrate"], confidence)
    row = _result(f"{net}, {name}", split, got["normal"], got["attack"],
                  bound.exceeds(got["normal"]), bound.exceeds(got["attack"]), bound, train_s,
                  float("nan"))
    return row, TraceScores(got["normal"], got["attack"], got["calibrate"])


def auc_difference(first: TraceScores, other: TraceScores, rounds: int = BOOTSTRAP,
                   seed: int = 0) -> list[float]:
    """95% paired bootstrap interval of ROC-AUC(other) - ROC-AUC(first): normal and
    attack traces resampled with replacement, the same draw for both methods."""
    rng = np.random.default_rng(seed)
    n0, n1 = len(first.normal), len(first.attack)
    if not n0 or not n1:
        return []
    diffs = np.empty(rounds)
    for r in range(rounds):
        i, j = rng.integers(0, n0, n0), rng.integers(0, n1, n1)
        diffs[r] = (metrics.roc_auc(other.normal[i], other.attack[j])
                    - metrics.roc_auc(first.normal[i], first.attack[j]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def duplicates(split: Split) -> dict:
    """Test traces whose exact syscall sequence also appears in the training or calibration
    data (they make a split look easier than it is)."""
    def h(s):
        return hashlib.sha256("\x1f".join(s.tolist()).encode()).hexdigest()
    seen = {h(s) for s in split.train} | {h(s) for s in split.calibrate}
    train_set = {h(s) for s in split.train}
    within = Counter(h(s) for s in split.train)
    return {"test_normal_in_train_or_calibration": sum(h(s) in seen for s in split.test_normal),
            "test_attack_in_train_or_calibration": sum(h(s) in seen for s in split.test_attack),
            "calibration_in_train": sum(h(s) in train_set for s in split.calibrate),
            "repeated_within_train": sum(c - 1 for c in within.values() if c > 1)}


def evaluate(split: Split, methods: list, confidence: float = 0.999,
             stream=None, combinations: bool = False) -> dict:
    """Every method on the split, then (`combinations`) the COMBINATIONS of those that
    ran; with `stream` (stderr), progress: a tqdm bar over the methods with the time left
    on a terminal, a line per method otherwise."""
    results = []
    scores: dict[str, TraceScores] = {}
    bar = None
    if stream is not None and stream.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(methods), desc="eval", unit="method", file=stream)
    t0 = time.monotonic()
    for i, m in enumerate(methods):
        name = getattr(m, "name", type(m).__name__)
        if bar is not None:
            bar.set_postfix_str(name)
        results.append(run_method(m, split, confidence, scores, combinations))
        if bar is not None:
            bar.update(1)
        elif stream is not None:
            elapsed = time.monotonic() - t0
            left = elapsed / (i + 1) * (len(methods) - i - 1)
            stream.write(f"eval: {results[-1].method} done ({i + 1} of {len(methods)}, "
                         f"{elapsed:.0f} s; about {left:.0f} s left)\n")
            stream.flush()
    if bar is not None:
        bar.close()
    if combinations and results:
        train_s = {r.method: r.train_seconds for r in results}
        net = results[0].method
        for name in AGGREGATIONS:
            row, t = aggregate(name, net, scores[net], split, confidence, train_s[net])
            results.append(row)
            scores[row.method] = t
        for c in COMBINATIONS:
            got = combine(c, net, scores, split, confidence, train_s)
            if got is not None:
                results.append(got[0])
                scores[got[0].method] = got[1]
    if results:
        first = scores[results[0].method]
        for r in results[1:]:
            r.roc_auc_minus_first = auc_difference(first, scores[r.method])
    return {"dataset": split.name, "confidence": confidence,
            "sizes": {"train": len(split.train), "calibrate": len(split.calibrate),
                      "test_normal": len(split.test_normal),
                      "test_attack": len(split.test_attack)},
            "duplicates": duplicates(split), "notes": split.notes, "aggregate": "mean",
            "results": [asdict(r) for r in results]}


def table(report: dict) -> str:
    w = max([22] + [len(r["method"]) + 1 for r in report["results"]])
    head = (f"{'method':<{w}}{'ROC-AUC':>8}{'dAUC 95%':>18}{'PR-AUC':>8}{'DR@1%':>7}"
            f"{'DR@.1%':>7}{'FPR@b':>7}{'DR@b':>7}{'train s':>9}{'win/s':>9}")
    lines = [f"dataset {report['dataset']}: " + ", ".join(f"{k} {v}" for k, v in
                                                         report["sizes"].items()),
             f"bound: Gaussian {report['confidence']:.1%} interval on calibration windows "
             "(combinations: on calibration traces); trace score = mean window score; "
             "dAUC: 95% paired bootstrap interval of ROC-AUC minus the first row's", head,
             "-" * len(head)]
    for r in report["results"]:
        ci = r.get("roc_auc_minus_first") or []
        ci = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-"
        lines.append(f"{r['method']:<{w}}{r['roc_auc']:8.4f}{ci:>18}{r['pr_auc']:8.4f}"
                     f"{r['dr_at_1pct_fpr']:7.3f}{r['dr_at_01pct_fpr']:7.3f}"
                     f"{r['fpr_at_bound']:7.3f}{r['dr_at_bound']:7.3f}"
                     f"{r['train_seconds']:9.1f}{r['windows_per_second']:9.0f}")
    kinds = sorted({g for r in report["results"] for g in r["per_attack_type"]})
    if kinds:
        lines.append("")
        lines.append("detected at the bound, per attack type:")
        lines.append(f"{'method':<{w}}" + "".join(f"{k[:14]:>15}" for k in kinds))
        for r in report["results"]:
            lines.append(f"{r['method']:<{w}}" + "".join(
                f"{r['per_attack_type'].get(k, {}).get('detected_at_bound', float('nan')):15.3f}"
                for k in kinds))
    if any(r["intrusions_detected_at_bound"] for r in report["results"]):
        lines.append("")
        lines.append("intrusions (files) with a trace flagged at the bound:")
        for r in report["results"]:
            got = r["intrusions_detected_at_bound"]
            missed = sorted(k.rsplit("/", 1)[-1] for k, v in got.items() if not v)
            lines.append(f"{r['method']:<{w}}{sum(got.values())} of {len(got)}"
                         + (f" (missed: {', '.join(missed)})" if missed else ""))
    d = report["duplicates"]
    lines.append("")
    lines.append("duplicates: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items()))
    lines.extend(report["notes"])
    return "\n".join(lines)


PLOTS_MISSING = "drawing needs matplotlib, an optional extra: pip install 'sysdream[plots]'"


def plot_roc(report: dict, path: str) -> None:
    try:            # here, not at the top: only --plot draws, and matplotlib is an extra
        import matplotlib
    except ImportError:
        raise ValueError(PLOTS_MISSING) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for r in report["results"]:
        ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], label=f"{r['method']} ({r['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle="--")
    ax.set_xlabel("false-positive rate (normal traces)")
    ax.set_ylabel("detection rate (attack traces)")
    ax.set_title(f"ROC, {report['dataset']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
