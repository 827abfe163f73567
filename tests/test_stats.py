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


# ---------- p-values, the sign test, two-stage combination, the family ----------


def _t_row(values, rule, bound_key="b", bound=0.0):
    from types import SimpleNamespace

    claim = Claim("X", MEASURED, "s", "t", Rule(rule, bound_key))
    est = Estimate(float(np.mean(values)), t_interval(values), len(values))
    return judge(claim, est, SimpleNamespace(**{bound_key: bound}))


def test_a_t_rows_p_value_is_the_textbook_one_sample_t_test():
    """The p-value is recovered from the interval alone and equals scipy's one-sided t test; it is
    below 0.025 exactly when the 95% interval clears the bound."""
    x = [0.3, 0.5, 0.4, 0.6, 0.45]
    row = _t_row(x, ">", bound=0.2)
    assert row.p_value == pytest.approx(sps.ttest_1samp(x, 0.2, alternative="greater").pvalue, rel=1e-9)
    assert row.p_against == pytest.approx(sps.ttest_1samp(x, 0.2, alternative="less").pvalue, rel=1e-9)
    assert row.verdict == "supported" and row.p_value < 0.025 and row.test == "t, one-sided"
    near = _t_row(x, ">", bound=row.ci_low)  # the bound on the interval's edge: p is 0.025 exactly
    assert near.p_value == pytest.approx(0.025, rel=1e-9)


def test_a_band_row_takes_two_one_sided_tests():
    """Supported inside [a, b] needs both one-sided tests: its p is the larger; the row is rejected by
    the smaller of the tests that it lies outside."""
    from types import SimpleNamespace

    x = np.array([1.0, 1.02, 0.98, 1.01, 0.99])
    claim = Claim("X", MEASURED, "s", "t", Rule("in", "band"))
    row = judge(claim, Estimate(float(x.mean()), t_interval(x), 5), SimpleNamespace(band=[0.9, 1.05]))
    up = sps.ttest_1samp(x, 0.9, alternative="greater").pvalue
    down = sps.ttest_1samp(x, 1.05, alternative="less").pvalue
    assert row.p_value == pytest.approx(max(up, down), rel=1e-9) and row.verdict == "supported"
    assert "two one-sided" in row.test


def test_log_interval_p_values_are_taken_on_the_logs():
    from types import SimpleNamespace

    from normlab.engine.stats import geometric_t

    r = [1.8, 2.2, 2.0, 2.5, 1.9]
    est, ci, n = geometric_t(r)
    row = judge(Claim("X", MEASURED, "s", "t", Rule(">", "b")), Estimate(est, ci, n), SimpleNamespace(b=1.5))
    assert row.p_value == pytest.approx(sps.ttest_1samp(np.log(r), np.log(1.5), alternative="greater").pvalue)


def test_rows_whose_seeds_all_agree_are_judged_by_an_exact_sign_test():
    """A zero-width interval makes a t test's p 0: the sign test's is 0.5^n, so five agreeing seeds
    (0.031) stay inconclusive at one-sided 0.025 and six (0.016) decide; n to decide says 6."""
    five, six = _t_row([1.0] * 5, ">=", bound=0.5), _t_row([1.0] * 6, ">=", bound=0.5)
    assert five.verdict == "inconclusive" and five.p_value == pytest.approx(0.5**5) and five.n_to_decide == 6
    assert six.verdict == "supported" and six.p_value == pytest.approx(0.5**6)
    assert five.test.startswith("exact sign test") and "0.031" in five.detail
    against = _t_row([0.0] * 6, ">=", bound=0.5)
    assert against.verdict == "not supported" and against.p_against == pytest.approx(0.5**6)
    tie = _t_row([0.5] * 6, "<", bound=0.5)  # every seed on the bound: no side, p = 1 both ways
    assert tie.verdict == "inconclusive" and tie.p_value == tie.p_against == 1.0


def test_the_bca_interval_inverted_gives_its_own_level_at_its_edges():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 14), rng.normal(0.5, 1.0, 14)
    ci = bca([a, b], lambda x, y: x.mean() / y.mean())
    assert ci.p_of(ci.low, +1) == pytest.approx(0.025, abs=0.004)
    assert ci.p_of(ci.high, -1) == pytest.approx(0.025, abs=0.004)
    assert ci.p_of(ci.low - 10, +1) < 0.001


def test_inverse_normal_combination_and_the_stages_it_judges():
    """Stages' p-values combine with weights from their sizes; a row whose seeds were added after a look
    is decided by that combination, not by the interval over all seeds."""
    from types import SimpleNamespace

    from normlab.engine.stats import inverse_normal, stages_of

    assert inverse_normal([0.5, 0.5], [5, 7]) == pytest.approx(0.5)
    z = np.sqrt(5 / 12) * sps.norm.isf(0.01) + np.sqrt(7 / 12) * sps.norm.isf(0.2)
    assert inverse_normal([0.01, 0.2], [5, 7]) == pytest.approx(sps.norm.sf(z))
    assert stages_of([1, 2, 3, 4, 5], [3]) == [[1, 2, 3], [4, 5]] and stages_of([1, 2], [5]) is None
    x = [1.0, 1.2, 0.8, 1.1, 0.9, 0.3, 0.2, 0.4]
    claim = Claim("X", MEASURED, "s", "t", Rule(">", "b"))
    est = Estimate(float(np.mean(x)), t_interval(x), 8, stages=stages_of(x, [5]))
    row = judge(claim, est, SimpleNamespace(b=0.0))
    p1 = sps.ttest_1samp(x[:5], 0.0, alternative="greater").pvalue
    p2 = sps.ttest_1samp(x[5:], 0.0, alternative="greater").pvalue
    assert row.p_value == pytest.approx(inverse_normal([p1, p2], [5, 3])) and row.verdict == "supported"
    assert row.test.startswith("inverse-normal combination") and "5+3 seeds" in row.test
    weak = Estimate(0.1, t_interval([0.3, -0.2, 0.2, 0.1]), 4, stages=[[0.3, -0.2], [0.2, 0.1]])
    assert judge(claim, weak, SimpleNamespace(b=0.0)).verdict == "inconclusive"


def test_holm_adjusts_step_down_and_the_family_downgrades_only():
    """Holm's adjusted p-values by hand; a supported row whose adjusted p passes 0.025 no longer is,
    an inconclusive row never becomes supported, and not supported is adjusted on its own p."""
    import pandas as pd

    from normlab.engine.family import family_frame
    from normlab.engine.stats import holm

    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1])
    rows = pd.DataFrame(
        {
            "experiment": ["a"] * 4,
            "claim_id": ["s1", "s2", "ns", "inc"],
            "kind": ["measured"] * 4,
            "verdict": ["supported", "supported", "not supported", "inconclusive"],
            "p_value": [0.001, 0.02, 1.0, 0.3],
            "p_against": [1.0, 1.0, 0.02, 0.5],
        }
    )
    fam = family_frame(rows).set_index("claim_id")
    assert fam.loc["s1", "holm_p"] == pytest.approx(0.004) and fam.loc["s1", "family_verdict"] == "supported"
    assert fam.loc["s2", "holm_p"] == pytest.approx(0.06) and fam.loc["s2", "family_verdict"] == "inconclusive"
    assert fam.loc["ns", "holm_against"] == pytest.approx(0.08) and fam.loc["ns", "family_verdict"] == "inconclusive"
    assert fam.loc["inc", "family_verdict"] == "inconclusive"


@pytest.mark.parametrize(
    "op,verdict,lo,hi,expected",
    [
        ("<", "supported", 0.09, 0.12, "inconclusive at a bound <= 0.12"),
        ("<", "inconclusive", 0.21, 0.26, "supported above 0.26, not supported below 0.21"),
        (">", "supported", 1.05, 1.4, "inconclusive at a bound >= 1.05"),
        ("abs<=", "supported", -0.01, 2.81, "inconclusive at a margin < 2.81"),
        ("abs<=", "not supported", -2.7, -1.4, "inconclusive at a margin >= 1.4"),
        ("abs<=", "inconclusive", -2.9, 0.5, "supported at a margin >= 2.9"),
    ],
)
def test_changes_at_names_the_interval_edge_the_bound_would_have_to_cross(op, verdict, lo, hi, expected):
    from normlab.engine.family import changes_at

    row = {"kind": "measured", "op": op, "verdict": verdict, "ci_low": lo, "ci_high": hi, "test": "t, one-sided"}
    assert changes_at(row) == expected
