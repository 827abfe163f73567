"""Step 3 of a command: train a plan's cells, write its tables, judge and draw (`run_cells`, `finish`).

`run_experiment` trains into OUT.partial/ and renames it to OUT once everything is written;
`run_sweep` trains into a stable folder that a second call resumes. Both go through `run_cells`:

1. the experiment's derived tables (computed without training) are written;
2. each stage's runs become cells keyed by their resolved config and seed (engine/cells.py); the
   cells not already finished train (engine/executor.py: packed into batched ensembles, on a
   process pool, a shared pool or Ray), each stored as soon as it ends, so a killed command loses
   only the runs in flight; an experiment may add a stage that depends on the results so far;
3. runs.csv, metrics.csv and manifest.json are written from the cells;
4. `finish`: the experiment's `analyze` turns the tables into claims.csv, `plot` draws plots/, and
   report.md gathers them. `finish` reads the folder's CSVs alone, so judging and drawing again
   never retrains.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from .. import config as C
from ..cells import CellStore, cell_key
from ..data import load_dataset
from ..errors import NormlabError
from ..execution import Execution
from ..executor import execute, map_in_workers
from ..experiment import Experiment
from ..files import atomic_write_text, fsync_folder
from ..locks import folder_lock
from ..report import write_run_report
from ..results import (
    CLAIM_COLUMNS,
    atomic_write_csv,
    dataset_sha256,
    ensure_free,
    git_commit,
    host_info,
    load_tables,
    now,
    sha256_of,
    versions,
    write_manifest,
)
from ..runs import RunResult, RunTask
from ..train import resolve_device
from .plan import Plan

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
CRASH_LOG = "crashes.log"  # in a run folder where some run raised: each crash's traceback


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


def crashes(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(run_id, first line of its error) of every run that crashed (status `failed`), in order.
    Diverged runs are data and are not listed."""
    if "status" not in runs:
        return []
    failed = runs[runs["status"] == "failed"]
    errors = failed["error"] if "error" in failed else pd.Series("", index=failed.index)
    return [(str(r), str(e) if isinstance(e, str) else "") for r, e in zip(failed["run_id"], errors)]


def run_experiment(plan: Plan, execution: Execution = Execution()) -> Outcome:
    """Run into OUT.partial/ (resuming what a killed run of the same command left there) and
    rename it to OUT (the plan's folder) once everything is written. `execution` was checked when
    it was built."""
    out = Path(plan.folder)
    ensure_free(out)
    with folder_lock(out):  # one command per output folder
        ensure_free(out)  # again: another command may have finished it while this one started
        work = partial_folder(out)
        if (
            work.exists()
            and (work / "config.yaml").is_file()
            and (work / "config.yaml").read_text() != C.dump_yaml(plan.config)
        ):
            raise NormlabError(
                f"{work} holds an interrupted run of a different config; remove it or choose another output "
                "folder ({out})"
            )
        outcome = run_cells(plan, work, execution)
        shutil.rmtree(work / "cells")  # only needed to resume; runs.csv and metrics.csv hold it all now
        if out.exists():
            out.rmdir()
        os.replace(work, out)
        fsync_folder(out.parent)  # the finished folder's new name survives a power loss
        outcome.folder = out
        outcome.plots = [out / "plots" / p.name for p in outcome.plots]
    return outcome


def run_sweep(plan: Plan, execution: Execution = Execution()) -> Outcome:
    """Run a sweep plan's missing cells in its folder (a stable folder: running again resumes),
    analyze. A sweep file's folder holds a config.yaml whose arms are the grid points, so the
    experiment's `analyze` and `plot` read it as they read a run's folder; an ad-hoc grid's holds a
    run folder of the whole experiment per point (OUT/POINT), each judged on its own."""
    out, sweep = Path(plan.folder), plan.sweep
    with folder_lock(out):  # one command per output folder
        out.mkdir(parents=True, exist_ok=True)
        previous = out / "sweep.yaml"
        resolved = C.dump_yaml(sweep)
        if previous.is_file() and previous.read_text() != resolved:
            # a changed grid keeps the finished cells it shares with the old one (same keys)
            atomic_write_text(out / "sweep.previous.yaml", previous.read_text())
        atomic_write_text(previous, resolved)
        manifest = {"sweep": sweep.sweep, "wall_seconds_covers": "this invocation only"}
        if plan.points is None:
            return run_cells(plan, out, execution, manifest)
        # an ad-hoc grid: each point is a run folder of the experiment of its own (OUT/POINT, resumable)
        done = {
            label: run_cells(
                p, p.folder, execution, {**manifest, "sweep": f"{sweep.sweep} {label}", "grid_point": label}
            )
            for label, p in plan.points.items()
        }
        return grid_outcome(out, done)


def grid_outcome(folder: Path, points: dict[str, Outcome]) -> Outcome:
    """An ad-hoc grid's outcome: every point's claim rows and runs, each marked with its point
    (claim_id `B1-mlp @lr=0.1`, run_id `lr=0.1/mlp-s0`, arm `mlp @lr=0.1`); the files stay per point."""
    claims = pd.concat(
        [o.claims.assign(claim_id=o.claims["claim_id"] + f" @{label}") for label, o in points.items()],
        ignore_index=True,
    )
    runs = pd.concat(
        [o.runs.assign(run_id=f"{label}/" + o.runs["run_id"], arm=o.runs["arm"] + f" @{label}")
         for label, o in points.items()],
        ignore_index=True,
    )  # fmt: skip
    plots = [p for o in points.values() for p in o.plots]
    return Outcome(
        folder, claims, runs, plots, sum(o.ran for o in points.values()), sum(o.reused for o in points.values())
    )


def partial_folder(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".partial")


def run_cells(plan: Plan, folder: Path, execution: Execution, manifest: Optional[dict] = None) -> Outcome:
    """Run every cell of the plan not already finished in `folder`, then write the tables and analyze.

    Stage 1 is the plan's tasks; an experiment may add a stage that depends on the results so far
    (`followup`). Finished cells are kept in folder/cells/, so running again resumes.
    """
    exp, cfg, folder = plan.experiment, plan.config, Path(folder)
    started, t0 = now(), time.perf_counter()  # derived tables count: for some experiments they are the work
    # the commit the runs start from: the working tree can change while they train, and the manifest
    # must name the code that ran, not the code checked out when it finished
    commit = git_commit()
    store = CellStore(folder)
    atomic_write_text(folder / "config.yaml", C.dump_yaml(cfg))
    pmap = execution.pool.map if execution.pool is not None else functools.partial(map_in_workers, jobs=execution.jobs)
    for name, table in exp.derived(cfg, pmap).items():
        atomic_write_csv(folder / f"{name}.csv", table)
    done: list[RunTask] = []
    keys: dict[str, str] = {}
    ran = 0
    data_hashes: dict[str, str] = {}
    stage = plan.tasks
    while stage:
        ran += _train_stage(exp.name, stage, store, keys, data_hashes, execution)
        done += stage
        runs, _ = store.assemble([(keys[t.run_id], t.run_id, t.arm) for t in done], metrics=False)
        stage = exp.followup(cfg, runs, done)
    cells = [(keys[t.run_id], t.run_id, t.arm) for t in done]
    runs, metrics = store.assemble(cells)
    crash_log = store.crash_log(cells)
    if crash_log:  # a crash is an error to fix, not data: its traceback goes next to the results
        atomic_write_text(folder / CRASH_LOG, crash_log)
    elif (folder / CRASH_LOG).exists():  # a resumed sweep whose crashed cells now ran
        (folder / CRASH_LOG).unlink()
    atomic_write_csv(folder / "runs.csv", runs)
    atomic_write_csv(folder / "metrics.csv", metrics)
    record = {"started": started, "wall_seconds": round(time.perf_counter() - t0, 2), "ran": ran,
              "data_hashes": data_hashes, "git_commit": commit, **(manifest or {})}  # fmt: skip
    write_manifest(folder, _manifest(plan, done, runs, execution, record))
    outcome = finish(exp, folder)
    outcome.ran, outcome.reused = ran, len(done) - ran
    return outcome


def _train_stage(
    name: str,
    stage: list[RunTask],
    store: CellStore,
    keys: dict[str, str],
    hashes: dict[str, str],
    execution: Execution,
) -> int:
    """Train a stage's cells not already finished in `store` (keys: run_id -> cell key, filled in
    here); arms with identical configs share a cell, computed once. Returns how many trained."""
    hyper = _hyperparameters(stage)
    for t in stage:
        keys[t.run_id] = cell_key(t.config, t.seed, module_key(t.after_norm))
    unique, seen = [], set()
    for t in stage:
        if keys[t.run_id] not in seen:
            seen.add(keys[t.run_id])
            unique.append(t)
    finished = {t.run_id for t in unique if store.finished(keys[t.run_id])}
    todo = [t for t in unique if t.run_id not in finished]
    _load_and_hash_datasets(stage, todo, hashes)  # fail early for the runs to come; one load each
    if execution.on_start:
        execution.on_start(todo, len(stage) - len(todo))

    def save(res: RunResult) -> None:
        store.save(keys[res.run_id], res, hyper[res.run_id])
        if execution.on_result:
            execution.on_result(res)

    # every cell's run, finished or not, goes to the packer: a resumed run keeps its ensemble
    costs = execution.pool.costs.get(name) if execution.pool else None
    execute(unique, execution, save, finished=finished, costs=costs)
    return len(todo)


def _manifest(plan: Plan, done: list[RunTask], runs: pd.DataFrame, execution: Execution, record: dict) -> dict:
    """manifest.json: what ran, where, with which versions, and each run's status."""
    members = execution.members
    devices = {str(resolve_device(t.config.train.device)) for t in done}
    extra = {
        k: v for k, v in record.items() if k not in ("started", "wall_seconds", "ran", "data_hashes", "git_commit")
    }
    return {
        "experiment": plan.name,
        "smoke": plan.smoke,
        "started": record["started"],
        "finished": now(),
        "wall_seconds": record["wall_seconds"],
        "jobs": execution.jobs,
        "backend": execution.backend,
        "ensemble": members[0],  # most members per batched ensemble (1: every run trained alone)
        "ensemble_archs": list(members[1]),  # the architectures stacked
        "runs_executed_now": record["ran"],
        "runs_reused": len(done) - record["ran"],
        "device": ",".join(sorted(devices)),
        "threads_per_run": sorted({t.config.train.threads for t in done}),  # torch threads inside each run
        "seeds": sorted({t.seed for t in done}) if done else plan.config.seed_list,  # seeds actually used
        "git_commit": record["git_commit"],
        "config_sha256": sha256_of(C.to_dict(plan.config)),
        "datasets_sha256": record["data_hashes"],
        "versions": versions(),
        **host_info(),
        **extra,
        "runs": {r["run_id"]: {"status": r["status"], "steps_done": r["steps_done"]} for r in runs.to_dict("records")},
    }


def finish(exp: Experiment, folder: Path, rejudged: bool | str = False) -> Outcome:
    """Claims, plots and report of a run folder, from its CSVs alone. `rejudged`: the runs are old and
    the claims new; the manifest records which commit judged them (a string adds what else changed)."""
    if rejudged:
        manifest = json.loads((folder / "manifest.json").read_text())
        how = "claims, figures and report recomputed from this folder's CSVs (normlab judge --write)"
        manifest["judged"] = {
            "git_commit": git_commit(),
            "at": now(),
            "how": how + (f"; {rejudged}" if isinstance(rejudged, str) else ""),
        }
        write_manifest(folder, manifest)
    tables = load_tables(folder)
    claims = pd.DataFrame([c.as_dict() for c in exp.analyze(tables)], columns=CLAIM_COLUMNS)
    atomic_write_csv(folder / "claims.csv", claims)
    plots = exp.plot(tables, folder / "plots")
    write_run_report(tables, claims, plots, exp.title or exp.name)
    return Outcome(folder, claims, tables.runs, plots)


def _hyperparameters(tasks: list[RunTask]) -> dict[str, dict[str, Any]]:
    """Per run: the hyperparameters runs.csv shows (ALWAYS_SHOWN and those that vary)."""
    flat = {t.run_id: C.flatten(C.to_dict(t.config)) for t in tasks}
    keys = list(next(iter(flat.values())).keys()) if flat else []
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    shown = [k for k in keys if k in ALWAYS_SHOWN or k in varying]
    return {rid: {k: (json.dumps(f[k]) if isinstance(f[k], list) else f[k]) for k in shown} for rid, f in flat.items()}


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


def module_key(factory) -> str:
    """What an inserted-module factory contributes to a cell's key: its class and its settings
    (e.g. the knockout's noise config), so a changed setting never reuses an old cell."""
    if factory is None:
        return ""
    return f"{type(factory).__name__}:{json.dumps(C.to_dict(vars(factory)), sort_keys=True, default=repr)}"
