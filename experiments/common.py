"""Analysis helpers several experiments share. They read only the tables of a run folder."""

from __future__ import annotations

import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine.errors import ConfigError
from normlab.engine.results import Tables
from normlab.engine.spec import RunConfig


def final_train_loss(tables: Tables, fraction: float) -> pd.DataFrame:
    """Per run: the training loss the optimizer saw (`batch_loss_avg`, the mean over each probe
    interval, in training mode) averaged over the last `fraction` of its steps. Runs that did not
    finish normally get NaN: they are counted as missing, never as a number."""
    runs = tables.runs
    curve = tables.curve(M.BATCH_LOSS_AVG)
    out = []
    for r in runs.to_dict("records"):  # records keep dotted column names such as "train.steps"
        c = curve[curve["run_id"] == r["run_id"]]
        total = float(r["train.steps"]) if pd.notna(r.get("train.steps")) else float(c["step"].max())
        start = min((1.0 - fraction) * total, c["step"].max()) if len(c) else 0.0  # at least the last probe
        tail = c[c["step"] >= start]["value"]
        value = float(tail.mean()) if (r["status"] == "ok" and len(tail)) else float("nan")
        out.append({"run_id": r["run_id"], "arm": r["arm"], "seed": r["seed"], "value": value})
    return pd.DataFrame(out)


def by_arm(df: pd.DataFrame, column: str = "value") -> dict[str, list[float]]:
    """arm -> values ordered by seed."""
    return {arm: g.sort_values("seed")[column].astype(float).tolist() for arm, g in df.groupby("arm", sort=False)}


def values_by_seed(df: pd.DataFrame) -> dict[str, dict[int, float]]:
    """arm -> seed -> value, from a per-run table (run_id, arm, seed, value)."""
    return {arm: dict(zip(g["seed"].astype(int), g["value"].astype(float))) for arm, g in df.groupby("arm")}


def final_metric(tables: Tables, metric: str) -> pd.DataFrame:
    """Per run: the final evaluation value of `metric` (from runs.csv's final_<metric>)."""
    if metric not in M.FINAL:
        raise ValueError(f"final_metric: {metric!r} is not a final metric ({', '.join(M.FINAL)})")
    col = M.final(metric)
    runs = tables.runs
    vals = runs[col].astype(float) if col in runs else pd.Series(np.nan, index=runs.index)
    vals = vals.where(runs["status"] == "ok")
    return pd.DataFrame({"run_id": runs["run_id"], "arm": runs["arm"], "seed": runs["seed"], "value": vals})


def num_classes(data) -> int:
    """C, the number of classes of a run's data (a DataConfig): the synthetic data's own, 10 for every other
    dataset normlab ships (MNIST-1D, MNIST, Fashion-MNIST, CIFAR-10)."""
    return data.num_classes if data.name == "synthetic" else 10


def accuracy_by_seed(tables: Tables, chance: float, metric: str = M.TEST_ACC) -> dict[str, dict[int, float]]:
    """arm -> seed -> the final accuracy; a run that diverged counts `chance` (it predicts nothing), one that
    failed otherwise is missing."""
    runs = tables.runs
    acc = final_metric(tables, metric)
    value = acc["value"].where(runs["status"] != "diverged", chance)
    out: dict[str, dict[int, float]] = {}
    for arm, seed, v in zip(acc["arm"], acc["seed"].astype(int), value.astype(float)):
        if np.isfinite(v):
            out.setdefault(arm, {})[seed] = v
    return out


def selection_accuracy(runs: pd.DataFrame, metric: str = M.VAL_ACC) -> pd.Series:
    """Validation accuracy as a selection reads it: a run that diverged or failed counts 0, so it is never chosen."""
    col = M.final(metric)
    v = runs[col] if col in runs else pd.Series(np.nan, index=runs.index)
    return v.where(runs["status"] == "ok").astype(float).fillna(0.0)


def status_note(tables: Tables, arms: list[str]) -> str:
    """'2 of 5 bn_noise runs diverged' style notes for the runs that did not finish normally."""
    runs = tables.runs
    notes = []
    for arm in arms:
        sel = runs[runs["arm"] == arm]
        for status, n in sel[sel["status"] != "ok"]["status"].value_counts().items():
            notes.append(f"{n} of {len(sel)} {arm} runs {status}")
    return "; ".join(notes)


def needs_probes(run: RunConfig, experiment: str, kind: str, why: str) -> None:
    """Refuse a config whose verdicts would silently come out `inconclusive` for want of probes."""
    if run.probes.every <= 0 or not getattr(run.probes, kind):
        raise ConfigError(
            f"run.probes: {experiment} needs probes.every > 0 and probes.{kind}: true ({why}); "
            f"{{set:run.probes.every=50}} and {{set:run.probes.{kind}=true}}"
        )


def crossfit_folds(seeds: list[int]) -> list[tuple[list[int], list[int]]]:
    """Two folds over the seeds in order (positions 0, 2, 4, ... and 1, 3, 5, ...): [(judged, chosen
    on)] for each, so that a choice made on one fold (a learning rate) is judged on the other, and
    every seed is judged exactly once on a choice it took no part in."""
    a, b = list(seeds[0::2]), list(seeds[1::2])
    return [(a, b), (b, a)]


def restrict(table: dict[str, dict[int, float]], seeds: list[int]) -> dict[str, dict[int, float]]:
    """arm -> {seed: value} kept to `seeds`."""
    keep = set(seeds)
    return {arm: {s: v for s, v in d.items() if s in keep} for arm, d in table.items()}
