"""Detection metrics on trace-level scores (label 1 = attack), without scikit-learn."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(normal: np.ndarray, attack: np.ndarray) -> float:
    """Probability that an attack trace scores above a normal one (ties count half)."""
    normal, attack = np.asarray(normal, float), np.asarray(attack, float)
    if not len(normal) or not len(attack):
        return float("nan")
    r = rankdata(np.concatenate([normal, attack]))
    n0, n1 = len(normal), len(attack)
    return float((r[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def roc_curve(normal: np.ndarray, attack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-positive and detection rates at every distinct threshold, from (0,0) to (1,1)."""
    s = np.concatenate([normal, attack])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(attack))])
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    return (np.r_[0, fp / max(len(normal), 1)], np.r_[0, tp / max(len(attack), 1)])


def pr_auc(normal: np.ndarray, attack: np.ndarray) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    s = np.concatenate([normal, attack])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(attack))])
    if not y.sum():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0, recall]) * precision))


def detection_at_fpr(normal: np.ndarray, attack: np.ndarray, fpr: float) -> float:
    """Detection rate with the threshold set so that at most `fpr` of normal traces score
    above it."""
    normal, attack = np.asarray(normal, float), np.asarray(attack, float)
    allowed = int(np.floor(fpr * len(normal)))
    ranked = np.sort(normal)[::-1]
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return float((attack > threshold).mean()) if len(attack) else float("nan")
