"""baselines: does the engine train correctly? Compare with MNIST-1D's published test accuracies.

Logistic regression, an MLP and a 1-D CNN are trained the way the MNIST-1D repository's
reference script trains them (Adam, lr 1e-2, batch 100, 8000 steps, no weight decay) and their
final test accuracy is compared with the published table (Greydanus 2020, package README:
logistic 32%, MLP 68%, CNN 94%). A match within a few points is evidence, from numbers nobody
here produced, that data, models, optimizer and loop are right.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import ClaimRow, bootstrap_ci, judge, mean_std

from .base import Experiment


@dataclass
class BaselinesAnalysis(Analysis):
    published_test_acc_pct: dict[str, float] = param(
        default_factory=lambda: {"logistic": 32.0, "mlp": 68.0, "cnn": 94.0},
        help="arm -> published test accuracy in percent")
    tolerance_pct_points: float = param(3.0, min=0.0, help="allowed |measured - published|")
    min_seeds: int = param(3, min=1, help="fewer finished seeds than this gives 'inconclusive'")


@dataclass
class BaselinesConfig(ExperimentConfig):
    analysis: BaselinesAnalysis = field(default_factory=BaselinesAnalysis)


class Baselines(Experiment):
    name = "baselines"
    title = "Baselines: MNIST-1D test accuracy against the published figures"
    claims = ("B1",)
    config_class = BaselinesConfig

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        runs = tables.runs
        rows = []
        for arm, published in a.published_test_acc_pct.items():
            sel = runs[runs["arm"] == arm]
            if sel.empty:
                continue
            finished = sel[sel["status"] == "ok"]
            acc = 100.0 * finished["final_test_acc"].astype(float)
            diffs = (acc - published).tolist()
            mean_acc, sd = mean_std(acc)
            diff = mean_acc - published
            ci = bootstrap_ci(diffs)
            detail = (f"measured {mean_acc:.1f}% (sd {sd:.1f}) vs published {published:.0f}%; "
                      f"{len(finished)} of {len(sel)} runs finished")
            rows.append(ClaimRow(
                claim_id=f"B1-{arm}",
                statement=f"{arm} on MNIST-1D reaches the published test accuracy ({published:.0f}%) "
                          f"within {a.tolerance_pct_points:g} points",
                statistic="mean final test accuracy minus published (percentage points)",
                value=diff, threshold=f"|value| <= {a.tolerance_pct_points:g}",
                ci_low=ci[0], ci_high=ci[1], n=len(finished),
                verdict=judge(diff, ci, lambda v: abs(v) <= a.tolerance_pct_points, len(finished),
                              a.min_seeds),
                detail=detail))
        return rows

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        arms = list(tables.runs["arm"].drop_duplicates())
        col = P.colors(arms)
        fig, axes = P.figure(ncols=2)
        ax = axes[0, 0]
        for arm in arms:
            curve = tables.curve("test_acc")
            curve = curve[curve["arm"] == arm].assign(value=lambda d: 100 * d["value"])
            P.mean_band(ax, curve, arm, col[arm])
            pub = cfg.analysis.published_test_acc_pct.get(arm)
            if pub is not None:
                ax.axhline(pub, color=col[arm], ls=":", lw=1)
        ax.set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy (dotted: published)")
        ax.legend(loc="lower right")
        ax = axes[0, 1]
        for arm in arms:
            curve = tables.curve("train_loss")
            P.mean_band(ax, curve[curve["arm"] == arm], arm, col[arm])
        ax.set(xlabel="step", ylabel="train loss (full set, eval mode)", yscale="log",
               title="Training loss")
        ax.legend()
        return [P.save(fig, out / "baselines.png")]
