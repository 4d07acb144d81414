"""Small statistics: means with Student-t 95% confidence intervals.

The unit of replication is the run (its seed): callers pass one value per run (for a paired
effect, one difference per seed), so n is the number of independent runs, never the number of
epoch points of a run (see analysis.verdict and tests/analysis/test_verdict.py, which shows what
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
