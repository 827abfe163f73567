"""A run folder's CSVs as the event files of TensorBoard, the tracker people already open.

One event folder per training run (OUT/<run_id>/), holding every metrics.csv series of that run as
a scalar at its step, and the run's hyperparameters (the runs.csv columns that describe its
config, its arm and seed) with its final metrics in TensorBoard's HParams tab, so that runs can be
filtered and compared there. Nothing is retrained and the run folder is not touched; a folder of
run folders (a `normlab reproduce` output) exports each under OUT/<experiment>/.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import metrics as M
from .errors import ConfigError, NormlabError
from .results import load_tables

# runs.csv columns that are outcomes, not hyperparameters
OUTCOME_COLUMNS = {"run_id", "status", "steps_done", "train_seconds", "error"}


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch ships the writer; the tensorboard package holds its protocol buffers
        raise NormlabError(
            "export to tensorboard needs the tensorboard package; install it with "
            "pip install 'normlab[export]' (or pip install tensorboard)"
        ) from None
    return SummaryWriter


def tag(row) -> str:
    """metric[/layer][/stat][/item]: a plain value is just the metric's name ('train_loss')."""
    parts = [row.metric]
    if row.layer:
        parts.append(str(row.layer))
    if row.stat and row.stat != "value":
        parts.append(str(row.stat))
    if not pd.isna(row.item):
        parts.append(f"item{int(row.item)}")
    return "/".join(parts)


def _hparam(value):
    """TensorBoard's HParams take bool, int, float or str."""
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy scalars
        return _hparam(value.item())
    return str(value)


def export_run_folder(folder: Path, out: Path) -> list[Path]:
    """Write OUT/<run_id>/ event files for every run of one run folder; returns those folders."""
    SummaryWriter = _summary_writer()
    tables = load_tables(folder)
    runs, metrics = tables.runs, tables.metrics
    finals = [c for c in runs.columns if c.startswith(M.FINAL_PREFIX)]
    hyper = [c for c in runs.columns if c not in OUTCOME_COLUMNS and c not in finals]
    written = []
    by_run = dict(tuple(metrics.groupby("run_id", sort=False))) if len(metrics) else {}
    for _, run in runs.iterrows():
        path = out / str(run["run_id"])
        writer = SummaryWriter(log_dir=str(path))
        series = by_run.get(run["run_id"])
        if series is not None:
            for row in series.itertuples(index=False):
                if not pd.isna(row.value):
                    writer.add_scalar(tag(row), float(row.value), int(row.step))
        hparams = {c: _hparam(run[c]) for c in hyper if not pd.isna(run[c])}
        hparams["status"] = str(run["status"])
        results = {f"hparam/{c}": float(run[c]) for c in finals if not pd.isna(run[c])}
        writer.add_hparams(hparams, results, run_name=".")  # into this run's own folder
        writer.close()
        written.append(path)
    return written


def export_tensorboard(folders: list[Path], out: Path, overwrite: bool = False) -> list[Path]:
    """Every run of every folder (run folders, or a reproduce output of them) into OUT. An existing
    OUT is refused unless `overwrite` (the rule `normlab report` follows); OUT appears whole or not at
    all (written as OUT.partial, then renamed over it)."""
    from .report import expand_folders

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(
            f"{out} exists; choose another output folder ({{out}}) or replace it ({{overwrite}})", key="out"
        )
    inside = [f for f in folders if Path(f).resolve() == out.resolve() or out.resolve() in Path(f).resolve().parents]
    if inside:  # --overwrite would delete what it reads
        raise ConfigError(f"{out} holds the run folder {inside[0]} it would export; choose another output folder "
                          "({out})", key="out")  # fmt: skip
    run_folders = expand_folders([Path(f) for f in folders])
    several = len(run_folders) > 1
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        written = []
        for folder in run_folders:
            target = work / folder.name if several else work
            written += [out / p.relative_to(work) for p in export_run_folder(folder, target)]
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():  # overwrite: the old export goes only once the new one is complete
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    work.rename(out)
    return written


EXPORT_TARGETS = ("tensorboard",)


@dataclass
class Exported:
    """What `export` wrote: the output folder (`tensorboard --logdir FOLDER`) and one event folder per run."""

    folder: Path
    runs: list[Path]


def export(folders: list[Path], to: str = "tensorboard", out: Path | None = None, overwrite: bool = False) -> Exported:
    """`normlab export`: the target and folders checked (one clear error each), then the export;
    OUT defaults to the first folder's name + '-tensorboard' beside it; an existing OUT is replaced
    only with `overwrite`."""
    if to not in EXPORT_TARGETS:
        raise ConfigError(f"{to!r} is not a target normlab exports to; choose {', '.join(EXPORT_TARGETS)}", key="to")
    if not folders:
        raise ConfigError("give at least one run folder to export", key="folders")
    folder = out if out is not None else folders[0].with_name(folders[0].name + "-tensorboard")
    return Exported(folder, export_tensorboard(folders, folder, overwrite))
