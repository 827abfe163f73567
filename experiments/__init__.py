"""Experiments and their registry. Adding one: a module, a YAML in configs/, a line here, tests.

Each module implements the contract of normlab.engine.experiment; the runner (normlab.engine.runner)
is handed this registry and does the rest.
"""

from __future__ import annotations

from normlab.engine.experiment import Experiment

from .adaptive_gotchas import AdaptiveGotchas
from .baselines import Baselines
from .bn_placement import BNPlacement
from .bn_paths import BNPaths
from .bn_benefits import BNBenefits
from .eq9_speed import Eq9Speed
from .chapter_checks import ChapterChecks
from .curvature import Curvature
from .identities import Identities
from .fisher import Fisher
from .exp_lr import ExpLR
from .deep_linear import DeepLinear
from .kfac import KFACExperiment
from .lr_sensitivity import LRSensitivity
from .decoupled_wd import DecoupledWD
from .second_moments import SecondMoments
from .eff_lr import EffLR
from .optimizer_tuning import OptimizerTuning
from .wd_fixed_point import WDFixedPoint
from .knockout import Knockout

REGISTRY: dict[str, Experiment] = {
    exp.name: exp
    for exp in [
        Baselines(),
        Knockout(),
        BNPlacement(),
        BNPaths(),
        BNBenefits(),
        Eq9Speed(),
        EffLR(),
        WDFixedPoint(),
        OptimizerTuning(),
        AdaptiveGotchas(),
        Curvature(),
        Identities(),
        ChapterChecks(),
        Fisher(),
        ExpLR(),
        DeepLinear(),
        KFACExperiment(),
        LRSensitivity(),
        DecoupledWD(),
        SecondMoments(),
    ]
}

__all__ = ["REGISTRY"]
