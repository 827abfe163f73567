"""One matplotlib style for every figure, and helpers that read long-format tables.

Curves are means over seeds with a band from the lowest to the highest seed (always positive,
so it also works on log axes); the legend gives n. Every figure is written twice, as PNG (for
the reports) and as PDF (vector, for papers), both without timestamps, so the same CSVs give the
same bytes. Labels are typeset on the way out: the experiments write ASCII ("alpha", "||w||^2"),
the figures show alpha, lambda, eta, ||w||^2 as the symbols a reader expects.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import re  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .claims import VERDICT_COLORS as VERDICT_STYLES  # noqa: E402
from .files import atomic_write  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": True,  # a light box keeps a legend readable where it has to sit over data
    "legend.framealpha": 0.8,
    "legend.edgecolor": "none",
    "legend.fontsize": 8,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays text for journals' checks
}

# ASCII in labels -> the symbols of the chapter. Whole words only, so "alphas" or arm names survive.
_SYMBOLS = [
    (re.compile(r"\|\|([^|]+)\|\|"), "\u2016\\1\u2016"),  # ||w|| -> ‖w‖
    (re.compile(r"\^2\b"), "\u00b2"),
    (re.compile(r"\^\(-?1/2\)|\^-0\.5\b"), "\u207b\u00bd"),
    (re.compile(r"\bsqrt\("), "\u221a("),
    (re.compile(r"\balpha\b"), "\u03b1"),
    (re.compile(r"\blambda\b"), "\u03bb"),
    (re.compile(r"\beta\b"), "\u03b7"),
    (re.compile(r"\btheta\b"), "\u03b8"),
    (re.compile(r"\bgamma\b"), "\u03b3"),
    (re.compile(r"\bepsilon\b"), "\u03b5"),
    (re.compile(r"\bmu\b"), "\u03bc"),
    (re.compile(r"\bsigma\b"), "\u03c3"),
    (re.compile(r"\bnabla\b"), "\u2207"),
    (re.compile(r" x (?=[\d(])"), " \u00d7 "),
]


def typeset(text: str) -> str:
    """ASCII maths in a label as Unicode symbols (alpha -> α, ||w||^2 -> ‖w‖², lambda -> λ)."""
    if not text or "$" in text:  # mathtext is left alone
        return text
    for pattern, repl in _SYMBOLS:
        text = pattern.sub(repl, text)
    return text


def _typeset_figure(fig) -> None:
    for ax in fig.get_axes():
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label, ax._left_title, ax._right_title):
            t.set_text(typeset(t.get_text()))
        legend = ax.get_legend()
        if legend is not None:
            for t in legend.get_texts():
                t.set_text(typeset(t.get_text()))
            if legend.get_title():
                legend.get_title().set_text(typeset(legend.get_title().get_text()))
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.set_text(typeset(fig._suptitle.get_text()))


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, sharey=False):
    plt.rcParams.update(STYLE)  # plotting is the only thing a plotting process does
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=sharey)
    return fig, axes


def colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def mean_band(ax, df: pd.DataFrame, label: str, color: str, x: str = "step", y: str = "value") -> None:
    """Plot the mean over seeds of y vs x, with a min..max band (df: one row per seed and x)."""
    if df.empty:
        return
    g = df.groupby(x)[y].agg(["mean", "min", "max", "count"]).reset_index().sort_values(x)
    n = int(df["seed"].nunique()) if "seed" in df else int(g["count"].max())
    ax.plot(g[x], g["mean"], color=color, label=f"{label} (n={n})", lw=1.5)
    if n > 1:
        ax.fill_between(g[x], g["min"], g["max"], color=color, alpha=0.18, lw=0)


def legend(ax, **kwargs) -> None:
    """ax.legend(**kwargs) where the axes have labelled artists; nothing where they have none (a figure
    of runs that all crashed), instead of matplotlib's warning about an empty legend."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def save(fig, path: Path, tight: bool = True) -> Path:
    """Write the figure as PATH (PNG) and beside it as PDF; returns the PNG's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _typeset_figure(fig)
    if tight:
        fig.tight_layout()
    try:
        no_stamps = {"CreationDate": None, "Producer": None, "Creator": None}
        atomic_write(path.with_suffix(".pdf"), lambda fh: fig.savefig(fh, format="pdf", metadata=no_stamps))
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", metadata={"Software": None}))
    finally:
        plt.close(fig)


VERDICT_COLORS = {verdict: c["mark"] for verdict, c in VERDICT_STYLES.items()}


def claims_forest(claims: pd.DataFrame, path: Path) -> Path:
    """Every claim row given (the report's second figure: every row but the exact checks): its value and
    interval against the region its rule
    accepts (shaded), coloured by verdict. Each row has its own x-axis, because every claim has
    its own units; a row spanning orders of magnitude gets a logarithmic axis."""
    import math

    from matplotlib.ticker import MaxNLocator

    n = len(claims)
    fig, axes = figure(ncols=1, nrows=max(n, 1), width=9.0, height=0.5)
    inches = 0.5 * max(n, 1) + 1.6  # the rows, 1.2 inches for the title above them and 0.4 below
    fig.set_size_inches(9.0, inches)
    fig.subplots_adjust(left=0.3, right=0.78, top=1 - 1.2 / inches, bottom=0.4 / inches, hspace=1.1)
    for ax, r in zip(axes[:, 0], claims.to_dict("records")):
        nums = [float(r[k]) for k in ("value", "ci_low", "ci_high", "bound_low", "bound_high")]
        v, lo, hi, b_lo, b_hi = nums
        seen = [x for x in nums if math.isfinite(x)]
        color = VERDICT_COLORS.get(r["verdict"], "#7f7f7f")
        label = f"{r['experiment']}  {r['claim_id']}  ({r['kind']})"
        ax.set_yticks([0], [label], fontsize=7)
        ax.tick_params(axis="x", labelsize=6, pad=1, length=2)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        text = (
            "no number"
            if not math.isfinite(v)
            else (f"{v:.3g} [{lo:.3g}, {hi:.3g}]" if math.isfinite(lo) and math.isfinite(hi) else f"{v:.3g}")
        )
        ax.text(1.02, 0.5, f"{text}  {r['verdict']}", transform=ax.transAxes, fontsize=6.5, va="center", color=color)
        ax.grid(False)
        for side in ("left", "top", "right"):
            ax.spines[side].set_visible(False)
        if not seen:
            ax.set_xticks([])
            continue
        span_lo, span_hi = min(seen), max(seen)
        log = span_lo > 0 and span_hi / span_lo > 50
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(numticks=4))
            left, right = span_lo / 2, span_hi * 2
        else:
            pad = (span_hi - span_lo) * 0.15 or max(abs(span_hi) * 0.1, 1e-9)
            left, right = span_lo - pad, span_hi + pad
        ax.set_xlim(left, right)
        if r["verdict"] != "not judged" and (math.isfinite(b_lo) or math.isfinite(b_hi)):
            ax.axvspan(
                max(b_lo, left) if math.isfinite(b_lo) else left,
                min(b_hi, right) if math.isfinite(b_hi) else right,
                color="#2ca02c",
                alpha=0.12,
                lw=0,
            )
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([lo, hi], [0, 0], color=color, lw=2.2, solid_capstyle="butt")
        if math.isfinite(v):
            ax.plot([v], [0], "o", color=color, ms=4.5)
        ax.set_ylim(-0.6, 0.6)
    fig.suptitle(
        "Every row but the exact checks: value (dot) and 95% interval (line) against the region the rule accepts "
        "(shaded);\neach row has its own scale. Green supported, red not supported, orange inconclusive, "
        "grey not judged",
        fontsize=8,
        y=1 - 0.2 / inches,
        va="top",
    )
    return save(fig, path, tight=False)


def claim_family(claim_id: str) -> str:
    """B1, K1, ..., K16: the claim of CLAIMS.md a row belongs to (K3-euler -> K3)."""
    return str(claim_id).split("-")[0]


GLANCE_VERDICTS = ("supported", "inconclusive", "not supported")


def glance_counts(claims: pd.DataFrame, kinds: tuple[str, ...] = ("measured", "exact")) -> pd.DataFrame:
    """Per claim (B1, K1-K16, in that order): its rows of the given kinds (the evidence: measured and
    exact) by verdict. Control and descriptive rows are not evidence and are not counted."""
    evidence = claims[claims["kind"].isin(kinds)] if "kind" in claims else claims
    family = evidence["claim_id"].map(claim_family)
    order = sorted(set(family), key=lambda c: (c[0], int(re.sub(r"\D", "", c) or 0)))
    table = pd.crosstab(family, evidence["verdict"]).reindex(index=order, columns=list(GLANCE_VERDICTS))
    return table.fillna(0).astype(int)


def claims_summary(claims: pd.DataFrame, path: Path, short_names: dict[str, str] | None = None) -> Path:
    """Claims at a glance: one bar per claim (`glance_counts`), labelled with its id and short name,
    its rows coloured by verdict, the measured claims solid and the exact checks hatched after them."""
    from matplotlib.patches import Patch

    counts = glance_counts(claims)
    parts = [(glance_counts(claims, (kind,)).reindex(counts.index).fillna(0).astype(int), hatch)
             for kind, hatch in (("measured", None), ("exact", "////"))]  # fmt: skip
    fig, axes = figure(width=7.0, height=0.32 * max(len(counts), 1) + 1.1)
    ax = axes[0, 0]
    for i, fam in enumerate(counts.index):
        left = 0
        for part, hatch in parts:
            for v in GLANCE_VERDICTS:
                k = int(part.loc[fam, v])
                if k:
                    ax.barh(i, k, left=left, color=VERDICT_COLORS[v], height=0.7, hatch=hatch, edgecolor="white")
                    box = {"boxstyle": "round,pad=0.15", "fc": VERDICT_COLORS[v], "ec": "none"} if hatch else None
                    ax.text(left + k / 2, i, str(k), ha="center", va="center", fontsize=7, color="white", bbox=box)
                    left += k
    names = short_names or {}
    labels = [f"{fam}  {names[fam]}" if fam in names else fam for fam in counts.index]
    ax.set_yticks(range(len(counts)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("evidence rows by verdict: measured claims solid, exact checks hatched", fontsize=8)
    ax.grid(False)
    for side in ("top", "right"):
        spine = ax.spines[side]
        spine.set_visible(False)
    handles = [Patch(color=VERDICT_COLORS[v], label=v) for v in GLANCE_VERDICTS]
    handles.append(Patch(facecolor="#888888", hatch="////", edgecolor="white", label="exact check"))
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_title("Claims at a glance: each claim's rows by verdict", fontsize=9)
    return save(fig, path)
