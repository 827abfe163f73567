"""A run folder's report.md: what ran, where it came from, each claim row and the figures."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .results import Tables, atomic_write_text


def _fmt(v) -> str:
    """A table cell: 4 significant digits for numbers, pipes escaped for Markdown."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def claims_markdown(claims: pd.DataFrame) -> str:
    if claims.empty:
        return "_No claim rows._\n"
    cols = ["claim_id", "verdict", "statistic", "value", "ci_low", "ci_high", "threshold", "n"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in claims.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    out = "\n".join(lines) + "\n\n"
    for _, r in claims.iterrows():
        out += f"- **{r['claim_id']}** ({r['verdict']}): {r['statement']}"
        if isinstance(r.get("detail"), str) and r["detail"]:
            out += f" _{r['detail']}_"
        out += "\n"
    return out


def write_run_report(tables: Tables, claims: pd.DataFrame, plots: list[Path], title: str) -> Path:
    m = tables.manifest
    runs = tables.runs
    status = runs["status"].value_counts().to_dict() if "status" in runs else {}
    lines = [f"# {title}", ""]
    if tables.config.get("description"):
        lines += [tables.config["description"], ""]
    lines += [
        f"- experiment: `{tables.config.get('experiment')}`; runs: {len(runs)} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(status.items()))}); "
        f"seeds: {sorted(set(runs['seed'].tolist())) if 'seed' in runs else []}",
        f"- commit: `{m.get('git_commit')}`; normlab {m.get('versions', {}).get('normlab')}, "
        f"torch {m.get('versions', {}).get('torch')}; device: {m.get('device')}; "
        f"wall time: {m.get('wall_seconds', float('nan')):.1f} s"
        + ("; **smoke run** (tiny settings: the verdicts below are not meaningful)" if m.get("smoke") else ""),
        "", "## Claims", "", claims_markdown(claims), "## Figures", "",
    ]
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    failed = runs[runs["status"] != "ok"] if "status" in runs else runs.iloc[0:0]
    if len(failed):
        lines += ["## Runs that did not finish normally", ""]
        for _, r in failed.iterrows():
            lines.append(f"- `{r['run_id']}`: {r['status']} after {r['steps_done']} steps {r.get('error', '')}")
        lines.append("")
    path = tables.folder / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
