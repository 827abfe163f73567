"""What an experiment is, and the one generic way to load, run and analyze it.

An experiment says *what* to train (its arms, seeds and any module to insert into the network),
how to judge the result (`analyze`: CSV tables -> claim rows) and what to draw (`plot`: CSV
tables -> figures). The engine does the rest. Nothing here knows about the command line.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from normlab.engine import config as C
from normlab.engine.data import load_dataset
from normlab.engine.execution import Execution
from normlab.engine.executor import ParallelMap, execute, map_in_workers, serial_map
from normlab.engine.report import write_run_report
from normlab.engine.errors import NormlabError
from normlab.engine.results import (
    CLAIM_COLUMNS,
    Tables,
    atomic_write_csv,
    atomic_write_text,
    ensure_free,
    git_commit,
    host_info,
    load_tables,
    now,
    dataset_sha256,
    sha256_of,
    versions,
    write_manifest,
)
from normlab.engine.cells import CellStore, cell_key
from normlab.engine.files import fsync_folder
from normlab.engine.locks import folder_lock
from normlab.engine.spec import ExperimentConfig, RunConfig
from normlab.engine.claims import Claim, ClaimRow, Estimate, judge_each
from normlab.engine.runs import RunResult, RunTask
from normlab.engine.train import resolve_device

# The shipped configs are package data (normlab.configs): the same files in a checkout, an editable
# install and an installed wheel. Wheels install unpacked, so the resource is a real folder.
CONFIG_ROOT = Path(str(importlib.resources.files("normlab.configs")))
# Hyperparameters always shown in runs.csv, besides the ones that differ between runs.
ALWAYS_SHOWN = (
    "model.arch",
    "model.norm",
    "optim.name",
    "optim.lr",
    "optim.weight_decay",
    "train.steps",
    "train.batch_size",
)


class Experiment:
    name: str = ""
    title: str = ""
    claims: tuple[Claim, ...] = ()  # every claim the experiment judges, each defined once
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


def load_config(
    path: Path | str, registry: dict[str, "Experiment"], overrides: Optional[dict] = None, smoke: bool = False
) -> tuple["Experiment", ExperimentConfig]:
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
    return {rid: {k: (json.dumps(f[k]) if isinstance(f[k], list) else f[k]) for k in shown} for rid, f in flat.items()}


CRASH_LOG = "crashes.log"  # in a run folder where some run raised: each crash's traceback


def crashes(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(run_id, first line of its error) of every run that crashed (status `failed`), in order.
    Diverged runs are data and are not listed."""
    if "status" not in runs:
        return []
    failed = runs[runs["status"] == "failed"]
    errors = failed["error"] if "error" in failed else pd.Series("", index=failed.index)
    return [(str(r), str(e) if isinstance(e, str) else "") for r, e in zip(failed["run_id"], errors)]


@dataclass
class Outcome:
    folder: Path
    claims: pd.DataFrame
    runs: pd.DataFrame
    plots: list[Path]
    ran: int = 0
    reused: int = 0

    @property
    def crashes(self) -> list[tuple[str, str]]:
        """The runs that raised (their tracebacks are in FOLDER/crashes.log): errors, not results."""
        return crashes(self.runs)


def finish(exp: Experiment, folder: Path) -> Outcome:
    """Claims, plots and report of a run folder, from its CSVs alone."""
    tables = load_tables(folder)
    claims = pd.DataFrame([c.as_dict() for c in exp.analyze(tables)], columns=CLAIM_COLUMNS)
    atomic_write_csv(folder / "claims.csv", claims)
    plots = exp.plot(tables, folder / "plots")
    write_run_report(tables, claims, plots, exp.title or exp.name)
    return Outcome(folder, claims, tables.runs, plots)


def run_cells(
    exp: Experiment,
    cfg: ExperimentConfig,
    folder: Path,
    execution: Execution,
    smoke: bool = False,
    manifest: Optional[dict] = None,
) -> Outcome:
    """Run every cell of `exp` not already finished in `folder`, then write the tables and analyze.

    Stage 1 is `exp.tasks(cfg)`; an experiment may add a stage that depends on the results so far
    (`followup`). Finished cells are kept in folder/cells/, so running again resumes.
    """
    folder = Path(folder)
    jobs, members = execution.jobs, execution.members
    started, t0 = now(), time.perf_counter()  # derived tables count: for some experiments they are the work
    store = CellStore(folder)
    atomic_write_text(folder / "config.yaml", C.dump_yaml(cfg))
    pmap = execution.pool.map if execution.pool is not None else functools.partial(map_in_workers, jobs=jobs)
    for name, table in exp.derived(cfg, pmap).items():
        atomic_write_csv(folder / f"{name}.csv", table)
    done: list[RunTask] = []
    keys: dict[str, str] = {}
    ran = 0
    data_hashes: dict[str, str] = {}
    stage = exp.tasks(cfg)
    while stage:
        hyper = _hyperparameters(stage)
        for t in stage:
            keys[t.run_id] = cell_key(t.config, t.seed, _module_key(t.after_norm))
        unique, seen = [], set()
        for t in stage:  # arms with identical configs share a cell: computed once
            if keys[t.run_id] not in seen:
                seen.add(keys[t.run_id])
                unique.append(t)
        finished = {t.run_id for t in unique if store.finished(keys[t.run_id])}
        todo = [t for t in unique if t.run_id not in finished]
        _load_and_hash_datasets(stage, todo, data_hashes)  # fail early for the runs to come; one load each
        if execution.on_start:
            execution.on_start(todo, len(stage) - len(todo))

        def save(res: RunResult, hyper=hyper) -> None:
            store.save(keys[res.run_id], res, hyper[res.run_id])
            if execution.on_result:
                execution.on_result(res)

        # every cell's run, finished or not, goes to the packer: a resumed run keeps its ensemble
        execute(unique, jobs, execution.progress, save, execution.backend, members, finished=finished,
                pool=execution.pool, costs=execution.pool.costs.get(exp.name) if execution.pool else None)  # fmt: skip
        ran += len(todo)
        done += stage
        runs, _ = store.assemble([(keys[t.run_id], t.run_id, t.arm) for t in done], metrics=False)
        stage = exp.followup(cfg, runs, done)
    cells = [(keys[t.run_id], t.run_id, t.arm) for t in done]
    runs, metrics = store.assemble(cells)
    crashes = store.crash_log(cells)
    if crashes:  # a crash is an error to fix, not data: its traceback goes next to the results
        atomic_write_text(folder / CRASH_LOG, crashes)
    elif (folder / CRASH_LOG).exists():  # a resumed sweep whose crashed cells now ran
        (folder / CRASH_LOG).unlink()
    atomic_write_csv(folder / "runs.csv", runs)
    atomic_write_csv(folder / "metrics.csv", metrics)
    devices = {str(resolve_device(t.config.train.device)) for t in done}
    write_manifest(
        folder,
        {
            "experiment": exp.name,
            "smoke": smoke,
            "started": started,
            "finished": now(),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "jobs": jobs,
            "backend": execution.backend,
            "ensemble": members[0],  # most members per batched ensemble (1: every run trained alone)
            "ensemble_archs": list(members[1]),  # the architectures stacked
            "runs_executed_now": ran,
            "runs_reused": len(done) - ran,
            "device": ",".join(sorted(devices)),
            "threads_per_run": sorted({t.config.train.threads for t in done}),  # torch threads inside each run
            "seeds": sorted({t.seed for t in done}) if done else cfg.seed_list,  # seeds actually used
            "git_commit": git_commit(),
            "config_sha256": sha256_of(C.to_dict(cfg)),
            "datasets_sha256": data_hashes,
            "versions": versions(),
            **host_info(),
            **(manifest or {}),
            "runs": {
                r["run_id"]: {"status": r["status"], "steps_done": r["steps_done"]} for r in runs.to_dict("records")
            },
        },
    )
    outcome = finish(exp, folder)
    outcome.ran, outcome.reused = ran, len(done) - ran
    return outcome


def _load_and_hash_datasets(stage: list[RunTask], todo: list[RunTask], hashes: dict[str, str]) -> None:
    """Load each distinct dataset config of a stage once: a load error for a run still to train
    stops here, with its clear message; the arrays' sha256 goes into `hashes` (label -> digest)
    for the manifest. A dataset only finished runs used may be missing here (files only a cluster's
    workers have): it is recorded as not hashed, and its runs stay valid."""
    needed = {json.dumps(C.to_dict(t.config.data), sort_keys=True) for t in todo}
    seen: set[str] = set()
    for t in stage:
        key = json.dumps(C.to_dict(t.config.data), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        d = t.config.data
        label = d.name + (f"-n{d.num_samples}-seed{d.data_seed}" if d.name in ("mnist1d", "synthetic") else "")
        try:
            digest = dataset_sha256(load_dataset(d))
        except Exception as exc:
            if key in needed:
                raise
            digest = f"not hashed here ({type(exc).__name__})"
        if hashes.get(label, digest) != digest:
            label = f"{label}-{len(hashes)}"
        hashes[label] = digest


def _module_key(factory) -> str:
    """What an inserted-module factory contributes to a cell's key: its class and its settings
    (e.g. the knockout's noise config), so a changed setting never reuses an old cell."""
    if factory is None:
        return ""
    return f"{type(factory).__name__}:{json.dumps(C.to_dict(vars(factory)), sort_keys=True, default=repr)}"


def partial_folder(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".partial")


def run_experiment(
    exp: Experiment, cfg: ExperimentConfig, out: Path, execution: Execution = Execution(), smoke: bool = False
) -> Outcome:
    """Run into OUT.partial/ (resuming what a killed run of the same command left there) and
    rename it to OUT once everything is written. `execution` was checked when it was built."""
    out = Path(out)
    ensure_free(out)
    with folder_lock(out):  # one command per output folder
        ensure_free(out)  # again: another command may have finished it while this one started
        work = partial_folder(out)
        if (
            work.exists()
            and (work / "config.yaml").is_file()
            and (work / "config.yaml").read_text() != C.dump_yaml(cfg)
        ):
            raise NormlabError(
                f"{work} holds an interrupted run of a different config; remove it or choose another output "
                "folder ({out})"
            )
        outcome = run_cells(exp, cfg, work, execution, smoke)
        shutil.rmtree(work / "cells")  # only needed to resume; runs.csv and metrics.csv hold it all now
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        fsync_folder(out.parent)  # the finished folder's new name survives a power loss
        outcome.folder = out
        outcome.plots = [out / "plots" / p.name for p in outcome.plots]
    return outcome
