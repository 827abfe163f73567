"""baselines: does the engine train correctly? Compare with MNIST-1D's published test accuracies.

Logistic regression, an MLP and a 1-D CNN are trained the way the MNIST-1D repository's
reference script trains them (Adam, lr 1e-2, batch 100, 8000 steps, no weight decay) and their
final test accuracy is compared with the published table (Greydanus 2020, package README:
logistic 32%, MLP 68%, CNN 94%). A match within a few points is evidence, from numbers nobody
here produced, that data, models, optimizer and loop are right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine.claims import MEASURED, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import mean_std, t_interval

from .base import Experiment, Setting

_RULE = Rule("abs<=", "tolerance_pct_points", "points")
_STAT = "mean final test accuracy minus the published one (percentage points), over seeds"
B1_LOGISTIC = Claim(
    "B1-logistic",
    MEASURED,
    "Logistic regression on MNIST-1D reaches the published test accuracy (32%) within the tolerance",
    _STAT,
    _RULE,
)
B1_MLP = Claim(
    "B1-mlp",
    MEASURED,
    "The MLP on MNIST-1D reaches the published test accuracy (68%) within the tolerance",
    _STAT,
    _RULE,
)
B1_CNN = Claim(
    "B1-cnn",
    MEASURED,
    "The 1-D CNN on MNIST-1D reaches the published test accuracy (94%) within the tolerance",
    _STAT,
    _RULE,
)
CLAIM_OF_ARM = {"logistic": B1_LOGISTIC, "mlp": B1_MLP, "cnn": B1_CNN}


@dataclass
class BaselinesAnalysis(Analysis):
    published_test_acc_pct: dict[str, float] = param(
        default_factory=lambda: {"logistic": 32.0, "mlp": 68.0, "cnn": 94.0},
        help="arm -> published test accuracy in percent (arms: logistic, mlp, cnn)",
    )
    tolerance_pct_points: float = param(3.0, min=0.0, help="allowed |measured - published|")


@dataclass
class BaselinesConfig(ExperimentConfig):
    analysis: BaselinesAnalysis = field(default_factory=BaselinesAnalysis)


def accuracy_gap(runs, arm: str, published: float) -> Estimate:
    """Mean over seeds of (test accuracy - published), Student-t CI; unfinished runs are missing."""
    sel = runs[runs["arm"] == arm]
    finished = sel[sel["status"] == "ok"]
    acc = 100.0 * finished["final_test_acc"].astype(float)
    diffs = (acc - published).tolist()
    mean_acc, sd = mean_std(acc)
    return Estimate(
        mean_acc - published,
        t_interval(diffs),
        len(finished),
        [],
        f"measured {mean_acc:.1f}% (sd {sd:.1f}) vs published {published:.0f}%; "
        f"{len(finished)} of {len(sel)} runs finished",
    )


def b1(s: Setting, arm: str) -> Estimate | None:
    """The arm's mean test accuracy against its published figure (no row without a published one)."""
    published = s.a.published_test_acc_pct.get(arm)
    if published is None:
        return None
    if not (s.tables.runs["arm"] == arm).any():
        return Estimate.missing(f"no runs of arm {arm!r}")
    return accuracy_gap(s.tables.runs, arm, published)


class Baselines(Experiment):
    name = "baselines"
    title = "Baselines: MNIST-1D test accuracy against the published figures"
    claims = (B1_LOGISTIC, B1_MLP, B1_CNN)
    config_class = BaselinesConfig

    estimators = {claim: partial(b1, arm=arm) for arm, claim in CLAIM_OF_ARM.items()}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        arms = list(tables.runs["arm"].drop_duplicates())
        col = P.colors(arms)
        fig, axes = P.figure(ncols=2)
        ax = axes[0, 0]
        for arm in arms:
            curve = tables.curve(M.TEST_ACC)
            curve = curve[curve["arm"] == arm].assign(value=lambda d: 100 * d["value"])
            P.mean_band(ax, curve, arm, col[arm])
            pub = cfg.analysis.published_test_acc_pct.get(arm)
            if pub is not None:
                ax.axhline(pub, color=col[arm], ls=":", lw=1)
        ax.set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy (dotted: published)")
        P.legend(ax, loc="lower right")
        ax = axes[0, 1]
        for arm in arms:
            curve = tables.curve(M.TRAIN_LOSS)
            P.mean_band(ax, curve[curve["arm"] == arm], arm, col[arm])
        ax.set(xlabel="step", ylabel="train loss (full set, eval mode)", yscale="log", title="Training loss")
        P.legend(ax)
        return [P.save(fig, out / "baselines.png")]
