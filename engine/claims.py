"""Claims as first-class objects: one literal definition per claim id, and one verdict function.

A `Claim` is written out once, in the module of the experiment that tests it (grep its id to
find it): its statement, the statistic, the rule and the kind. The rule names the field of the
experiment's `analysis:` config that holds its threshold, so every threshold lives in a config,
never in code.

An experiment's estimator returns an `Estimate` (value, CI, n, preconditions, detail) and
`judge(claim, estimate, analysis)` turns it into a claim row:
  - a failed precondition gives `inconclusive`, and the row names the precondition and why;
  - `measured` (a CI over seeds): needs n >= MIN_N and a finite CI; `supported` when the estimate
    and its whole CI satisfy the rule, `not supported` when none of them does, else
    `inconclusive`. Every measured row also carries the one-sided p-values of its rule's own test
    (`p_value`: null "the claim is false"; `p_against`: null "the claim holds"), below ALPHA exactly
    when the interval decides. Where the interval cannot carry a test the p-value decides instead:
    a zero-width interval (every seed gave the same value, so a t test's p is 0 by construction)
    is judged by an exact sign test over the seeds, and where seeds were added after a look at the
    first ones (`Estimate.stages`) the stages' t tests combined by the inverse normal method decide;
  - `exact` (an identity or a theory check): the value is a maximum error (or a deterministic
    number) checked against the tolerance; there is no CI;
  - `control` (true by construction): judged like `exact` or `measured`, but labelled so and
    never counted as evidence;
  - `descriptive`: a number reported beside a claim, not judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from .stats import (
    ALPHA,
    Interval,
    distance_in_half_widths,
    inverse_normal,
    seeds_for_sign_test,
    seeds_to_decide,
    sign_test_p,
    t_p,
    t_test_p,
)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_JUDGED = "supported", "not supported", "inconclusive", "not judged"
# Each verdict's colour, in one place: in the terminal (a Rich style), as a mark in figures, and as
# text in the HTML report (darker than the mark, for contrast on white)
VERDICT_COLORS = {
    SUPPORTED: {"terminal": "green", "mark": "#2ca02c", "text": "#1a7f37"},
    NOT_SUPPORTED: {"terminal": "red", "mark": "#d62728", "text": "#c62828"},
    INCONCLUSIVE: {"terminal": "yellow", "mark": "#ff7f0e", "text": "#b25e00"},
    NOT_JUDGED: {"terminal": "white", "mark": "#7f7f7f", "text": "#6e6e6e"},
}
MEASURED, EXACT, CONTROL, DESCRIPTIVE = "measured", "exact", "control", "descriptive"
Kind = Literal["measured", "exact", "control", "descriptive"]
EVIDENCE_KINDS = (MEASURED, EXACT)
MIN_N = 3  # fewer seeds than this and a measured verdict is `inconclusive`
# A measured row is "near" its threshold when another arithmetic could move it across: its
# distance_hw lies within a factor NEAR_FACTOR of 1. The factor is measured, once per reference: the
# same runs trained with `--ensemble off` (every run alone, its sums in another order) moved
# distance_hw by up to 3.2x (B1-mlp, 0.94 -> 3.00, 2026-12-02); it was 0.25 half-widths around 1
# before that measurement, which missed one of the two rows that moved (K1-trainloss, 0.60 -> 1.11).
NEAR_FACTOR = 3.2


def is_near(distance_hw: float) -> bool:
    """Within the reach of another machine's arithmetic (see NEAR_FACTOR)."""
    d = distance_hw
    return isinstance(d, float) and math.isfinite(d) and 1.0 / NEAR_FACTOR <= d <= NEAR_FACTOR


Op = Literal["<", "<=", ">", ">=", "in", "abs<=", "none"]


@dataclass(frozen=True)
class Rule:
    """`value OP threshold`, the threshold read from the analysis config field `key`.

    `in` reads [low, high]; `abs<=` reads a margin m and means |v| <= m. A measured row under a band
    (`in`, `abs<=`) is an equivalence test: supported when its whole CI lies inside the band, not
    supported when it lies wholly outside (K5's rule since 2026-12-02; "the CI contains 0" is no
    longer a door to support: a wide interval shows nothing)."""

    op: Op
    key: str = ""
    unit: str = ""

    def bounds(self, analysis: Any) -> tuple[float, float]:
        if self.op == "none":
            return float("nan"), float("nan")
        t = getattr(analysis, self.key)
        if self.op == "in":
            return float(t[0]), float(t[1])
        if self.op == "abs<=":
            return -float(t), float(t)
        if self.op in ("<", "<="):
            return float("-inf"), float(t)
        return float(t), float("inf")

    def holds(self, v: float, analysis: Any) -> bool:
        lo, hi = self.bounds(analysis)
        if self.op == "<":
            return v < hi
        if self.op == ">":
            return v > lo
        if self.op == ">=":
            return v >= lo
        return lo <= v <= hi  # <=, in, abs<=

    def text(self, analysis: Any) -> str:
        if self.op == "none":
            return "not judged"
        lo, hi = self.bounds(analysis)
        u = f" {self.unit}" if self.unit else ""
        if self.op == "in":
            return f"in [{lo:g}, {hi:g}]{u}"
        if self.op == "abs<=":
            return f"|value| <= {hi:g}{u}"
        return f"{self.op} {hi if self.op in ('<', '<=') else lo:g}{u}"


@dataclass(frozen=True)
class Claim:
    id: str
    kind: Kind
    statement: str
    statistic: str
    rule: Rule


@dataclass
class Check:
    """A precondition of a verdict: when it fails, the verdict is `inconclusive` and says why."""

    name: str
    ok: bool
    reason: str = ""


@dataclass
class Estimate:
    value: float
    ci: Interval = field(default_factory=Interval.none)
    n: int = 0
    checks: list[Check] = field(default_factory=list)
    detail: str = ""
    not_judged: str = ""  # why this claim does not apply to this folder's runs ('' = it does)
    # seeds added after a look at the first ones: the per-seed values of each stage, in order. The row
    # is then decided by the stages' one-sided t tests combined by the inverse normal method (weights
    # from the stages' sizes), not by the interval over all seeds (optional stopping)
    stages: Optional[list[list[float]]] = None

    @classmethod
    def inapplicable(cls, why: str) -> "Estimate":
        """The estimate of a claim that says nothing about these runs (B1's published accuracies on
        a user's own dataset): its verdict is `not judged`, and the row says why."""
        return cls(float("nan"), not_judged=why)

    @classmethod
    def missing(cls, why: str) -> "Estimate":
        """The estimate of a claim whose data is absent (an arm missing, every run diverged): its
        verdict is `inconclusive`, and the row says why."""
        return cls(float("nan"), checks=[Check("data present", False, why)])


@dataclass
class ClaimRow:
    claim_id: str
    kind: str
    statement: str
    statistic: str
    value: float
    threshold: str
    op: str
    bound_low: float
    bound_high: float
    ci_low: float
    ci_high: float
    interval: str
    n: int
    verdict: str
    detail: str = ""
    # measured rows: the seeds that would decide an undecided row at today's spread (NaN: decided,
    # or not a question of seeds; inf: no n decides it), and how far the estimate sits from its
    # nearest threshold in half-widths of its interval (above 1: decided; near 1: fragile)
    n_to_decide: float = float("nan")
    distance_hw: float = float("nan")
    # measured rows: one-sided p-values of the rule's own test, the claim false (p_value) and the claim
    # true (p_against) as nulls, and the test that gave them (a band: two one-sided tests)
    p_value: float = float("nan")
    p_against: float = float("nan")
    test: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(*xs: float) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def zero_width(ci: Interval) -> bool:
    """Every seed gave the same value: a t interval of no width, which no t test can weigh."""
    return _finite(ci.low, ci.high) and ci.low == ci.high


def _one_sided(est: Estimate, bound: float, side: int) -> float:
    """p of the claim's side of one bound (side +1: above it) under the interval's own test."""
    ci = est.ci
    if ci.p_of is not None:
        return ci.p_of(bound, side)
    if zero_width(ci):
        on_side = est.value > bound if side > 0 else est.value < bound
        return sign_test_p(est.n if on_side else 0, est.n)
    return t_p(est.value, ci, est.n, bound, side)


def _staged(est: Estimate, bound: float, side: int) -> float:
    return inverse_normal([t_test_p(v, bound, side) for v in est.stages], [len(v) for v in est.stages])


def p_values(claim: Claim, est: Estimate, analysis: Any) -> tuple[float, float, str]:
    """(p_value, p_against, test) of a measured row: one-sided for a threshold, two one-sided tests for
    a band (the claim's p is the larger, the rejection's the smaller); NaN without an interval."""
    nan = float("nan")
    if est.stages and claim.kind == MEASURED and claim.rule.op != "none":
        return _staged_p(claim, est, analysis)
    if claim.kind != MEASURED or claim.rule.op == "none" or not _finite(est.value, est.ci.low, est.ci.high):
        return nan, nan, ""
    if est.n < MIN_N:  # no verdict below MIN_N seeds, so no p-value a family could count either
        return nan, nan, ""
    lo, hi = claim.rule.bounds(analysis)
    name = (
        "exact sign test over seeds"
        if zero_width(est.ci) and est.ci.p_of is None
        else ("BCa interval inverted" if est.ci.p_of is not None else "t")
    )
    if claim.rule.op in ("in", "abs<="):
        inside = max(_one_sided(est, lo, +1), _one_sided(est, hi, -1))
        outside = min(_one_sided(est, lo, -1), _one_sided(est, hi, +1))
        return inside, outside, f"{name}, two one-sided tests"
    if claim.rule.op in ("<", "<="):
        p = _one_sided(est, hi, -1)
        against = _one_sided(est, hi, +1)
    else:
        p = _one_sided(est, lo, +1)
        against = _one_sided(est, lo, -1)
    return p, against, f"{name}, one-sided"


def _staged_p(claim: Claim, est: Estimate, analysis: Any) -> tuple[float, float, str]:
    sizes = "+".join(str(len(v)) for v in est.stages)
    name = f"inverse-normal combination of one-sided t tests over {sizes} seeds (seeds added after a look)"
    lo, hi = claim.rule.bounds(analysis)
    if claim.rule.op in ("in", "abs<="):
        inside = max(_staged(est, lo, +1), _staged(est, hi, -1))
        return inside, min(_staged(est, lo, -1), _staged(est, hi, +1)), name
    if claim.rule.op in ("<", "<="):
        return _staged(est, hi, -1), _staged(est, hi, +1), name
    return _staged(est, lo, +1), _staged(est, lo, -1), name


def _by_p(p: float, against: float, test: str) -> tuple[str, str]:
    if math.isfinite(p) and p <= ALPHA:
        return SUPPORTED, ""
    if math.isfinite(against) and against <= ALPHA:
        return NOT_SUPPORTED, ""
    return INCONCLUSIVE, f"{test}: p = {p:.3g} for the claim, {against:.3g} against it, neither <= {ALPHA:g}"


def decide(claim: Claim, est: Estimate, analysis: Any, min_n: int = MIN_N) -> tuple[str, str]:
    """(verdict, reason it is not decisive or '') for an estimate under the claim's rule."""
    if claim.kind == DESCRIPTIVE or claim.rule.op == "none":
        return NOT_JUDGED, ""
    if est.not_judged:
        return NOT_JUDGED, f"not judged: {est.not_judged}"
    failed = [c for c in est.checks if not c.ok]
    if failed:
        return INCONCLUSIVE, "; ".join(f"precondition '{c.name}' failed: {c.reason}" for c in failed)
    if not _finite(est.value):
        return INCONCLUSIVE, "the statistic is not a number (missing or diverged runs)"
    rule = claim.rule
    uses_ci = claim.kind == MEASURED or (claim.kind == CONTROL and _finite(est.ci.low, est.ci.high))
    if not uses_ci:
        return (SUPPORTED if rule.holds(est.value, analysis) else NOT_SUPPORTED), ""
    if est.n < min_n:
        return INCONCLUSIVE, f"n = {est.n} < {min_n} seeds"
    if est.stages:  # seeds were added after a look: the stages' combined test decides
        if sum(len(v) for v in est.stages) < min_n:
            return INCONCLUSIVE, f"n = {est.n} < {min_n} seeds"
        return _by_p(*p_values(claim, est, analysis))
    lo, hi = est.ci.low, est.ci.high
    if not _finite(lo, hi):
        return INCONCLUSIVE, "the confidence interval could not be computed"
    if claim.kind == MEASURED and zero_width(est.ci) and est.ci.p_of is None:
        return _by_p(*p_values(claim, est, analysis))
    if rule.op in ("in", "abs<="):  # a band: supported inside it, not supported wholly outside it
        b_lo, b_hi = rule.bounds(analysis)
        if b_lo <= lo and hi <= b_hi and rule.holds(est.value, analysis):
            return SUPPORTED, ""
        if hi < b_lo or lo > b_hi:
            return NOT_SUPPORTED, ""
        return INCONCLUSIVE, "the CI straddles the threshold"
    checks = [rule.holds(v, analysis) for v in (est.value, lo, hi)]
    if all(checks):
        return SUPPORTED, ""
    if not any(checks):
        return NOT_SUPPORTED, ""
    return INCONCLUSIVE, "the CI straddles the threshold"


def judge(claim: Claim, est: Estimate, analysis: Any, min_n: int = MIN_N) -> ClaimRow:
    """The one function that turns an estimate and its claim's rule into a claim row."""
    verdict, why = decide(claim, est, analysis, min_n)
    lo, hi = claim.rule.bounds(analysis)
    no_ci = claim.kind == EXACT or not _finite(est.ci.low, est.ci.high)
    n_to_decide = distance = float("nan")
    p, against, test = p_values(claim, est, analysis)
    if claim.kind == MEASURED and not no_ci and claim.rule.op != "none" and _finite(est.value):
        distance = distance_in_half_widths(est.value, est.ci.low, est.ci.high, (lo, hi))
        undecided = verdict == INCONCLUSIVE and all(c.ok for c in est.checks) and not est.not_judged
        if undecided and test.startswith("exact sign test"):
            agree = min(p, against) < 1
            n_to_decide = float(max(seeds_for_sign_test(), est.n)) if agree else float("inf")
        elif undecided and not est.stages:
            n_to_decide, reason = seeds_to_decide(
                est.value, est.ci.low, est.ci.high, est.n, (lo, hi), min_n, log="log" in est.ci.method
            )
            why = "; ".join(x for x in (why, reason) if x)
    detail = "; ".join(x for x in (why, est.detail) if x)
    return ClaimRow(
        claim_id=claim.id,
        kind=claim.kind,
        statement=claim.statement,
        statistic=claim.statistic,
        value=float(est.value),
        threshold=claim.rule.text(analysis),
        op=claim.rule.op,
        bound_low=lo,
        bound_high=hi,
        ci_low=float("nan") if no_ci else est.ci.low,
        ci_high=float("nan") if no_ci else est.ci.high,
        interval="none (exact)" if claim.kind == EXACT else ("none" if no_ci else est.ci.method),
        n=int(est.n),
        verdict=verdict,
        detail=detail,
        n_to_decide=n_to_decide,
        distance_hw=distance,
        p_value=p,
        p_against=against,
        test=test,
    )


def missing(claim: Claim, analysis: Any, why: str) -> ClaimRow:
    """A claim whose data is absent (an arm missing, every run diverged): `inconclusive`, saying why."""
    return judge(claim, Estimate.missing(why), analysis)


def judge_each(estimators: dict[Claim, Any], setting: Any, analysis: Any) -> list[ClaimRow]:
    """`analyze` as a loop: each claim's estimator (setting -> Estimate, or None where the claim has
    no row in this folder, e.g. an optional control arm that did not run), judged in order."""
    rows = []
    for claim, estimate in estimators.items():
        est = estimate(setting)
        if est is not None:
            rows.append(judge(claim, est, analysis))
    return rows


def find(claims: tuple[Claim, ...], claim_id: str) -> Optional[Claim]:
    return next((c for c in claims if c.id == claim_id), None)
