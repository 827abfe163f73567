"""What an experiment is, and the one generic way to load, run and analyze it.

An experiment says *what* to train (its arms, seeds and any module to insert into the network),
how to judge the result (`analyze`: CSV tables -> claim rows) and what to draw (`plot`: CSV
tables -> figures). The engine does the rest. Nothing here knows about the command line.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from normlab.engine import config as C
from normlab.engine.data import load_dataset
from normlab.engine.executor import execute
from normlab.engine.report import write_run_report
from normlab.engine.results import (CLAIM_COLUMNS, Tables, atomic_write_csv, atomic_write_text,
                                    ensure_free, git_commit, host_info, load_tables, metrics_frame, now,
                                    run_folder, runs_frame, versions, write_manifest)
from normlab.engine.spec import ExperimentConfig, RunConfig
from normlab.engine.stats import ClaimRow
from normlab.engine.train import Progress, RunTask, resolve_device

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
# Hyperparameters always shown in runs.csv, besides the ones that differ between runs.
ALWAYS_SHOWN = ("model.arch", "model.norm", "optim.name", "optim.lr", "optim.weight_decay",
                "train.steps", "train.batch_size")


class Experiment:
    name: str = ""
    title: str = ""
    claims: tuple[str, ...] = ()
    config_class: type[ExperimentConfig] = ExperimentConfig

    @property
    def default_config(self) -> Path:
        return CONFIG_ROOT / f"{self.name}.yaml"

    def after_norm(self, cfg: ExperimentConfig, arm: str):
        """A picklable factory of modules to insert after every normalizer, or None."""
        return None

    def tasks(self, cfg: ExperimentConfig) -> list[RunTask]:
        """Every (arm, seed) pair as one training run."""
        tasks = []
        for arm, run_cfg in arm_configs(cfg).items():
            for seed in cfg.seed_list:
                tasks.append(RunTask(f"{arm}-s{seed}", arm, seed, run_cfg, self.after_norm(cfg, arm)))
        return tasks

    def derived(self, cfg: ExperimentConfig) -> dict[str, pd.DataFrame]:
        """Tables computed without training (e.g. exact theory curves), written as NAME.csv."""
        return {}

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        raise NotImplementedError

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        return []

    def typed_config(self, tables: Tables) -> ExperimentConfig:
        return C.from_dict(self.config_class, tables.config)


def arm_configs(cfg: ExperimentConfig) -> dict[str, RunConfig]:
    """The RunConfig of every arm (`run` with the arm's overrides), or just `run` if no arms."""
    if not cfg.arms:
        return {"main": cfg.run}
    base = C.to_dict(cfg.run)
    out = {}
    for arm, overrides in cfg.arms.items():
        raw = C.apply_overrides(base, overrides or {}, f"arms.{arm}")
        out[arm] = C.from_dict(RunConfig, raw, f"arms.{arm}")
    return out


def load_config(path: Path | str, registry: dict[str, "Experiment"], overrides: Optional[dict] = None,
                smoke: bool = False) -> tuple["Experiment", ExperimentConfig]:
    """Read, override and validate a config; every error names the dotted key and the fix."""
    raw = C.read_yaml(path)
    name = raw.get("experiment")
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise C.ConfigError(f"experiment: {name!r} is not a known experiment; choose one of {known}")
    exp = registry[name]
    if smoke:
        smoke_overrides = raw.get("smoke") or {}
        if not isinstance(smoke_overrides, dict):
            raise C.ConfigError("smoke: expected a mapping of dotted keys to values")
        raw = C.apply_overrides(raw, smoke_overrides)
    if overrides:
        raw = C.apply_overrides(raw, overrides)
    cfg = C.from_dict(exp.config_class, raw)
    arm_configs(cfg)  # validates every arm's overrides
    return exp, cfg


def _hyperparameters(tasks: list[RunTask]) -> dict[str, dict[str, Any]]:
    flat = {t.run_id: C.flatten(C.to_dict(t.config)) for t in tasks}
    keys = list(next(iter(flat.values())).keys()) if flat else []
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    shown = [k for k in keys if k in ALWAYS_SHOWN or k in varying]
    return {rid: {k: (json.dumps(f[k]) if isinstance(f[k], list) else f[k]) for k in shown}
            for rid, f in flat.items()}


@dataclass
class Outcome:
    folder: Path
    claims: pd.DataFrame
    runs: pd.DataFrame
    plots: list[Path]


def finish(exp: Experiment, folder: Path) -> Outcome:
    """Claims, plots and report of a run folder, from its CSVs alone."""
    tables = load_tables(folder)
    claims = pd.DataFrame([c.as_dict() for c in exp.analyze(tables)], columns=CLAIM_COLUMNS)
    atomic_write_csv(folder / "claims.csv", claims)
    plots = exp.plot(tables, folder / "plots")
    write_run_report(tables, claims, plots, exp.title or exp.name)
    return Outcome(folder, claims, tables.runs, plots)


def run_experiment(exp: Experiment, cfg: ExperimentConfig, out: Path, jobs: int = 1,
                   progress: Progress = None, smoke: bool = False,
                   on_start: Optional[Callable[[list[RunTask]], None]] = None) -> Outcome:
    ensure_free(out)
    tasks = exp.tasks(cfg)
    for data_cfg in {json.dumps(C.to_dict(t.config.data), sort_keys=True): t.config.data
                     for t in tasks}.values():
        load_dataset(data_cfg)  # fail early, with a clear message, before anything is written
    devices = {str(resolve_device(t.config.train.device)) for t in tasks}
    if on_start:
        on_start(tasks)
    started, t0 = now(), time.perf_counter()
    with run_folder(out) as folder:
        atomic_write_text(folder / "config.yaml", C.dump_yaml(cfg))
        for name, table in exp.derived(cfg).items():
            atomic_write_csv(folder / f"{name}.csv", table)
        results = execute(tasks, jobs=jobs, progress=progress)
        atomic_write_csv(folder / "runs.csv", runs_frame(results, _hyperparameters(tasks)))
        atomic_write_csv(folder / "metrics.csv", metrics_frame(results))
        write_manifest(folder, {
            "experiment": exp.name, "smoke": smoke, "started": started, "finished": now(),
            "wall_seconds": round(time.perf_counter() - t0, 2), "jobs": jobs,
            "device": ",".join(sorted(devices)), "seeds": cfg.seed_list,
            "git_commit": git_commit(), "versions": versions(), **host_info(),
            "runs": {r.run_id: {"status": r.status, "steps_done": r.steps_done,
                                "train_seconds": round(r.train_seconds, 3)} for r in results},
        })
        outcome = finish(exp, folder)
    outcome.folder = Path(out)
    outcome.plots = [Path(out) / "plots" / p.name for p in outcome.plots]
    return outcome
