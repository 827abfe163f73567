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
from normlab.engine.spec import Analysis, DataConfig, ExperimentConfig
from normlab.engine.stats import mean_std, stages_of, t_interval

from normlab.engine.experiment import Experiment, Setting, arm_configs

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
    looks: list[int] = param(
        default_factory=list,
        help="seed counts at which the B1 rows were looked at before seeds were added; the rows are then "
        "judged by the stages' t tests combined by the inverse normal method",
    )


@dataclass
class BaselinesConfig(ExperimentConfig):
    analysis: BaselinesAnalysis = field(default_factory=BaselinesAnalysis)


def accuracy_gap(runs, arm: str, published: float, looks: list[int] = ()) -> Estimate:
    """Mean over seeds of (test accuracy - published), Student-t CI; unfinished runs are missing. With
    `looks`, the seeds in order are cut into the stages the row was judged in."""
    sel = runs[runs["arm"] == arm].sort_values("seed")
    finished = sel[sel["status"] == "ok"]
    acc = 100.0 * finished[M.final(M.TEST_ACC)].astype(float)
    diffs = (acc - published).tolist()
    mean_acc, sd = mean_std(acc)
    return Estimate(
        mean_acc - published,
        t_interval(diffs),
        len(finished),
        [],
        f"measured {mean_acc:.1f}% (sd {sd:.1f}) vs published {published:.0f}%; "
        f"{len(finished)} of {len(sel)} runs finished",
        stages=stages_of(diffs, looks),
    )


# The data the published accuracies were measured on: MNIST-1D as its package generates it by
# default (4000 train / 1000 test, seed 42), whole. Any other data makes the comparison meaningless.
PUBLISHED_DATA = {"name": "mnist1d", "num_samples": 5000, "train_split": 0.8, "data_seed": 42}
WHOLE = {"val_size": 0, "max_train": 0, "max_test": 0}


def data_differences(data: DataConfig) -> list[str]:
    """How an arm's data differs from the published MNIST-1D ([] = it is that data)."""
    want = PUBLISHED_DATA if data.name == "mnist1d" else {"name": "mnist1d"}
    diffs = [f"data.{k}={getattr(data, k)!r}" for k, v in want.items() if getattr(data, k) != v]
    if data.name == "mnist1d":
        diffs += [f"data.{k}={getattr(data, k)}" for k, v in WHOLE.items() if getattr(data, k) != v]
    return diffs


def b1(s: Setting, arm: str) -> Estimate | None:
    """The arm's mean test accuracy against its published figure (no row without a published one;
    `not judged` in a folder without that arm, as a sweep file's, and on data other than the
    published MNIST-1D)."""
    published = s.a.published_test_acc_pct.get(arm)
    if published is None:
        return None
    arms = arm_configs(s.cfg)
    if arm not in arms:  # a sweep file's grid points replace the arms, or a config of the user's own
        return Estimate.inapplicable(
            f"this folder has no {arm} arm (its arms: {', '.join(list(arms)[:4])}"
            f"{', ...' if len(arms) > 4 else ''}); the published {published:g}% is for that architecture"
        )
    if diffs := data_differences(arms[arm].data):
        return Estimate.inapplicable(
            f"the published {published:g}% is for MNIST-1D as generated by default (4000 train / 1000 test, "
            f"seed 42); this arm trained on {', '.join(diffs)}"
        )
    if not (s.tables.runs["arm"] == arm).any():
        return Estimate.missing(f"no runs of arm {arm!r}")
    return accuracy_gap(s.tables.runs, arm, published, s.a.looks)


class Baselines(Experiment):
    name = "baselines"
    title = "Baselines: MNIST-1D test accuracy against the published figures"
    short_names = {"B1": "published MNIST-1D accuracies"}
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
