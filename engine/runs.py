"""The types every part of a run shares: what to run, what came back, and one measured value.

A `RunTask` goes to a worker (so it must pickle: its `after_norm` factory is a top-level class
instance); a `RunResult` comes back with every `Row` the run measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

from .models import AfterNorm
from .spec import RunConfig

Progress = Optional[Callable[[str, int, int], None]]  # (run_id, steps_done, total)


class Row(NamedTuple):
    """One measured value; metrics.csv adds run_id, arm and seed."""

    step: int  # updates already applied when it was measured
    metric: str
    layer: str  # "" for whole-network values
    stat: str  # "value", a summary over units (mean, median, ...) or "unit" (one row per unit)
    item: Optional[int]  # which one, where a metric has several: a unit's index (stat "unit"), an eigenvalue's rank
    value: float


@dataclass
class RunTask:
    run_id: str
    arm: str
    seed: int
    config: RunConfig
    after_norm: AfterNorm = None  # must be picklable (a top-level class instance) for pools


@dataclass
class RunResult:
    run_id: str
    arm: str
    seed: int
    status: str  # "ok", "diverged" or "failed"
    steps_done: int
    train_seconds: float
    final: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    error: str = ""
