"""The alarm bound: a Gaussian fitted to the scores of held-out normal windows.

Window scores (a mean NLL) are positive and right-skewed, so the fit is made on the scores,
their square root or their logarithm, whichever a Kolmogorov-Smirnov test finds closest to
normal; the chosen transform and the fit's quality travel with the bound. (On ADFA-LD the
square root fits best, KS 0.047, and puts 0.05% of calibration windows above the 99.9%
bound, as it should; the log's long left tail of near-perfect windows widens its fit until
nothing exceeds the bound.) A window is anomalous when
its (transformed) score exceeds the upper end of the two-sided confidence interval
mean +/- z * std, z = Phi^-1(1/2 + confidence/2). No threshold is ever set by hand.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

TRANSFORMS = ("identity", "sqrt", "log")
_EPS = 1e-6  # keeps log finite for scores of exactly zero (stide on normal windows)


def _apply(transform: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if transform == "log":
        return np.log(np.maximum(x, 0) + _EPS)
    if transform == "sqrt":
        return np.sqrt(np.maximum(x, 0))
    return x


@dataclass
class GaussianBound:
    mean: float
    std: float
    confidence: float
    transform: str
    ks_statistic: float      # Kolmogorov-Smirnov distance of the fit (0 = perfect)
    ks_pvalue: float
    samples: int

    @property
    def z(self) -> float:
        from scipy.stats import norm

        return float(norm.ppf(0.5 + self.confidence / 2))

    @property
    def bound(self) -> float:
        """The upper bound in score units (mean NLL)."""
        t = self.mean + self.z * self.std
        if self.transform == "log":
            return float(math.exp(t) - _EPS)
        if self.transform == "sqrt":
            return float(max(t, 0.0) ** 2)
        return float(t)

    def exceeds(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores, np.float64) > self.bound

    def sigmas(self, scores: np.ndarray) -> np.ndarray:
        """How many standard deviations above the mean, in the fitted space."""
        return (_apply(self.transform, scores) - self.mean) / max(self.std, 1e-12)

    def with_confidence(self, confidence: float) -> GaussianBound:
        check_confidence(confidence)
        return GaussianBound(**{**asdict(self), "confidence": confidence})

    def to_json(self) -> dict:
        return {**asdict(self), "bound": self.bound, "z": self.z}

    @classmethod
    def from_json(cls, data: dict) -> GaussianBound:
        data = {k: v for k, v in data.items() if k not in ("bound", "z")}
        out = cls(**data)
        check_confidence(out.confidence)
        if out.transform not in TRANSFORMS or not out.std >= 0:
            raise ValueError("calibration has an unknown transform or a negative std")
        return out


def check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), e.g. 0.999, not {confidence}")


def fit(scores: np.ndarray, confidence: float = 0.999) -> GaussianBound:
    from scipy.stats import kstest

    check_confidence(confidence)
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if len(scores) < 2:
        raise ValueError("calibration needs the scores of at least two normal windows")
    best = None
    for transform in TRANSFORMS:
        x = _apply(transform, scores)
        mu, sd = float(x.mean()), float(x.std(ddof=1))
        if sd > 0:
            ks = kstest(x, "norm", args=(mu, sd))
            stat, pval = float(ks.statistic), float(ks.pvalue)
        else:  # every window scored the same: anything above is an exceedance
            stat, pval = 1.0, 0.0
        cand = GaussianBound(mu, sd, confidence, transform, stat, pval, len(scores))
        if best is None or stat < best.ks_statistic:
            best = cand
    return best
