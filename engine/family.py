"""The measured rows as one family: verdicts adjusted for their number, and where each row would turn.

Each measured row is judged on its own at one-sided ALPHA (its 95% interval clearing a threshold).
Read together, some "supported" rows would appear by chance alone. The family is every measured row
with a p-value in every folder of a report (a sweep's repeats included: each is a test that could
come out supported by chance), so rows added later join it without a new rule.

Holm's step-down procedure adjusts the p-values: it controls the family-wise error under any
dependence, which these rows need (they share runs, and their claims point in mixed directions;
plain Benjamini-Hochberg assumes positive dependence). Both directions are adjusted, each in its own
family: "supported" with the claim false as the null (`p_value`), "not supported" with the claim
true as the null (`p_against`). A row the adjustment no longer decides reads `inconclusive` under
the family.
"""

from __future__ import annotations

import math

import pandas as pd

from .claims import INCONCLUSIVE, MEASURED, NOT_SUPPORTED, SUPPORTED
from .stats import ALPHA, holm, seeds_for_sign_test, sign_test_p


def family_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (every claim row, an `experiment` column added) -> the measured rows with a p-value,
    with Holm's adjusted p-values and the verdict each row keeps under the family."""
    need = {"p_value", "p_against", "kind"}
    if not need <= set(rows.columns):
        return pd.DataFrame()
    fam = rows[(rows["kind"] == MEASURED) & rows["p_value"].notna()].copy()
    fam["holm_p"] = holm(fam["p_value"].tolist())
    fam["holm_against"] = holm(fam["p_against"].tolist())

    def verdict(r) -> str:
        if r["verdict"] == SUPPORTED and r["holm_p"] > ALPHA:
            return INCONCLUSIVE
        if r["verdict"] == NOT_SUPPORTED and r["holm_against"] > ALPHA:
            return INCONCLUSIVE
        return r["verdict"]

    fam["family_verdict"] = [verdict(r) for _, r in fam.iterrows()] if len(fam) else []
    return fam


def cost_note(m: int) -> str:
    """What deciding under the family asks of a design, in numbers."""
    first = ALPHA / m if m else float("nan")
    k = seeds_for_sign_test(first) if m else 0
    return (
        f"What it costs: Holm's first step asks p <= {ALPHA:g}/{m} = {first:.2g}. A row whose seeds all agree is "
        f"judged by an exact sign test, whose smallest p with n seeds is 0.5^n ({sign_test_p(5, 5):.3f} at 5 seeds, "
        f"{sign_test_p(6, 6):.3f} at 6): "
        f"it needs {k} seeds to pass that first step. A t or bootstrap row needs its interval to clear the "
        "threshold by several half-widths."
    )


def changes_at(r) -> str:
    """Where a measured row's verdict would turn as its threshold (or margin) moves, the data held: the
    interval endpoint the bound would have to cross. Empty for rows the interval does not decide."""
    lo, hi, op, verdict = r.get("ci_low"), r.get("ci_high"), r.get("op"), r.get("verdict")
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return ""
    if r.get("kind") != MEASURED or not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi:
        return ""
    if str(r.get("test", "")).startswith("inverse-normal"):  # the stages' combined test decides, not the interval
        return ""
    g = lambda v: f"{v:.3g}"  # noqa: E731
    if op in ("<", "<="):
        return {
            SUPPORTED: f"inconclusive at a bound <= {g(hi)}",
            NOT_SUPPORTED: f"inconclusive at a bound > {g(lo)}",
            INCONCLUSIVE: f"supported above {g(hi)}, not supported below {g(lo)}",
        }.get(verdict, "")
    if op in (">", ">="):
        return {
            SUPPORTED: f"inconclusive at a bound >= {g(lo)}",
            NOT_SUPPORTED: f"inconclusive at a bound < {g(hi)}",
            INCONCLUSIVE: f"supported below {g(lo)}, not supported above {g(hi)}",
        }.get(verdict, "")
    if op == "abs<=":
        widest = max(abs(lo), abs(hi))
        nearest = min(abs(lo), abs(hi)) if lo > 0 or hi < 0 else None
        out = {
            SUPPORTED: f"inconclusive at a margin < {g(widest)}",
            NOT_SUPPORTED: f"inconclusive at a margin >= {g(nearest)}" if nearest is not None else "",
            INCONCLUSIVE: f"supported at a margin >= {g(widest)}"
            + (f", not supported below {g(nearest)}" if nearest is not None else ""),
        }
        return out.get(verdict, "")
    if op == "in":
        return {
            SUPPORTED: f"inconclusive once an edge of the band enters [{g(lo)}, {g(hi)}]",
            NOT_SUPPORTED: f"inconclusive once the band reaches [{g(lo)}, {g(hi)}]",
            INCONCLUSIVE: f"supported once the band holds [{g(lo)}, {g(hi)}]",
        }.get(verdict, "")
    return ""
