"""analysis.lib.stats on numbers whose answer is known."""

import math

import pytest

from analysis.lib.stats import mean_ci, ratio_ci, run_level_mean_ci, run_level_ratio_ci


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


def test_a_ratio_is_averaged_on_the_log_scale_and_never_goes_below_zero():
    """Costs N / 1 from two seeds, 0.5x and 8x: the arithmetic t interval runs far below zero (a
    negative cost); the geometric one is exp(mean log +- t se log), positive, symmetric in log."""
    assert mean_ci([0.5, 8.0]).low < 0
    r = ratio_ci([0.5, 8.0])
    assert r.mean == pytest.approx(2.0) and r.n == 2
    half = 12.706204736 * math.log(16) / 2  # t(0.975, 1) x sd(log) / sqrt(2), sd(log) = log(16) / sqrt(2)
    assert r.low == pytest.approx(2.0 * math.exp(-half)) and r.high == pytest.approx(2.0 * math.exp(half))
    assert r.low > 0 and r.low * r.high == pytest.approx(r.mean**2)
    # with the run as the unit: the micro-batches of a seed are averaged (in log) first
    by_run = run_level_ratio_ci({(32, 0): 2.0, (64, 0): 8.0, (32, 1): 4.0})
    assert by_run.n == 2 and by_run.mean == pytest.approx(4.0)
