"""Statistics over seeds: means, spreads, percentile-bootstrap CIs and a verdict helper.

Bootstrap resampling uses its own seeded numpy Generator, so a claim row is a pure function of
the CSV it is computed from.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
N_BOOT = 4000


def _clean(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = _clean(values)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def bootstrap_ci(values: Sequence[float], stat: Callable[[np.ndarray], float] = np.mean,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `stat` over the given values (one value per seed)."""
    a = _clean(values)
    if len(a) == 0:
        return float("nan"), float("nan")
    if len(a) == 1:
        return float(a[0]), float(a[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(N_BOOT, len(a)))
    boots = np.apply_along_axis(stat, 1, a[idx]) if stat is not np.mean else a[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_ci_fn(groups: Sequence[Sequence[float]], fn: Callable[..., float],
                    level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """CI of fn(mean_1, ..., mean_k), resampling seeds within each group independently."""
    arrays = [_clean(g) for g in groups]
    if any(len(a) == 0 for a in arrays):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = [a[rng.integers(0, len(a), size=(N_BOOT, len(a)))].mean(axis=1) for a in arrays]
    boots = np.array([fn(*vals) for vals in zip(*means)], dtype=float)
    boots = boots[np.isfinite(boots)]
    if not len(boots):
        return float("nan"), float("nan")
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def judge(value: float, ci: tuple[float, float], ok: Callable[[float], bool], n: int,
          min_n: int = 2) -> str:
    """Supported when the estimate and its whole CI satisfy `ok`; not supported when none of
    them do; inconclusive when the CI straddles the threshold, n is too small or data is missing."""
    lo, hi = ci
    if n < min_n or not all(np.isfinite([value, lo, hi])):
        return INCONCLUSIVE
    checks = [ok(value), ok(lo), ok(hi)]
    if all(checks):
        return SUPPORTED
    if not any(checks):
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class ClaimRow:
    claim_id: str
    statement: str
    statistic: str
    value: float
    threshold: str
    ci_low: float
    ci_high: float
    n: int
    verdict: str
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)
