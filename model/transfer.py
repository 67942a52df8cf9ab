"""The paper's transfer step: from a trained unsupervised model and a few labelled anomalous
traces, a fast supervised classifier on the model's features.

Features of a window: DReAM's attention vector Z (what the encoder summarised) and its
error profile (mean, median, 90th percentile and max of the per-position NLL, the fraction
of real positions). A logistic regression, class-balanced and L2-regularised, is fitted on
normal windows (label 0) and the windows of the labelled anomalous traces (label 1). A
trace's transfer score is the mean probability over its windows.
"""

from __future__ import annotations

import numpy as np

from .scoring import score


def features(det, sequences: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """[N, F] window features and the sequence index of each window."""
    w = det.cut(sequences)
    s = score(det.net, w, detail=True, features=True)
    nll = np.where(w.mask, s.nll, np.nan)
    prof = np.stack([np.nanmean(nll, 1), np.nanmedian(nll, 1), np.nanpercentile(nll, 90, 1),
                     np.nanmax(nll, 1), w.mask.mean(1)], axis=1)
    z = s.z if s.z is not None else np.zeros((len(w), 0), np.float32)
    return np.concatenate([prof, z], axis=1).astype(np.float32), w.seq


def _fit_logistic(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 300) -> dict:
    import torch  # fitting only: a bundle's classifier is checked and run without it

    torch.manual_seed(seed)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.astype(np.float32))
    pos = max(float(y.mean()), 1e-6)
    weight = torch.where(yt > 0, torch.tensor(0.5 / pos), torch.tensor(0.5 / (1 - pos)))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            xt @ w + b, yt, weight=weight) + 1e-3 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"mean": mu.tolist(), "std": sd.tolist(), "weight": w.detach().tolist(),
            "bias": float(b.detach()[0]), "features": "nll mean, median, p90, max, "
            "fill; then Z"}


def check(model: dict, n_features: int) -> None:
    """Refuse a classifier that cannot score this network's features (a bundle's
    transfer.json from another network, or edited by hand)."""
    try:
        parts = [np.asarray(model[k], np.float64) for k in ("mean", "std", "weight")]
        bias = float(model["bias"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("transfer classifier lacks numeric mean, std, weight and bias") \
            from None
    if any(p.shape != (n_features,) for p in parts):
        raise ValueError(f"transfer classifier expects {[p.shape for p in parts]} features, "
                         f"this network gives {n_features}")
    if not all(np.isfinite(p).all() for p in parts) or not np.isfinite(bias) or \
            (parts[1] <= 0).any():
        raise ValueError("transfer classifier has non-finite or non-positive values")


def n_features(det) -> int:
    """How many features this network gives a window (the error profile, then Z)."""
    x, _ = features(det, [np.array(["read"], dtype=object)])
    return x.shape[1]


def probabilities(model: dict, x: np.ndarray) -> np.ndarray:
    z = (x - np.array(model["mean"])) / np.array(model["std"])
    return 1 / (1 + np.exp(-(z @ np.array(model["weight"]) + model["bias"])))


def fit(det, normal: list[np.ndarray], anomalous: list[np.ndarray], seed: int = 0) -> dict:
    if not anomalous:
        raise ValueError("the transfer step needs at least one labelled anomalous trace")
    xn, _ = features(det, normal)
    xa, _ = features(det, anomalous)
    x = np.concatenate([xn, xa])
    y = np.concatenate([np.zeros(len(xn)), np.ones(len(xa))])
    out = _fit_logistic(x, y, seed)
    out["labelled_traces"] = len(anomalous)
    return out


def trace_scores(det, model: dict, sequences: list[np.ndarray]) -> np.ndarray:
    x, seq = features(det, sequences)
    p = probabilities(model, x)
    n = np.bincount(seq, minlength=len(sequences))
    return np.bincount(seq, weights=p, minlength=len(sequences)) / np.maximum(n, 1)


def evaluate(det, split, fraction: float, seed: int) -> dict:
    """Label a seeded `fraction` of the attack traces, train on them and the calibration
    normals, and compare with the unsupervised score on the traces left."""
    from . import metrics  # scipy.stats: evaluation only

    if det is None or not 0 < fraction < 1:
        raise ValueError("--transfer-fraction must be in (0, 1) and needs a neural --arch")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.test_attack))
    k = max(1, int(round(len(order) * fraction)))
    labelled = [split.test_attack[i] for i in order[:k]]
    rest = [split.test_attack[i] for i in order[k:]]
    model = fit(det, split.calibrate, labelled, seed)
    un_n, _ = det.trace_scores(split.test_normal)
    un_a, _ = det.trace_scores(rest)
    tr_n = trace_scores(det, model, split.test_normal)
    tr_a = trace_scores(det, model, rest)
    return {"fraction": fraction, "labelled_attack_traces": k, "test_attack_traces": len(rest),
            "unsupervised": {"roc_auc": metrics.roc_auc(un_n, un_a),
                             "pr_auc": metrics.pr_auc(un_n, un_a),
                             "dr_at_1pct_fpr": metrics.detection_at_fpr(un_n, un_a, 0.01)},
            "transfer": {"roc_auc": metrics.roc_auc(tr_n, tr_a),
                         "pr_auc": metrics.pr_auc(tr_n, tr_a),
                         "dr_at_1pct_fpr": metrics.detection_at_fpr(tr_n, tr_a, 0.01)}}


def describe(report: dict) -> str:
    u, t = report["unsupervised"], report["transfer"]
    return (f"\ntransfer step: {report['labelled_attack_traces']} labelled attack traces "
            f"({report['fraction']:.0%}), tested on the other {report['test_attack_traces']}:\n"
            f"  unsupervised score  ROC-AUC {u['roc_auc']:.4f}  PR-AUC {u['pr_auc']:.4f}  "
            f"DR@1% {u['dr_at_1pct_fpr']:.3f}\n"
            f"  transfer classifier ROC-AUC {t['roc_auc']:.4f}  PR-AUC {t['pr_auc']:.4f}  "
            f"DR@1% {t['dr_at_1pct_fpr']:.3f}")
