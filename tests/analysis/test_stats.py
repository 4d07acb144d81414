"""analysis.lib.stats on numbers whose answer is known."""

import math

import pytest

from analysis.lib.stats import mean_ci, run_level_mean_ci


def test_mean_ci_matches_the_t_interval_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    # mean 2, sd 1, se 1/sqrt(3), t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.low == pytest.approx(2 - half) and ci.high == pytest.approx(2 + half)
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and one.n == 1


def test_run_level_averages_each_run_first_so_n_counts_runs():
    # three micro-batches (conditions) in each of two seeds (runs)
    values = {(32, 0): 0.1, (64, 0): 0.2, (128, 0): 0.3, (32, 1): 0.3, (64, 1): 0.4, (128, 1): 0.5}
    ci = run_level_mean_ci(values)
    by_hand = mean_ci([0.2, 0.4])  # the per-seed means
    assert ci.n == 2 and ci.mean == pytest.approx(0.3)
    assert (ci.low, ci.high) == pytest.approx((by_hand.low, by_hand.high))
    pooled = mean_ci(list(values.values()))  # six "observations": a narrower, wrong interval
    assert pooled.n == 6 and pooled.high - pooled.low < ci.high - ci.low
