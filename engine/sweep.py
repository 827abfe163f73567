"""Sweep files: a grid of run-config values over one experiment, expanded into arms.

The cells those arms run in, and how a killed sweep resumes, are in cells.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .config import param


@dataclass
class SweepConfig:
    sweep: str = param(help="name of the sweep (its YAML is configs/sweeps/NAME.yaml)")
    experiment: str = param(help="the experiment whose runs and analysis the cells use")
    description: str = param("")
    base: str = param("", help="base experiment config ('' = configs/EXPERIMENT.yaml)")
    overrides: dict[str, Any] = param(default_factory=dict, help="dotted overrides of the base config")
    axes: dict[str, list[Any]] = param(
        default_factory=dict, help="dotted key under `run` -> values; the grid is their product"
    )
    seeds: int = param(2, min=1)
    seed_offset: int = param(0, min=0)
    smoke: dict[str, Any] = param(default_factory=dict, help="overrides of this sweep config applied by --smoke")


def _short(key: str) -> str:
    return {"optim.lr": "lr", "optim.weight_decay": "wd"}.get(key, key.split(".")[-1])


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand(axes: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Grid points as arm name -> dotted overrides, e.g. 'lr=0.1,wd=0.001' -> {...}."""
    keys = list(axes)
    out = {}
    for values in itertools.product(*(axes[k] for k in keys)):
        label = ",".join(f"{_short(k)}={_fmt(v)}" for k, v in zip(keys, values))
        out[label] = dict(zip(keys, values))
    return out


__all__ = ["SweepConfig", "expand"]
