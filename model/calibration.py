"""The alarm bound: a Gaussian fitted to the scores of held-out normal windows.

A window is anomalous when its (transformed) score exceeds the upper end of the two-sided
confidence interval mean +/- z * std, z = Phi^-1(1/2 + confidence/2). No threshold is ever
set by hand.

Two choices make the Gaussian usable on real hosts, both measured (docs/model.md):

- The mean and std are fitted on the *distinct* calibration windows, each normal behaviour
  once. A busy loop repeats one window millions of times; counted as often as it occurs it
  becomes a spike near zero that the fit mistakes for the whole distribution, and the bound
  lands below the scores of ordinary start-up windows (a learned bash workload: bound 0.064
  with 4% of normal windows above it; fitted on its 56 distinct windows: 0.56 and 0.04%).
- Scores are positive and right-skewed, so the fit is made on the scores, their square root
  or their logarithm, and the transform kept is the one whose bound puts a share of the
  calibration windows (as they occur) above it closest, as a ratio, to the interval's own
  upper tail (1 - confidence) / 2, a bound above every calibration score paying also for
  how many times above the highest it sits; the Kolmogorov-Smirnov distance breaks ties
  and travels with the bound. (Choosing by KS alone picked the log on both ADFA-LD and the
  bash workload, whose long left tail of near-perfect windows puts the bound where nothing
  exceeds it.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from statistics import NormalDist

import numpy as np

TRANSFORMS = ("identity", "sqrt", "log")
_EPS = 1e-6  # keeps log finite for scores of exactly zero (stide on normal windows)
MAX_FIT = 1e6  # |mean| and std beyond this are no fit of scores: a damaged or forged file


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

    @cached_property
    def z(self) -> float:
        # the standard library's inverse normal CDF: the daemon need not load scipy
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)

    @cached_property
    def bound(self) -> float:
        """The upper bound in score units (mean NLL); computed once (the fields are not
        changed after construction)."""
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
        if not isinstance(data, dict):
            raise ValueError("calibration is not a JSON object")
        data = {k: v for k, v in data.items() if k not in ("bound", "z")}
        out = cls(**data)
        for name in ("mean", "std", "confidence"):
            v = getattr(out, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"calibration {name} is not a finite number")
        check_confidence(out.confidence)
        if out.transform not in TRANSFORMS or not out.std >= 0:
            raise ValueError("calibration has an unknown transform or a negative std")
        if abs(out.mean) > MAX_FIT or out.std > MAX_FIT:
            raise ValueError("calibration mean or std out of range (scores are mean "
                             f"log-likelihoods: nothing near {MAX_FIT:g})")
        try:
            finite = math.isfinite(out.bound)
        except OverflowError:
            finite = False
        if not finite:
            raise ValueError("calibration gives no finite bound (mean or std out of range)")
        return out


def check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), e.g. 0.999, not {confidence}")


def fit(scores: np.ndarray, confidence: float = 0.999,
        distinct: np.ndarray | None = None) -> GaussianBound:
    """Fit the bound to calibration window scores. `distinct` indexes one occurrence of
    each distinct window (default: every score counts)."""
    from scipy.stats import kstest

    check_confidence(confidence)
    scores = np.asarray(scores, np.float64)
    sample = scores if distinct is None or len(distinct) < 2 else scores[distinct]
    sample = sample[np.isfinite(sample)]
    scores = scores[np.isfinite(scores)]
    if len(sample) < 2:
        raise ValueError("calibration needs the scores of at least two normal windows")
    target = (1 - confidence) / 2
    top = float(scores.max())
    best, best_key = None, None
    for transform in TRANSFORMS:
        x = _apply(transform, sample)
        mu, sd = float(x.mean()), float(x.std(ddof=1))
        if sd > 0:
            ks = kstest(x, "norm", args=(mu, sd))
            stat, pval = float(ks.statistic), float(ks.pvalue)
        else:  # every window scored the same: anything above is an exceedance
            stat, pval = 1.0, 0.0
        cand = GaussianBound(mu, sd, confidence, transform, stat, pval, len(sample))
        # how many times too many or too few windows sit above the bound (a ratio: 0.1%
        # against a nominal 0.05% is as wrong as 0.025%); 1/n keeps "none" finite. "None
        # above" says nothing of how far above them all the bound sits, so a bound over
        # the highest calibration score also pays how many times over it is: a log fit
        # stretched by near-perfect windows put one at 21 (and 10,000 in a test) where
        # every normal window scored under 3, and nothing could ever exceed it
        tail = float(np.mean(scores > cand.bound))
        floor = 1 / len(scores)
        over = math.log(cand.bound / top) if tail == 0 and cand.bound > top > 0 else 0.0
        key = (round(abs(math.log((tail + floor) / (target + floor))) + over, 6), stat)
        if best is None or key < best_key:
            best, best_key = cand, key
    return best
