"""The chapter checks' configuration: the instances (problem) and the tolerances (analysis)."""

from __future__ import annotations

from dataclasses import dataclass, field

from normlab.engine.config import param
from normlab.engine.spec import Analysis, ExperimentConfig


@dataclass
class ChecksProblem:
    dims: list[int] = param(
        default_factory=lambda: [10, 100, 400], help="feature dimensions of the §3 and §4.2 instances"
    )
    mean_entry: float = param(0.1, help="every entry of the mean m in the §3 instances (the chapter's 0.1)")
    correlation: float = param(0.5, min=0.0, max=0.95, help="X30-standardize: Toeplitz correlation rho^|i-j|")
    examples: int = param(10, min=4, max=14, help="X20-batch-ef: N examples; every batch of each size is enumerated")
    depths: list[int] = param(default_factory=lambda: [2, 3, 4], help="X50-schatten: depths K")


@dataclass
class ChecksAnalysis(Analysis):
    identity_tol: float = param(1e-9, min=0.0, help="agreement rows: largest relative error allowed (float64)")
    optimum_tol: float = param(1e-7, min=0.0, help="X50-schatten: the minimizer's relative error allowed")
    differs_min: float = param(1e-3, min=0.0, help="difference rows: smallest relative difference counted")
    rank_min: float = param(1.0, min=0.0, help="X20-rank: the EMA's rank must exceed this")
    drift_min: float = param(0.0, help="X20-batch-drift: each larger batch must move further than this")
    uncentered_min: float = param(0.1, min=0.0, help="X42-before: smallest mean/std left in every unit")
    remains_min: float = param(2.0, min=1.0, help="X30-standardize: condition number left after standardizing")
    diag_keeps_min: float = param(0.9, min=0.0, help="X31-diag: share of the outlier the diagonal leaves")


@dataclass
class ChecksConfig(ExperimentConfig):
    problem: ChecksProblem = field(default_factory=ChecksProblem)
    analysis: ChecksAnalysis = field(default_factory=ChecksAnalysis)
