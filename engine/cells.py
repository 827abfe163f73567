"""The resume store every run uses: one cell per (run config, seed), kept in `cells/`.

Each cell is keyed by a hash of its fully resolved run config, its seed and any inserted module's
settings. A finished cell is two files: `<key>.csv` (its metric rows) and then `<key>.json` (its
status and final metrics), each written to a temporary name and renamed. A cell counts as done only
once its JSON exists, so a run or sweep killed at any moment loses at most the runs in flight and
never records one twice. Cells that finished (`ok` or `diverged`) are reused when the same command
runs again; `failed` ones are run again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import faults
from .config import to_dict
from .files import atomic_write_text
from .results import LEGACY_METRIC_COLUMNS, METRIC_COLUMNS, atomic_write_csv, runs_frame
from .runs import RunResult
from .spec import RunConfig

DONE = ("ok", "diverged")
# The fields of a run config that every cell key has held since keys were first fixed. Any field or
# section added since (curvature, kfac, plugins and probes.jacobian_examples so far, and whatever
# comes next) is left out of the key while at its default, so the runs that do not use it keep the
# keys, and the cells, they had: a new field needs no entry here. A section added whole (curvature)
# enters the key whole once any of its fields is set, as it always has.
KEYED_FIELDS = frozenset(
    [f"data.{k}" for k in ("name", "num_samples", "train_split", "data_seed", "val_size", "max_train", "max_test",
                           "root", "download", "synthetic_kind", "input_shape", "num_classes", "noise", "image_size")]
    + [f"model.{k}" for k in ("arch", "width", "depth", "residual", "channels", "kernel_sizes", "strides",
                              "pool_every", "activation", "norm", "norm_position", "norm_affine", "norm_eps", "bias",
                              "init", "norm_init_scale")]
    + [f"optim.{k}" for k in ("name", "lr", "momentum", "nesterov", "beta1", "beta2", "eps", "weight_decay",
                              "wd_mode", "wd_params", "schedule", "warmup_steps", "step_every", "step_gamma",
                              "renormalize")]
    + [f"train.{k}" for k in ("steps", "batch_size", "eval_every", "eval_batch_size", "threads", "device")]
    + [f"probes.{k}" for k in ("every", "weights", "inputs", "preacts", "per_unit", "fixed_batch", "unit_window",
                               "summaries")]
)  # fmt: skip


# Fields added to a section after that section entered the keys whole: left out while at their
# default, so the runs that set the section keep their keys.
LATER_IN_SECTIONS = frozenset(["curvature.eq9_steps"])


def keyed(cfg: dict, default: dict, prefix: str = "") -> dict:
    """`cfg` (a run config as a dict) without the fields that came after KEYED_FIELDS and are at
    their defaults (`default`: the same dict for the default config)."""
    out = {}
    for name, value in cfg.items():
        path = f"{prefix}{name}"
        if path in KEYED_FIELDS:
            out[name] = value
        elif isinstance(value, dict) and any(f.startswith(f"{path}.") for f in KEYED_FIELDS):
            out[name] = keyed(value, default.get(name, {}), f"{path}.")  # a section keyed from the start
        elif name not in default or value != default[name]:
            if isinstance(value, dict):  # a whole newer section, less what joined it later at its default
                d = default.get(name, {})
                value = {k: v for k, v in value.items() if not (f"{path}.{k}" in LATER_IN_SECTIONS and v == d.get(k))}
            out[name] = value  # a newer field (or whole section) that this run sets
    return out


def cell_key(run: RunConfig, seed: int, extra: str = "") -> str:
    cfg = keyed(to_dict(run), to_dict(RunConfig()))
    blob = json.dumps({"run": cfg, "seed": seed, "extra": extra}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass
class CellStore:
    folder: Path
    _done: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cells = self.folder / "cells"
        self.cells.mkdir(parents=True, exist_ok=True)
        for tmp in self.cells.glob(".*.tmp"):  # left by a kill in the middle of a write
            tmp.unlink()
        for path in self.cells.glob("*.json"):
            row = json.loads(path.read_text())
            if (self.cells / f"{path.stem}.csv").is_file():
                self._done[path.stem] = row

    def finished(self, key: str) -> bool:
        row = self._done.get(key)
        return row is not None and row["status"] in DONE

    def save(self, key: str, result: RunResult, hyper: dict[str, Any]) -> None:
        df = pd.DataFrame(result.rows, columns=["step", "metric", "layer", "stat", "item", "value"])
        df["item"] = df["item"].astype("Int64")
        atomic_write_csv(self.cells / f"{key}.csv", df, fault_point="cell_write")
        row = runs_frame([result], {result.run_id: hyper}).iloc[0].to_dict()
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}  # numpy -> JSON
        if result.error:  # the whole traceback, for the folder's crashes.log (runs.csv keeps its first line)
            atomic_write_text(self.cells / f"{key}.err", result.error)
        atomic_write_text(self.cells / f"{key}.json", json.dumps(row) + "\n")
        self._done[key] = row
        if faults.hit("cell_saved"):  # tests only: a kill -9 between two runs
            faults.die()

    def crash_log(self, cells: list[tuple[str, str, str]]) -> str:
        """The tracebacks of the given (key, run_id, arm) cells that crashed, one section each."""
        out = []
        for key, run_id, arm in cells:
            row = self._done.get(key)
            if row is not None and row["status"] == "failed":
                path = self.cells / f"{key}.err"
                text = path.read_text() if path.is_file() else str(row.get("error", ""))
                out.append(f"== {run_id} (arm {arm}, seed {row['seed']})\n{text.rstrip()}\n")
        return "\n".join(out)

    def assemble(
        self, cells: list[tuple[str, str, str]], metrics: bool = True
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """runs.csv and (unless metrics=False) metrics.csv of the given (key, run_id, arm) cells, in
        that order. Two arms with identical configs share one cell (one computation); each gets
        its own rows, labelled with its own run_id and arm."""
        runs, frames = [], []
        for key, run_id, arm in cells:
            row = {**self._done[key], "run_id": run_id, "arm": arm}
            runs.append(row)
            if not metrics:
                continue
            df = pd.read_csv(
                self.cells / f"{key}.csv",
                dtype={"layer": str, "stat": str},
                keep_default_na=False,
                na_values={"value": ["nan", "NaN", ""]},
            ).rename(columns=LEGACY_METRIC_COLUMNS)  # cells written before the rename
            df.insert(0, "seed", row["seed"])
            df.insert(0, "arm", row["arm"])
            df.insert(0, "run_id", row["run_id"])
            frames.append(df)
        runs_df = (
            pd.DataFrame(runs) if runs else pd.DataFrame(columns=["run_id", "arm", "seed", "status", "steps_done"])
        )
        if not metrics:
            return runs_df, None
        m = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
        m["item"] = pd.to_numeric(m["item"], errors="coerce").astype("Int64")
        return runs_df, m[METRIC_COLUMNS]


__all__ = ["DONE", "CellStore", "cell_key"]
