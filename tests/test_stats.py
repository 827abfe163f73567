"""Intervals and the verdict function, each against an independent computation."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from normlab.engine.claims import CONTROL, DESCRIPTIVE, EXACT, MEASURED, Check, Claim, Estimate, Rule, decide, judge
from normlab.engine.stats import Interval, bca, mean_std, paired_t, t_interval


def test_mean_std_ignores_nan_from_diverged_runs():
    m, s = mean_std([1.0, 3.0, float("nan")])
    assert m == 2.0 and math.isclose(s, math.sqrt(2.0))


def test_t_interval_matches_the_textbook_formula():
    x = np.array([0.1, 0.4, 0.35, 0.2, 0.3])
    ci = t_interval(x)
    half = 2.7764451051977987 * x.std(ddof=1) / math.sqrt(5)  # t_{0.975, 4}
    assert ci.method == "t"
    assert ci.low == pytest.approx(x.mean() - half) and ci.high == pytest.approx(x.mean() + half)
    assert all(math.isnan(v) for v in (t_interval([1.0]).low, t_interval([]).high))


def test_paired_t_uses_per_seed_differences_not_two_samples():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = a - np.array([0.10, 0.12, 0.09, 0.11])  # large spread, tiny paired difference
    est, ci, n = paired_t(a, b)
    assert n == 4 and est == pytest.approx(0.105) and 0 < ci.low < ci.high < 0.13
    ref = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high))
    ratio, rci, _ = paired_t([2.0, 4.0, 8.0], [1.0, 2.0, 4.0], log_ratio=True)
    assert ratio == pytest.approx(2.0) and rci.low == pytest.approx(2.0) and rci.method == "paired t on log ratio"
    _, _, n = paired_t([1.0, float("nan"), 3.0], [1.0, 2.0, 2.0])
    assert n == 2  # a diverged seed drops the pair


def test_bca_is_reproducible_brackets_the_estimate_and_pairs_by_seed():
    x = np.array([0.1, 0.4, 0.35, 0.2, 0.3])
    ci = bca([x], lambda v: v.mean())
    assert ci == bca([x], lambda v: v.mean()) and ci.method.startswith("BCa")
    assert ci.low < x.mean() < ci.high
    assert math.isnan(bca([[1.0, 2.0]], lambda v: v.mean()).low)  # n < 3: no interval
    # paired: seeds resampled jointly, so a shared seed effect cancels in a difference of means
    base = np.array([1.0, 5.0, 9.0, 2.0, 7.0])
    other = base + np.array([0.1, 0.12, 0.09, 0.11, 0.08])
    paired_ci = bca([other, base], lambda a, b: a.mean() - b.mean())
    unpaired_ci = bca([other, base], lambda a, b: a.mean() - b.mean(), paired_by_seed=False)
    assert 0.08 <= paired_ci.low < paired_ci.high <= 0.12
    assert unpaired_ci.high - unpaired_ci.low > 10 * (paired_ci.high - paired_ci.low)


RULE = Rule("<", "limit")


class A:
    limit = 1.0
    band = [0.8, 1.25]
    margin = 1.0


@pytest.mark.parametrize(
    "value,ci,n,expected",
    [
        (0.5, (0.4, 0.6), 3, "supported"),
        (1.5, (1.2, 1.8), 3, "not supported"),
        (0.9, (0.7, 1.1), 3, "inconclusive"),  # CI straddles the threshold
        (0.5, (0.4, 0.6), 2, "inconclusive"),  # n < 3
        (float("nan"), (0.4, 0.6), 3, "inconclusive"),
        (0.5, (float("nan"), float("nan")), 3, "inconclusive"),
    ],
)
def test_measured_verdicts(value, ci, n, expected):
    claim = Claim("X", MEASURED, "s", "stat", RULE)
    assert decide(claim, Estimate(value, Interval(*ci, "t"), n), A())[0] == expected


def test_a_failed_precondition_is_inconclusive_and_named():
    claim = Claim("X", MEASURED, "s", "stat", RULE)
    row = judge(claim, Estimate(0.5, Interval(0.4, 0.6, "t"), 5, [Check("manipulation check", False, "no drift")]), A())
    assert row.verdict == "inconclusive" and "manipulation check" in row.detail and "no drift" in row.detail


def test_exact_claims_have_no_interval_and_judge_the_value():
    claim = Claim("X", EXACT, "s", "max error", RULE)
    row = judge(claim, Estimate(0.2, n=10), A())
    assert row.verdict == "supported" and math.isnan(row.ci_low) and row.interval == "none (exact)"
    assert judge(claim, Estimate(2.0, n=10), A()).verdict == "not supported"


def test_equivalence_rule_and_the_other_kinds():
    eq = Claim("X", MEASURED, "s", "gap", Rule("abs<=", "margin"))
    wide = decide(eq, Estimate(0.5, Interval(-0.3, 1.3, "t"), 5), A())  # contains 0, wider than the margin
    assert wide[0] == "inconclusive"  # an interval that contains 0 shows no match by being wide
    assert decide(eq, Estimate(0.5, Interval(0.2, 0.8, "t"), 5), A()) == ("supported", "")  # within margin
    assert decide(eq, Estimate(0.1, Interval(-0.5, 0.7, "t"), 5), A()) == ("supported", "")
    assert decide(eq, Estimate(3.0, Interval(2.0, 4.0, "t"), 5), A())[0] == "not supported"
    assert decide(eq, Estimate(1.0, Interval(0.5, 1.5, "t"), 5), A())[0] == "inconclusive"
    band = Claim("X", MEASURED, "s", "r", Rule("in", "band"))
    assert decide(band, Estimate(1.0, Interval(0.9, 1.1, "t"), 3), A())[0] == "supported"
    desc = Claim("X", DESCRIPTIVE, "s", "r", Rule("none"))
    assert judge(desc, Estimate(1.0, Interval(0.9, 1.1, "t"), 3), A()).verdict == "not judged"
    ctl = Claim("X", CONTROL, "s", "r", Rule("abs<=", "margin"))
    row = judge(ctl, Estimate(0.1, n=3), A())
    assert row.kind == "control" and row.verdict == "supported"


def test_geometric_t_is_a_t_interval_on_the_logs():
    from normlab.engine.stats import geometric_t

    r = np.array([0.9, 1.1, 1.05, 0.95, 1.2])
    est, ci, n = geometric_t(r)
    ref = sps.t.interval(0.95, 4, loc=np.log(r).mean(), scale=sps.sem(np.log(r)))
    assert n == 5 and est == pytest.approx(np.exp(np.log(r).mean()))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.exp(ref)))
    assert geometric_t([2.0, float("nan"), -1.0])[2] == 1  # missing and non-positive values are left out


def test_a_band_rule_is_not_supported_only_when_the_interval_lies_wholly_outside_it():
    """|value| <= 1: an interval that covers the whole band shows nothing, whichever side its centre
    falls; not supported needs the whole interval outside the band."""
    claim = Claim("X", MEASURED, "", "", Rule("abs<=", "tol"))
    a = type("A", (), {"tol": 1.0})()
    assert decide(claim, Estimate(1.5, Interval(-2.0, 5.0, "t"), 5), a)[0] == "inconclusive"
    assert decide(claim, Estimate(1.5, Interval(1.2, 1.8, "t"), 5), a)[0] == "not supported"
    assert decide(claim, Estimate(-1.5, Interval(-1.8, -1.1, "t"), 5), a)[0] == "not supported"
    assert decide(claim, Estimate(0.5, Interval(0.1, 0.9, "t"), 5), a)[0] == "supported"


@pytest.mark.parametrize("n,spread,mean,bound", [(3, 1.0, 0.5, 0.0), (5, 2.0, 1.0, 0.0), (4, 0.3, 2.1, 2.0)])
def test_seeds_to_decide_is_the_first_n_whose_t_interval_clears_the_threshold(n, spread, mean, bound):
    """Against the textbook t interval at a fixed spread: at the n returned the half-width is below
    the distance to the threshold, at one seed fewer it is not."""
    from normlab.engine.claims import judge

    half = lambda k: sps.t.ppf(0.975, k - 1) * spread / math.sqrt(k)  # noqa: E731
    claim = Claim("X", MEASURED, "", "", Rule(">", "t"))
    a = type("A", (), {"t": bound})()
    row = judge(claim, Estimate(mean, Interval(mean - half(n), mean + half(n), "t"), n), a)
    assert row.verdict == "inconclusive"
    m = int(row.n_to_decide)
    assert half(m) < mean - bound <= half(m - 1)
    assert row.distance_hw == pytest.approx((mean - bound) / half(n))


def test_seeds_to_decide_on_a_ratio_works_on_the_logs_and_is_inf_on_the_threshold():
    from normlab.engine.stats import seeds_to_decide

    # a geometric-mean ratio 1.2 with log half-width 0.3 at n = 4, threshold ratio 1.0
    logs_half = lambda k: sps.t.ppf(0.975, k - 1) * (0.3 / (sps.t.ppf(0.975, 3) / 2)) / math.sqrt(k)  # noqa: E731
    n, _ = seeds_to_decide(1.2, 1.2 * math.exp(-0.3), 1.2 * math.exp(0.3), 4, [1.0], log=True)
    assert logs_half(int(n)) < math.log(1.2) <= logs_half(int(n) - 1)
    n, why = seeds_to_decide(1.0, 0.8, 1.2, 5, [1.0])
    assert math.isinf(n) and "sits on the threshold" in why
    n, why = seeds_to_decide(1.0, float("nan"), float("nan"), 1, [0.5])
    assert math.isnan(n) and "no interval" in why


def test_a_decided_or_precondition_failed_row_has_no_n_to_decide():
    from normlab.engine.claims import judge

    claim = Claim("X", MEASURED, "", "", Rule(">", "t"))
    a = type("A", (), {"t": 0.0})()
    decided = judge(claim, Estimate(1.0, Interval(0.5, 1.5, "t"), 5), a)
    assert decided.verdict == "supported" and math.isnan(decided.n_to_decide) and decided.distance_hw == 2.0
    failed = judge(claim, Estimate(1.0, Interval(-0.5, 2.5, "t"), 5, [Check("gate", False, "x")]), a)
    assert failed.verdict == "inconclusive" and math.isnan(failed.n_to_decide)
