"""Small statistics: means with t-based 95% confidence intervals, and a within-condition slope."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float  # NaN when n < 2
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and Student-t confidence interval of ``values``."""
    n = len(values)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = sum(values) / n
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Slope:
    """Change of y per unit of x, within conditions, with its confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    dof: int
    p_value: float

    def significant(self, min_effect: float = 0.0) -> int:
        """+1 / -1 when the interval excludes zero and |estimate| >= min_effect, else 0."""
        if math.isnan(self.low) or abs(self.estimate) < min_effect:
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def within_condition_slope(
    points: Sequence[tuple[Hashable, float, float]], confidence: float = CONFIDENCE
) -> Slope:
    """OLS slope of y on x with a fixed effect per condition (x and y centred within conditions).

    Each condition (say: batch size and epoch point) gets its own intercept, so the slope measures
    only how y moves with x inside a condition, never differences between conditions.

    Args:
        points: (condition, x, y) triples.
    """
    groups: dict[Hashable, list[tuple[float, float]]] = defaultdict(list)
    for condition, x, y in points:
        groups[condition].append((x, y))
    centred = []
    for members in groups.values():
        mx = sum(x for x, _ in members) / len(members)
        my = sum(y for _, y in members) / len(members)
        centred += [(x - mx, y - my) for x, y in members]
    n = len(centred)
    sxx = sum(x * x for x, _ in centred)
    dof = n - len(groups) - 1
    if sxx == 0 or dof < 1:
        return Slope(math.nan, math.nan, math.nan, n, max(dof, 0), math.nan)
    slope = sum(x * y for x, y in centred) / sxx
    rss = sum((y - slope * x) ** 2 for x, y in centred)
    se = math.sqrt(rss / dof / sxx)
    if se == 0:
        p = 0.0 if slope != 0 else 1.0
        return Slope(slope, slope, slope, n, dof, p)
    t_crit = stats.t.ppf(0.5 + confidence / 2, dof)
    p = 2 * stats.t.sf(abs(slope / se), dof)
    return Slope(slope, slope - t_crit * se, slope + t_crit * se, n, dof, float(p))
