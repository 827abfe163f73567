"""bn_placement (K2): BN before or after the activation?

Grosse ch. 5, §4.2. Only BN *after* the ReLU centers the inputs of the next linear layer; BN
before it leaves them positive (a ReLU's output always is). If BN helped by centering the
previous layer's activations (the "ICS removal" hypothesis), "after" should train better. Ioffe
and Szegedy placed it before, and the chapter notes that this is what works in practice.

Arms: `none`, `before`, `after` with plain SGD, and the same three with Adam (`*_adam`) as a
robustness check. Measured: the training loss, and for every linear layer the mean vector m of
its inputs relative to their variance, ||m||^2 / mean_j var_j (the scale of the outlier
eigenvalues that uncentered inputs add to the curvature, §3 and §4.2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import INCONCLUSIVE, ClaimRow, bootstrap_ci_fn, judge, mean_std

from .base import Experiment
from .common import by_arm, final_metric, final_train_loss, status_note


@dataclass
class PlacementAnalysis(Analysis):
    final_fraction: float = param(0.1, min=0.01, max=1.0, help="average the training loss over this last fraction of steps")
    tolerance: float = param(0.10, min=0.0, help="supported if L_before <= (1 + tolerance) * L_after")
    centered_max: float = param(0.1, min=0.0, help="'after' counts as centered if ||m||^2/var is below this")
    uncentered_min: float = param(1.0, min=0.0, help="'before' counts as uncentered if ||m||^2/var is above this")
    groups: dict[str, str] = param(default_factory=lambda: {"": "sgd", "_adam": "adam"},
                                   help="arm-name suffix -> optimizer label; one claim row each")
    min_seeds: int = param(3, min=1)


@dataclass
class PlacementConfig(ExperimentConfig):
    analysis: PlacementAnalysis = field(default_factory=PlacementAnalysis)


def centering(tables: Tables) -> pd.DataFrame:
    """Per run and layer: mean over probes of ||m||^2 / mean_j var_j of the layer's inputs.
    The first layer (its input is the data, the same for every arm) is left out."""
    m = tables.metrics
    key = ["run_id", "arm", "seed", "layer", "step"]
    msq = m[m["metric"] == "input_mean_sq_norm"].set_index(key)["value"]
    var = m[m["metric"] == "input_var_mean"].set_index(key)["value"]
    ratio = (msq / var.reindex(msq.index)).rename("value").reset_index()
    ratio = ratio[ratio["layer"] != "layer1"]
    return ratio.groupby(["run_id", "arm", "seed", "layer"], sort=False)["value"].mean().reset_index()


class BNPlacement(Experiment):
    name = "bn_placement"
    title = "K2: batch norm before vs after the activation"
    claims = ("K2",)
    config_class = PlacementConfig

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        a = self.typed_config(tables).analysis
        loss = by_arm(final_train_loss(tables, a.final_fraction))
        test = by_arm(final_metric(tables, "test_acc"))
        cent = centering(tables)
        cent_arm = cent.groupby("arm")["value"].median().to_dict()
        rows = []
        for suffix, label in a.groups.items():
            before, after, none = f"before{suffix}", f"after{suffix}", f"none{suffix}"
            if before not in loss or after not in loss:
                continue
            ratio = lambda b, f: b / f  # noqa: E731
            mb, ma = mean_std(loss[before])[0], mean_std(loss[after])[0]
            value = ratio(mb, ma)
            ci = bootstrap_ci_fn([loss[before], loss[after]], ratio)
            n = min(int(np.isfinite(loss[arm]).sum()) for arm in (before, after))
            verdict = judge(value, ci, lambda r: r <= 1.0 + a.tolerance, n, a.min_seeds)
            c_before, c_after = cent_arm.get(before, np.nan), cent_arm.get(after, np.nan)
            centered_ok = bool(c_after < a.centered_max and c_before > a.uncentered_min)
            if not centered_ok:
                verdict = INCONCLUSIVE
            acc = {arm: 100 * mean_std(test[arm])[0] for arm in (none, before, after) if arm in test}
            detail = (f"{label}: final training loss before {mb:.4g}, after {ma:.4g}"
                      + (f", none {mean_std(loss[none])[0]:.4g}" if none in loss else "")
                      + "; test acc " + ", ".join(f"{k} {v:.1f}%" for k, v in acc.items())
                      + f"; centering ||m||^2/var (median over layers 2.., seeds): before {c_before:.3g}, "
                        f"after {c_after:.3g} ({'as expected' if centered_ok else 'NOT as expected'}: "
                        f"after < {a.centered_max:g}, before > {a.uncentered_min:g})")
            note = status_note(tables, [none, before, after])
            rows.append(ClaimRow(
                claim_id="K2" if not suffix else f"K2{suffix.replace('_', '-')}",
                statement=f"With {label}, BN before the ReLU trains at least as well as BN after it, although "
                          "only 'after' centers the next layer's inputs: evidence against the ICS-removal "
                          "hypothesis (Grosse ch. 5, §4.2)",
                statistic="L_before / L_after, training loss (train mode) over the last "
                          f"{a.final_fraction:.0%} of steps",
                value=value, threshold=f"<= {1 + a.tolerance:g}, with the centering order confirmed",
                ci_low=ci[0], ci_high=ci[1], n=n, verdict=verdict,
                detail=detail + (f"; {note}" if note else "")))
        return rows

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        a = self.typed_config(tables).analysis
        arms_present = set(tables.runs["arm"])
        groups = [(s, lbl) for s, lbl in a.groups.items() if f"before{s}" in arms_present]
        col = P.colors(["none", "before", "after"])
        fig, axes = P.figure(ncols=len(groups), nrows=2, width=4.0, height=3.0)
        cent = centering(tables)
        for j, (suffix, label) in enumerate(groups):
            ax = axes[0, j]
            for place in ("none", "before", "after"):
                c = tables.curve("batch_loss_avg")
                P.mean_band(ax, c[(c["arm"] == place + suffix) & (c["step"] > 0)], place, col[place])
            ax.set(yscale="log", xlabel="step", ylabel="training loss (train mode)", title=f"{label}: training loss")
            ax.legend()
            ax = axes[1, j]
            for place in ("none", "before", "after"):
                c = cent[cent["arm"] == place + suffix]
                g = c.groupby("layer", sort=False)["value"].agg(["mean", "min", "max"])
                if g.empty:
                    continue
                x = np.arange(len(g))
                ax.plot(x, g["mean"].clip(lower=1e-6), "o-", color=col[place], label=place)
                ax.fill_between(x, g["min"].clip(lower=1e-6), g["max"].clip(lower=1e-6), color=col[place], alpha=0.15, lw=0)
                ax.set_xticks(x, list(g.index))
            ax.set(yscale="log", ylabel="||m||^2 / mean var of input (floor 1e-6)", title=f"{label}: centering of inputs")
            ax.legend()
        return [P.save(fig, out / "bn_placement.png")]
