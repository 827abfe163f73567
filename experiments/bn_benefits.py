"""bn_benefits (N41): batch norm's side benefits, separated (Grosse ch. 5, §4.1).

The chapter lists what BN was meant to do besides conditioning: keep ReLUs from dying (BN before the
ReLU makes every unit's pre-activation zero on average over the batch), keep training stable at larger
learning rates, and regularize through the noise of its batch statistics (which weight norm and layer
norm, computed per example, do not have). Each is measured here on the knockout's 6-layer MLP with
plain SGD, in one shared learning-rate grid:

* the grid arms (`grid_arms`: no normalizer, BN before the ReLU, BN after it, layer norm; BN and layer
  norm with their gain and shift, as in practice) run at every learning rate of `lr_factors` times the
  configured one. From them: the largest learning rate at which a run still trains (stability), the
  share of dead units on a fixed batch (a probe, `probes.dead_units`), and the steps to a stated
  training loss at each arm's best rate chosen on the other half of the seeds (the speed the chapter
  starts from, §1);
* the ghost arms (BN before the ReLU with its statistics over ghost batches of 8 or 32 examples,
  `model.norm_ghost`) run at one learning rate, where the grid's BN-before arm (statistics over the
  whole batch of 128) and layer norm also ran: the train-test gap against the ghost size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine import stats as S
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.experiment import Experiment, arm_configs
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import paired_t, t_interval

from .bn_paths import PathsSetting, crossfit_picks, speed
from .bn_placement import GridArm, grid_arms, grid_tasks, mean_log_loss
from .common import final_metric, final_train_loss, needs_probes, status_note

NONE, BEFORE, AFTER, LAYER = "none", "before", "after", "layer"
ROLES = {  # grid arm -> (model.norm, model.norm_position) it must have
    NONE: ("none", None),
    BEFORE: ("batch", "before"),
    AFTER: ("batch", "after"),
    LAYER: ("layer", None),
}

_STABLE = (
    "per seed, the largest learning rate of the grid at which the {arm} arm trains (its mean training loss over "
    "the last quarter of its steps below trains_below x its first batch's loss; below the grid's lowest rate when it "
    "trains at none) over no normalizer's; geometric mean over seeds, t on the log ratio (an exact sign test when "
    "every seed gives one value)"
)
N41_STABLE = Claim(
    "N41-stable",
    MEASURED,
    "BN before the ReLU trains at larger learning rates than the same network without it: its largest learning "
    "rate that still trains exceeds no normalizer's (Grosse ch. 5, §4.1)",
    _STABLE.format(arm="BN-before"),
    Rule(">", "stable_ratio_min"),
)
N41_STABLE_AFTER = Claim(
    "N41-stable-after", DESCRIPTIVE, "The same for BN after the ReLU", _STABLE.format(arm="BN-after"), Rule("none")
)
N41_STABLE_LAYER = Claim(
    "N41-stable-layer", DESCRIPTIVE, "The same for layer norm", _STABLE.format(arm="layer-norm"), Rule("none")
)
_DEAD = (
    "per seed, the share of hidden units whose ReLU input is <= 0 on every one of the fixed batch's examples at the "
    "last probe, averaged over the hidden layers and the learning rates dead_lrs"
)
N41_DEAD = Claim(
    "N41-dead",
    MEASURED,
    "BN before the ReLU keeps units from dying: without a normalizer more than dead_gap_min more of the hidden "
    "units are dead than with BN before the ReLU, at the same learning rates (Grosse ch. 5, §4.1)",
    "paired by seed: no normalizer's dead share minus BN-before's, " + _DEAD[len("per seed, ") :] + "; t interval",
    Rule(">", "dead_gap_min"),
)
_DEAD_ROW = _DEAD + "; mean and t interval"
N41_DEAD_ARMS = {  # the arm -> its row (ids written out: one literal definition each)
    NONE: Claim("N41-dead-none", DESCRIPTIVE, "The dead share of no normalizer", _DEAD_ROW, Rule("none")),
    BEFORE: Claim("N41-dead-before", DESCRIPTIVE, "The dead share of BN before the ReLU", _DEAD_ROW, Rule("none")),
    AFTER: Claim("N41-dead-after", DESCRIPTIVE, "The dead share of BN after the ReLU", _DEAD_ROW, Rule("none")),
    LAYER: Claim("N41-dead-layer", DESCRIPTIVE, "The dead share of layer norm", _DEAD_ROW, Rule("none")),
}
N41_FASTER = Claim(
    "N41-faster",
    MEASURED,
    "BN makes SGD train a deep network faster: without it the network needs more than faster_min times the steps "
    "BN before the ReLU needs to reach the target training loss, each at its own tuned learning rate (the chapter's "
    "starting point, §1)",
    "steps to the target training loss, no normalizer / BN-before, each at its best LR of the grid cross-fitted "
    "over seed halves (a run that never reaches it counts the horizon, a lower bound); geometric mean over seeds, "
    "paired t on the log ratio",
    Rule(">", "faster_min"),
)
_GAP = "final test loss minus final training loss (the whole training set, eval mode)"
N41_GHOST = Claim(
    "N41-ghost",
    MEASURED,
    "BN's batch noise regularizes: the train-test gap shrinks as the batch its statistics are taken over shrinks "
    "(ghost batches of 8, 32 and the whole 128, one gradient batch of 128): its slope in log2 of the ghost size "
    "is above 0 (Grosse ch. 5, §4.1 and §6)",
    f"per seed, the least-squares slope of the gap ({_GAP}) against log2(ghost size); mean over seeds, t interval",
    Rule(">", "ghost_slope_min"),
)
N41_GHOST_ARMS = Claim(
    "N41-ghost-gaps",
    DESCRIPTIVE,
    "The gaps and test losses themselves, per ghost size, beside layer norm's (whose output ignores the batch)",
    f"mean over seeds of the gap ({_GAP}) and of the test loss, each ghost size and layer norm at the same LR",
    Rule("none"),
)
CLAIMS = (
    N41_STABLE, N41_STABLE_AFTER, N41_STABLE_LAYER, N41_DEAD, *N41_DEAD_ARMS.values(), N41_FASTER, N41_GHOST,
    N41_GHOST_ARMS,
)  # fmt: skip


@dataclass
class BenefitsAnalysis(Analysis):
    trains_below: float = param(
        0.9,
        min=0.0,
        max=1.0,
        help="a run trains when its loss over the last quarter of its steps is below this x its first batch's",
    )
    stable_ratio_min: float = param(
        1.0, min=0.0, help="N41-stable: BN-before's largest training LR over none's exceeds"
    )
    dead_lrs: list[float] = param(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0],
        help="N41-dead*: the grid's learning rates the dead share averages",
    )
    dead_gap_min: float = param(0.05, min=0.0, max=1.0, help="N41-dead: no normalizer's dead share exceeds BN's by")
    target_loss: float = param(1.0, min=0.0, help="N41-faster: the training loss (probe interval, train mode) timed")
    faster_min: float = param(1.25, min=1.0, help="N41-faster: no normalizer needs more than this x BN-before's steps")
    ghost_slope_min: float = param(0.0, help="N41-ghost: the gap's slope in log2(ghost size) exceeds this")


@dataclass
class BenefitsConfig(ExperimentConfig):
    grid_arms: list[str] = param(
        default_factory=lambda: [NONE, BEFORE, AFTER, LAYER], help="the arms run at every LR of lr_factors"
    )
    lr_factors: list[float] = param(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0], help="the grid: multiples of each grid arm's lr"
    )
    analysis: BenefitsAnalysis = field(default_factory=BenefitsAnalysis)

    def check(self, path: str = "") -> None:
        needs_probes(self.run, "bn_benefits", "preacts", "the dead-unit share at the ReLUs' inputs")
        arms = arm_configs(self)
        for arm in self.grid_arms:
            if arm not in arms:
                raise ConfigError(f"grid_arms: {arm!r} is not an arm; the arms are {sorted(arms)}")
            want = ROLES.get(arm)
            m = arms[arm].model
            if want and (m.norm != want[0] or (want[1] and m.norm_position != want[1]) or m.norm_ghost):
                raise ConfigError(
                    f"arms.{arm}: the role {arm!r} needs model.norm {want[0]}"
                    + (f" with norm_position {want[1]}" if want[1] else "")
                    + f" over the whole batch; it has norm {m.norm!r}, position {m.norm_position!r}, "
                    f"ghost {m.norm_ghost}"
                )
        for arm, rc in arms.items():
            if not rc.probes.dead_units:
                raise ConfigError(f"arms.{arm}: bn_benefits reads dead units in every run; set probes.dead_units: true")
            if arm in self.grid_arms:
                continue
            if rc.model.norm != "batch" or not rc.model.norm_ghost:
                raise ConfigError(
                    f"arms.{arm}: an arm outside grid_arms is a ghost arm (model.norm batch with model.norm_ghost "
                    "set); add it to grid_arms or give it model.norm_ghost"
                )
            grid = {float(f"{arms[BEFORE].optim.lr * f:.6g}") for f in self.lr_factors} if BEFORE in arms else set()
            if float(f"{rc.optim.lr:.6g}") not in grid:
                raise ConfigError(
                    f"arms.{arm}: a ghost arm's optim.lr ({rc.optim.lr:g}) must be one of the BN-before arm's grid "
                    f"rates {sorted(grid)}, where the whole-batch point of the ghost comparison ran"
                )


def grid(cfg: BenefitsConfig) -> dict[str, GridArm]:
    """Every run's arm: the grid arms at each rate (`arm@lrX`, bn_placement's grid), the ghost arms as
    configured."""
    out = {}
    for arm, rc in arm_configs(cfg).items():
        if arm in cfg.grid_arms:
            out.update(grid_arms(cfg, only=[arm]))
        else:
            out[arm] = GridArm(arm, float(f"{rc.optim.lr:.6g}"), rc)
    return out


def dead_shares(tables: Tables) -> pd.DataFrame:
    """Per run: the dead share at its last probe, averaged over the hidden layers (NaN for a run that did not
    finish)."""
    if not tables.has(M.DEAD_FRACTION):
        return pd.DataFrame(columns=["run_id", "arm", "seed", "value"])
    d = tables.series(M.DEAD_FRACTION)
    last = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
    per = last.groupby("run_id")["value"].mean()
    runs = tables.runs
    value = runs["run_id"].map(per).where(runs["status"] == "ok")
    return pd.DataFrame({"run_id": runs["run_id"], "arm": runs["arm"], "seed": runs["seed"], "value": value})


@dataclass
class BenefitsSetting(PathsSetting):
    """bn_paths' setting (steps to the target, cross-fitted rates: N41-faster reads them through its `speed`)
    over this experiment's grid, with what the other rows read."""

    @cached_property
    def grid(self) -> dict[str, GridArm]:
        return grid(self.cfg)

    @cached_property
    def late_loss(self) -> pd.DataFrame:
        return final_train_loss(self.tables, 0.25)

    @cached_property
    def first_loss(self) -> dict[str, float]:
        """run_id -> the loss of its first batch, before any update (about ln C at initialization)."""
        c = self.tables.curve(M.BATCH_LOSS)
        c = c[c["step"] == 0]
        return dict(zip(c["run_id"], c["value"].astype(float)))

    @cached_property
    def trains(self) -> dict[tuple[str, int], bool]:
        """(grid arm, seed) -> whether the run trains: its loss over the last quarter of its steps below
        trains_below x its first batch's loss (a diverged run does not)."""
        first = self.first_loss
        return {
            (r.arm, int(r.seed)): bool(
                np.isfinite(r.value) and r.value < self.a.trains_below * first.get(r.run_id, np.nan)
            )
            for r in self.late_loss.itertuples()
        }

    def rates(self, base: str) -> list[tuple[float, str]]:
        return sorted((g.lr, name) for name, g in self.grid.items() if g.base == base)

    def largest_training_lr(self, base: str) -> dict[int, float]:
        """seed -> the largest grid LR at which the arm trains; the grid's lowest over its step when it trains at
        none (a bound: somewhere below the grid)."""
        rates = self.rates(base)
        if len(rates) < 2:
            return {}
        seeds = sorted(set(self.late_loss["seed"].astype(int)))
        below = rates[0][0] * rates[0][0] / rates[1][0]
        out = {}
        for x in seeds:
            ok = [lr for lr, name in rates if self.trains.get((name, x), False)]
            if any((name, x) in self.trains for _, name in rates):
                out[x] = max(ok) if ok else below
        return out

    def dead(self, base: str) -> dict[int, float]:
        """seed -> the arm's dead share averaged over dead_lrs (NaN if any of those runs did not finish)."""
        d = dead_shares(self.tables).set_index(["arm", "seed"])["value"]
        names = [name for lr, name in self.rates(base) if any(math.isclose(lr, w) for w in self.a.dead_lrs)]
        seeds = sorted({x for a, x in d.index if a in names})
        return {x: float(np.mean([d.get((n, x), np.nan) for n in names])) for x in seeds}

    @cached_property
    def picks(self) -> dict[str, dict[int, str]]:
        """As bn_paths', for the grid arms only (a ghost arm runs at one rate)."""
        logloss = mean_log_loss(self.tables)
        return {arm: crossfit_picks(self.grid, self.steps, logloss, arm) for arm in self.cfg.grid_arms}

    def ghost_points(self) -> dict[str, tuple[int, float]]:
        """grid arm name -> (ghost size, lr) of every point of the ghost comparison: the ghost arms and BN-before at
        their rate (the whole batch)."""
        arms = arm_configs(self.cfg)
        out = {}
        for arm, rc in arms.items():
            if arm in self.cfg.grid_arms:
                continue
            out[arm] = (rc.model.norm_ghost, rc.optim.lr)
        if out and BEFORE in arms:
            lr = next(iter(out.values()))[1]
            whole = [name for r, name in self.rates(BEFORE) if math.isclose(r, lr)]
            if whole:
                out[whole[0]] = (arms[BEFORE].train.batch_size, lr)
        return out


def _ratio_estimate(mine: dict[int, float], ref: dict[int, float], detail: str) -> Estimate:
    seeds = sorted(set(mine) & set(ref))
    if not seeds:
        return Estimate.missing("needs both arms' runs at every rate of the grid")
    ratio, ci, n = paired_t([mine[x] for x in seeds], [ref[x] for x in seeds], log_ratio=True)
    return Estimate(ratio, ci, n, detail=detail)


def stable(s: BenefitsSetting, arm: str) -> Estimate:
    mine, ref = s.largest_training_lr(arm), s.largest_training_lr(NONE)
    top = s.rates(arm)[-1][0] if s.rates(arm) else float("nan")
    detail = (
        f"largest training LR per seed: {arm} {[mine[x] for x in sorted(mine)]}, none {[ref[x] for x in sorted(ref)]}"
        f" (grid {[lr for lr, _ in s.rates(arm)]}; trains: loss over the last quarter < "
        f"{s.a.trains_below:g} x its first batch's); {sum(v >= top for v in mine.values())} seed(s) of {arm} train "
        "at the grid's top rate (the ratio is then a lower bound)"
    )
    note = status_note(s.tables, [n for _, n in s.rates(arm) + s.rates(NONE)])
    return _ratio_estimate(mine, ref, detail + (f"; {note}" if note else ""))


def dead_gap(s: BenefitsSetting) -> Estimate:
    none, bn = s.dead(NONE), s.dead(BEFORE)
    seeds = [x for x in sorted(set(none) & set(bn)) if np.isfinite(none[x]) and np.isfinite(bn[x])]
    if not seeds:
        return Estimate.missing("needs dead shares of the arms 'none' and 'before' at dead_lrs")
    diff = [none[x] - bn[x] for x in seeds]
    left = len(set(none) & set(bn)) - len(seeds)
    detail = (
        f"no normalizer {S.nanmean([none[x] for x in seeds]):.3f}, BN before {S.nanmean([bn[x] for x in seeds]):.4f}"
        f" (LRs {s.a.dead_lrs})" + (f"; {left} seed(s) with a run that did not finish left out" if left else "")
    )
    return Estimate(float(np.mean(diff)), t_interval(diff), len(diff), detail=detail)


def dead_share(s: BenefitsSetting, arm: str) -> Estimate:
    """The arm's dead share averaged over dead_lrs, per seed; the detail gives the mean per LR of the runs that
    finished, and which did not (a diverged run has no dead share, and leaves its seed out)."""
    by_lr = dead_shares(s.tables).set_index("arm")["value"]
    parts = []
    for lr, name in s.rates(arm):
        if name in by_lr.index:
            v = by_lr.loc[[name]]
            parts.append(f"{lr:g} {float(v.mean()):.3f}" if v.notna().any() else f"{lr:g} none finished")
    detail = "mean per LR: " + ", ".join(parts)
    note = status_note(s.tables, [n for _, n in s.rates(arm)])
    detail += f"; {note}" if note else ""
    d = {x: v for x, v in s.dead(arm).items() if np.isfinite(v)}
    if not d:
        est = Estimate.missing(f"no seed of {arm!r} has a finished run at every rate of dead_lrs {s.a.dead_lrs}")
        est.detail = detail
        return est
    return Estimate(float(np.mean(list(d.values()))), t_interval(list(d.values())), len(d), detail=detail)


def gaps(s: BenefitsSetting) -> pd.DataFrame:
    """Per run of the ghost comparison and of layer norm at its rate: ghost size (0 for layer norm), gap, test loss."""
    train, test = final_metric(s.tables, M.TRAIN_LOSS), final_metric(s.tables, M.TEST_LOSS)
    both = train.merge(test[["run_id", "value"]], on="run_id", suffixes=("_train", "_test"))
    points = s.ghost_points()
    lr = next(iter(points.values()))[1] if points else None
    names = dict(points)
    for r, name in s.rates(LAYER):
        if lr is not None and math.isclose(r, lr):
            names[name] = (0, lr)
    both = both[both["arm"].isin(names)]
    return both.assign(
        ghost=both["arm"].map(lambda a: names[a][0]),
        gap=both["value_test"] - both["value_train"],
        test=both["value_test"],
    )


def ghost_slope(s: BenefitsSetting) -> Estimate:
    g = gaps(s)
    g = g[g["ghost"] > 0]
    sizes = sorted(set(g["ghost"]))
    if len(sizes) < 2:
        return Estimate.missing("needs at least two ghost sizes (the ghost arms and BN-before at their rate)")
    slopes, left = [], 0
    for _, d in g.groupby("seed"):
        d = d[np.isfinite(d["gap"])]
        if len(d) == len(sizes):
            slopes.append(float(np.polyfit(np.log2(d["ghost"].astype(float)), d["gap"], 1)[0]))
        else:
            left += 1
    if not slopes:
        return Estimate.missing("no seed with a finished run at every ghost size")
    means = g.groupby("ghost")["gap"].mean()
    detail = "mean gap per ghost size: " + ", ".join(f"{int(k)} {v:.3f}" for k, v in means.items())
    detail += f"; {left} seed(s) with a run that did not finish left out" if left else ""
    return Estimate(float(np.mean(slopes)), t_interval(slopes), len(slopes), detail=detail)


def ghost_gaps(s: BenefitsSetting) -> Estimate:
    g = gaps(s)
    if g.empty:
        return Estimate.missing("no runs of the ghost comparison")
    parts = [
        f"{'layer norm' if k == 0 else f'ghost {int(k)}'}: gap {d['gap'].mean():.3f}, test loss {d['test'].mean():.3f}"
        for k, d in g.groupby("ghost")
    ]
    ln = g[g["ghost"] == 0]["gap"].dropna().tolist()
    return Estimate(float(np.mean(ln)) if ln else float("nan"), t_interval(ln), len(ln),
                    detail="; ".join(parts) + " (value: layer norm's gap)")  # fmt: skip


ESTIMATORS = {
    N41_STABLE: partial(stable, arm=BEFORE),
    N41_STABLE_AFTER: partial(stable, arm=AFTER),
    N41_STABLE_LAYER: partial(stable, arm=LAYER),
    N41_DEAD: dead_gap,
    **{claim: partial(dead_share, arm=arm) for arm, claim in N41_DEAD_ARMS.items()},
    N41_FASTER: partial(speed, arm=NONE, ref=BEFORE, label="BN before the ReLU"),
    N41_GHOST: ghost_slope,
    N41_GHOST_ARMS: ghost_gaps,
}


def _finite_mean(values: pd.Series, name: str) -> float:
    """The mean of a grid arm's finite values (NaN, without a warning, where every run diverged)."""
    v = values.loc[[name]].dropna() if name in values.index else values.iloc[:0]
    return float(v.mean()) if len(v) else float("nan")


class BNBenefits(Experiment):
    name = "bn_benefits"
    title = "N41: batch norm's side benefits, separated: dead units, stable learning rates, batch noise"
    short_names = {"N41": "BN's side benefits, separated"}
    claims = CLAIMS
    config_class = BenefitsConfig
    estimators = ESTIMATORS
    setting_class = BenefitsSetting

    def tasks(self, cfg: BenefitsConfig) -> list[RunTask]:
        return grid_tasks(grid(cfg), cfg.seed_list)

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        s = BenefitsSetting(tables, cfg)
        arms = [a for a in cfg.grid_arms]
        col = P.colors(arms)
        fig, axes = P.figure(ncols=3, width=4.2, height=3.2)
        late = s.late_loss.set_index("arm")["value"]
        dead = dead_shares(tables).set_index("arm")["value"]
        for arm in arms:
            lrs, losses, deads = [], [], []
            for lr, name in s.rates(arm):
                lrs.append(lr)
                losses.append(_finite_mean(late, name))
                deads.append(_finite_mean(dead, name))
            lost = [f"{lr:g}" for lr, loss in zip(lrs, losses) if not np.isfinite(loss)]
            label = arm + (f" (diverged at {', '.join(lost)})" if lost else "")
            axes[0, 0].plot(lrs, losses, "o-", color=col[arm], label=label)
            axes[0, 1].plot(lrs, deads, "o-", color=col[arm], label=arm)
        first = float(np.nanmean(list(s.first_loss.values()))) if s.first_loss else np.nan
        axes[0, 0].axhline(cfg.analysis.trains_below * first, color="k", ls=":", lw=1, label="trains below (mean)")
        axes[0, 0].set(xscale="log", xlabel="learning rate", ylabel="training loss, last quarter (mean over seeds)",
                       title="Which rates still train")  # fmt: skip
        axes[0, 1].set(xscale="log", xlabel="learning rate", ylabel="dead share of hidden units (mean)",
                       title="Dead ReLUs, fixed batch, end")  # fmt: skip
        g = gaps(s)
        if not g.empty:
            bn = g[g["ghost"] > 0]
            for x, d in bn.groupby("seed"):
                d = d.sort_values("ghost")
                axes[0, 2].plot(d["ghost"], d["gap"], "-", color=col.get(BEFORE, "C1"), alpha=0.3, lw=1)
            m = bn.groupby("ghost")["gap"].mean()
            axes[0, 2].plot(m.index, m.values, "o-", color=col.get(BEFORE, "C1"), label="BN, ghost batches")
            ln = g[g["ghost"] == 0]["gap"]
            if len(ln):
                axes[0, 2].axhline(float(ln.mean()), color=col.get(LAYER, "C3"), ls="--", label="layer norm")
            axes[0, 2].set_xscale("log", base=2)
        axes[0, 2].set(xlabel="examples per batch statistic", ylabel="test loss - training loss",
                       title="Batch noise and the train-test gap")  # fmt: skip
        for ax in axes[0]:
            P.legend(ax, fontsize=7)
        return [P.save(fig, out / "bn_benefits.png")]
