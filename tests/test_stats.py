"""Bootstrap CIs and the verdict rule on small hand-made cases."""
import math

import numpy as np

from normlab.engine.stats import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, bootstrap_ci,
                                  bootstrap_ci_fn, judge, mean_std)


def test_mean_std_ignores_nan_from_diverged_runs():
    m, s = mean_std([1.0, 3.0, float("nan")])
    assert m == 2.0 and math.isclose(s, math.sqrt(2.0))


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    vals = [0.1, 0.4, 0.35, 0.2, 0.3]
    lo, hi = bootstrap_ci(vals)
    assert lo <= np.mean(vals) <= hi and lo >= min(vals) and hi <= max(vals)
    assert (lo, hi) == bootstrap_ci(vals)
    assert bootstrap_ci([5.0]) == (5.0, 5.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))


def test_bootstrap_of_a_ratio_of_group_means():
    a, b = [1.0, 1.1, 0.9], [2.0, 2.2, 1.8]
    lo, hi = bootstrap_ci_fn([a, b], lambda x, y: x / y)
    assert lo <= 0.5 <= hi and hi - lo < 0.3


def test_judge_three_outcomes_and_small_n():
    ok = lambda v: v < 1.0  # noqa: E731
    assert judge(0.5, (0.4, 0.6), ok, n=3) == SUPPORTED
    assert judge(1.5, (1.2, 1.8), ok, n=3) == NOT_SUPPORTED
    assert judge(0.9, (0.7, 1.1), ok, n=3) == INCONCLUSIVE      # CI straddles the threshold
    assert judge(0.5, (0.4, 0.6), ok, n=1, min_n=3) == INCONCLUSIVE
    assert judge(float("nan"), (0.4, 0.6), ok, n=3) == INCONCLUSIVE
