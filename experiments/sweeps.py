"""`normlab sweep`: run a grid of one experiment's runs, resumably, then analyze it like a run.

The sweep folder holds a `config.yaml` in which the grid points are the experiment's arms, so
the experiment's own `analyze` and `plot` read it exactly like the folder of `normlab run`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from normlab.engine import config as C
from normlab.engine.data import load_dataset
from normlab.engine.executor import execute
from normlab.engine.results import atomic_write_csv, atomic_write_text, git_commit, host_info, now, versions, write_manifest
from normlab.engine.sweep import CellStore, SweepConfig, cell_key, expand
from normlab.engine.train import Progress, RunResult, RunTask

from .base import CONFIG_ROOT, Experiment, Outcome, _hyperparameters, finish, load_config

SWEEP_ROOT = CONFIG_ROOT / "sweeps"


def sweep_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = SWEEP_ROOT / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in SWEEP_ROOT.glob("*.yaml")))
        raise C.ConfigError(f"{name_or_path!r} is neither a sweep ({known}) nor a sweep file")
    return path


def load_sweep(path: Path, registry: dict[str, Experiment], overrides: Optional[dict] = None,
               smoke: bool = False):
    """-> (experiment, its config with the grid as arms, the sweep config)."""
    raw = C.read_yaml(path)
    if smoke:
        raw = _apply(raw, raw.get("smoke") or {})
    if overrides:
        raw = _apply(raw, overrides)
    sweep = C.from_dict(SweepConfig, raw)
    if sweep.experiment not in registry:
        raise C.ConfigError(f"experiment: {sweep.experiment!r} is not a known experiment; choose one of "
                            f"{', '.join(sorted(registry))}")
    if not sweep.axes:
        raise C.ConfigError("axes: a sweep needs at least one axis, e.g. {optim.lr: [0.01, 0.1]}")
    for key, values in sweep.axes.items():
        if not values:
            raise C.ConfigError(f"axes.{key}: needs at least one value")
    base = Path(sweep.base) if sweep.base else registry[sweep.experiment].default_config
    grid = {label: {k: v for k, v in cell.items()} for label, cell in expand(sweep.axes).items()}
    exp_overrides = {**C.flatten(sweep.overrides), "arms": grid, "seeds": sweep.seeds,
                     "seed_offset": sweep.seed_offset}
    raw_exp = C.read_yaml(base)
    raw_exp["arms"] = {}  # the grid replaces the base config's arms
    raw_exp = C.apply_overrides(raw_exp, {k: v for k, v in exp_overrides.items() if k != "arms"})
    raw_exp["arms"] = grid
    exp = registry[sweep.experiment]
    cfg = C.from_dict(exp.config_class, raw_exp)
    from .base import arm_configs
    arm_configs(cfg)  # every grid point is a valid run config
    return exp, cfg, sweep


def _apply(raw: dict, overrides: dict) -> dict:
    """Overrides of a sweep file. Axis names are dotted keys themselves, so `axes` (a mapping)
    replaces the whole grid and `axes.KEY` sets one axis, instead of nesting further."""
    overrides = dict(overrides)
    axes = overrides.pop("axes", None)
    one_axis = {k[len("axes."):]: overrides.pop(k) for k in list(overrides) if k.startswith("axes.")}
    out = C.apply_overrides(raw, overrides)
    if axes is not None:
        if not isinstance(axes, dict):
            raise C.ConfigError("axes: expected a mapping of dotted keys to lists of values")
        out["axes"] = dict(axes)
    if one_axis:
        out["axes"] = {**(out.get("axes") or {}), **one_axis}
    return out


@dataclass
class SweepOutcome(Outcome):
    skipped: int = 0
    ran: int = 0


def run_sweep(exp: Experiment, cfg, sweep: SweepConfig, out: Path, jobs: int = 1,
              progress: Progress = None, smoke: bool = False,
              on_start: Optional[Callable[[list[RunTask], int], None]] = None,
              on_cell: Optional[Callable[[RunResult], None]] = None) -> SweepOutcome:
    out = Path(out)
    tasks = exp.tasks(cfg)
    keys = {t.run_id: cell_key(t.config, t.seed, repr(type(t.after_norm).__name__)) for t in tasks}
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "sweep.yaml"
    resolved = C.dump_yaml(sweep)
    if previous.is_file() and previous.read_text() != resolved:
        # a changed grid keeps the finished cells it shares with the old one (same keys)
        atomic_write_text(out / "sweep.previous.yaml", previous.read_text())
    store = CellStore(out)
    todo = [t for t in tasks if not store.finished(keys[t.run_id])]
    for data_cfg in {json.dumps(C.to_dict(t.config.data), sort_keys=True): t.config.data for t in todo}.values():
        load_dataset(data_cfg)
    atomic_write_text(previous, resolved)
    atomic_write_text(out / "config.yaml", C.dump_yaml(cfg))
    for name, table in exp.derived(cfg).items():
        atomic_write_csv(out / f"{name}.csv", table)
    if on_start:
        on_start(todo, len(tasks) - len(todo))
    hyper = _hyperparameters(tasks)
    started, t0 = now(), time.perf_counter()

    def save(res: RunResult) -> None:
        store.save(keys[res.run_id], res, hyper[res.run_id])
        if on_cell:
            on_cell(res)

    execute(todo, jobs=jobs, progress=progress, on_result=save)
    runs, metrics = store.assemble([keys[t.run_id] for t in tasks])
    atomic_write_csv(out / "runs.csv", runs)
    atomic_write_csv(out / "metrics.csv", metrics)
    write_manifest(out, {
        "experiment": exp.name, "sweep": sweep.sweep, "smoke": smoke, "started": started, "finished": now(),
        "wall_seconds": round(time.perf_counter() - t0, 2), "wall_seconds_covers": "this invocation only",
        "jobs": jobs,
        "cells": len(tasks), "cells_run_now": len(todo), "cells_reused": len(tasks) - len(todo),
        "seeds": cfg.seed_list, "git_commit": git_commit(), "versions": versions(), **host_info(),
        "device": ",".join(sorted({t.config.train.device for t in tasks})),
        "runs": {r["run_id"]: {"status": r["status"], "steps_done": r["steps_done"]} for r in runs.to_dict("records")},
    })
    o = finish(exp, out)
    return SweepOutcome(o.folder, o.claims, o.runs, o.plots, skipped=len(tasks) - len(todo), ran=len(todo))


__all__ = ["load_sweep", "run_sweep", "sweep_path", "load_config"]
