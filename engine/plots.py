"""One matplotlib style for every figure, and helpers that read long-format tables.

Curves are means over seeds with a band from the lowest to the highest seed (always positive,
so it also works on log axes); the legend gives n. PNGs are
written without timestamps, so the same CSVs give the same bytes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .files import publish  # noqa: E402

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "legend.frameon": False, "legend.fontsize": 8,
}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, sharey=False):
    plt.rcParams.update(STYLE)  # plotting is the only thing a plotting process does
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             sharey=sharey)
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


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        publish(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
