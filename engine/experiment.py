"""The contract an experiment implements, and nothing else (as AlgoPerf's spec.py is for a submission).

An experiment says *what* to train (`tasks`: its arms and seeds, and any module to insert after the
normalizers), what it computes without training (`derived`), what later stages depend on results
(`followup`), how to judge (`estimators` -> claim rows) and what to draw (`plot`). The runner
(engine/runner/) does the rest: it loads the config, trains the cells, writes the tables and calls
`analyze` and `plot` on them. Configs are typed in engine/spec.py; nothing here knows about the
command line or any experiment.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from . import config as C
from .claims import Claim, ClaimRow, Estimate, judge_each
from .executor import ParallelMap, serial_map
from .results import Tables
from .runs import RunTask
from .spec import ExperimentConfig, RunConfig

# The shipped configs are package data (normlab.configs): the same files in a checkout, an editable
# install and an installed wheel. Wheels install unpacked, so the resource is a real folder.
CONFIG_ROOT = Path(str(importlib.resources.files("normlab.configs")))


class Experiment:
    name: str = ""
    title: str = ""
    claims: tuple[Claim, ...] = ()  # every claim the experiment judges, each defined once
    short_names: dict[str, str] = {}  # claim (K3) -> a few words the report shows beside its id
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

    def derived(self, cfg: ExperimentConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        """Tables computed without training (e.g. exact theory curves), written as NAME.csv.
        `pmap(fn, items)` is [fn(x) for x in items] spread over the run's --jobs workers (fn at
        module level, items plain data); the numbers are the same whatever --jobs is."""
        return {}

    def followup(self, cfg: ExperimentConfig, runs: pd.DataFrame, done: list[RunTask]) -> list[RunTask]:
        """Runs that depend on the results so far (e.g. re-running a selected configuration with
        fresh seeds); [] when there is nothing more to run."""
        return []

    def planned_followups(self, cfg: ExperimentConfig) -> list[int]:
        """The training steps each `followup` stage is expected to add, known before any run (which
        configuration a stage re-runs depends on the results; how many runs and steps does not), so
        that progress and its ETA cover the whole command from the start. [] with no follow-up."""
        return []

    # claim -> its estimator: a function of `setting(tables)` returning the claim's Estimate (or
    # None where the claim has no row in this folder). `analyze` judges them in this order.
    estimators: dict[Claim, Callable[[Any], Optional[Estimate]]] = {}

    setting_class: Optional[type] = None  # a subclass of Setting with what several estimators share

    def setting(self, tables: Tables) -> Any:
        """What the estimators read: the tables and the typed config, as `setting_class` (Setting)."""
        return (self.setting_class or Setting)(tables, self.typed_config(tables))

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        """CSV tables -> claim rows: each claim's estimator, then `judge` under its rule."""
        if not self.estimators:
            raise NotImplementedError(f"{type(self).__name__} has no estimators")
        s = self.setting(tables)
        return judge_each(self.estimators, s, s.cfg.analysis)

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        return []

    def typed_config(self, tables: Tables) -> ExperimentConfig:
        return C.from_dict(self.config_class, tables.config)


@dataclass
class Setting:
    """The run folder's tables and its typed config, as the estimators of a claim read them."""

    tables: Tables
    cfg: ExperimentConfig

    @property
    def a(self) -> Any:
        return self.cfg.analysis


class TableExperiment(Experiment):
    """An experiment without engine training runs: `derived()` computes every table it judges
    (exact checks, closed-form flows, small fits), written next to the results like any run's."""

    def tasks(self, cfg: ExperimentConfig) -> list[RunTask]:
        return []


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


Registry = dict[str, Experiment]  # name -> experiment; the runner is handed one, it names none itself

__all__ = ["CONFIG_ROOT", "Experiment", "Registry", "Setting", "TableExperiment", "arm_configs"]
