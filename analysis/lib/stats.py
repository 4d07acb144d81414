"""Small statistics: the one interval type (a mean with its Student-t 95% interval) and its format.

The unit of replication is the run (its seed): callers pass one value per run (for a paired
effect, one difference per seed), so n is the number of independent runs, never the number of
epoch points of a run (see analysis.lib.overfitting and tests/analysis/test_verdict.py, which shows what
pooling epoch points would wrongly declare).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    """A mean and its 95% interval over n independent runs (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        """Half the interval: an effect smaller than this could not have been told from zero."""
        return (self.high - self.low) / 2

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def above(self, min_effect: float = 0.0) -> bool:
        """The interval lies above zero and the mean is at least ``min_effect``."""
        return bool(self.has_interval and self.low > 0 and self.mean >= min_effect)

    def below(self, min_effect: float = 0.0) -> bool:
        """The interval lies below zero and the mean is at most ``-min_effect``."""
        return bool(self.has_interval and self.high < 0 and self.mean <= -min_effect)

    def within(self, margin: float) -> bool:
        """Equivalence: the whole interval lies inside (-margin, +margin)."""
        return bool(self.has_interval and -margin < self.low and self.high < margin)

    def format(self, digits: int = 3, *, signed: bool = True) -> str:
        """``+0.012 [-0.003, +0.027]``; the mean alone without an interval; ``-`` when empty."""
        if math.isnan(self.mean):
            return "-"
        sign = "+" if signed else ""
        if not self.has_interval:
            return f"{self.mean:{sign}.{digits}f}"
        return f"{self.mean:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"

    def ratio(self) -> str:
        """``1.27x [1.20, 1.34]``: the format of a ratio."""
        if math.isnan(self.mean):
            return "-"
        if not self.has_interval:
            return f"{self.mean:.2f}x"
        return f"{self.mean:.2f}x [{self.low:.2f}, {self.high:.2f}]"

    def sentence(self) -> str:
        """``+0.012 (95% CI -0.003 to +0.027, n=5)`` for prose."""
        if not self.has_interval:
            return f"{self.mean:+.3f} (n={self.n}, no interval)"
        return f"{self.mean:+.3f} (95% CI {self.low:+.3f} to {self.high:+.3f}, n={self.n})"


EMPTY = MeanCI(math.nan, math.nan, math.nan, 0)


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and Student-t confidence interval of ``values``."""
    n = len(values)
    if n == 0:
        return EMPTY
    mean = float(sum(values)) / n
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return MeanCI(float(mean), float(mean - half), float(mean + half), n)


def run_level_mean_ci(
    values: dict[tuple[Hashable, Hashable], float], confidence: float = CONFIDENCE
) -> MeanCI:
    """Mean and CI with the run as the unit: ``values`` maps (condition, run) to a value (say, the
    paired difference of a micro-batch in a seed); each run's values are averaged first, so n is
    the number of runs however many conditions each has."""
    by_run: dict[Hashable, list[float]] = defaultdict(list)
    for (_, run), value in values.items():
        by_run[run].append(value)
    return mean_ci([sum(v) / len(v) for v in by_run.values()], confidence)


def _exp(ci: MeanCI) -> MeanCI:
    return MeanCI(math.exp(ci.mean), math.exp(ci.low), math.exp(ci.high), ci.n)  # exp(NaN) is NaN


def ratio_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """The geometric mean of positive ratios (a cost N / 1, say) and its interval, taken on the log
    scale and brought back: never below zero, and 2x and 0.5x average to 1x."""
    return _exp(mean_ci([math.log(v) for v in values], confidence))


def run_level_ratio_ci(
    values: dict[tuple[Hashable, Hashable], float], confidence: float = CONFIDENCE
) -> MeanCI:
    """``ratio_ci`` with the run as the unit (``run_level_mean_ci`` on the logs)."""
    return _exp(run_level_mean_ci({k: math.log(v) for k, v in values.items()}, confidence))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """mean(b) - mean(a) with a Welch t interval (independent runs, unequal variances); n is the
    smaller group."""
    n = min(len(a), len(b))
    if n == 0:
        return EMPTY
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if n < 2:
        return MeanCI(mb - ma, math.nan, math.nan, n)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return MeanCI(mb - ma, mb - ma, mb - ma, n)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return MeanCI(mb - ma, mb - ma - half, mb - ma + half, n)


def difference(a: MeanCI, b: MeanCI, confidence: float = CONFIDENCE) -> MeanCI:
    """b - a for two means of independent groups given as their intervals (the Welch interval of
    ``welch``, recovered from each group's t interval: se = half width / t(n - 1)); n is the smaller
    group."""
    n = min(a.n, b.n)
    if n < 2 or not (a.has_interval and b.has_interval):
        return MeanCI(b.mean - a.mean, math.nan, math.nan, n) if n else EMPTY
    q = 0.5 + confidence / 2
    va, vb = (a.half_width / float(stats.t.ppf(q, a.n - 1))) ** 2, (b.half_width / float(stats.t.ppf(q, b.n - 1))) ** 2
    if va + vb == 0:
        return MeanCI(b.mean - a.mean, b.mean - a.mean, b.mean - a.mean, n)
    dof = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = float(stats.t.ppf(q, dof)) * math.sqrt(va + vb)
    return MeanCI(b.mean - a.mean, b.mean - a.mean - half, b.mean - a.mean + half, n)


def percentile_interval(values: Sequence[float], coverage: float = CONFIDENCE) -> tuple[float, float, float]:
    """(median, low, high): the median and the central ``coverage`` interval of ``values``
    (the spread over runs, not an interval of the mean)."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan, math.nan, math.nan

    def quantile(q: float) -> float:
        position = q * (len(finite) - 1)
        below, frac = int(math.floor(position)), position - math.floor(position)
        above = min(below + 1, len(finite) - 1)
        return finite[below] * (1 - frac) + finite[above] * frac

    tail = (1 - coverage) / 2
    return quantile(0.5), quantile(tail), quantile(1 - tail)
