"""bn_placement (K2): BN before or after the activation?

Grosse ch. 5, §4.2. Only BN *after* the ReLU centers the inputs of the next linear layer; BN
before it leaves them positive (a ReLU's output always is). If BN helped by centering the
previous layer's activations (the "ICS removal" hypothesis), "after" should train better. Ioffe
and Szegedy placed it before, and the chapter notes that this is what works in practice.

Arms: `none`, `before`, `after` with plain SGD and BN's learnable affine on (as in practice), the
same with the affine off (`*_noaffine`, the chapter's setting) and with Adam (`*_adam`). Every arm
runs at each learning rate of its grid (`lr_factors` times its configured LR) and is compared at
its best, so neither placement loses for want of its own learning rate; the best LR is chosen on
one half of the seeds and judged on the other (cross-fitting), so no seed both picks and judges.
The statistic is training speed as CLAIMS.md states it: the steps each run takes to reach a stated
training loss (`target_loss`), before / after, paired by seed (Student-t on the log ratio).
Non-inferiority: supported when the whole CI lies below 1 + margin. Preconditions: the centering
order holds (only `after` centers the next layer's inputs, measured as ||m||^2 / mean_j var_j of
every linear layer's inputs), and every judged run reaches the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import stats as S
from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine.claims import MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.runs import RunTask
from normlab.engine.stats import mean_std, paired_t

from normlab.engine.experiment import Experiment, Setting, arm_configs
from .common import by_arm, crossfit_folds, final_metric, needs_probes, status_note

_STAT = (
    "steps to reach the target training loss, before / after (per run: the first probe at or below the target, "
    "interpolated in log loss from the one before), each at its best LR cross-fitted over seed halves; geometric "
    "mean over seeds, paired t on the log ratio"
)
_RULE = Rule("<", "noninferiority_bound", "(1 + margin)")
K2 = Claim(
    "K2",
    MEASURED,
    "With SGD and BN's affine on, BN before the ReLU trains at least as fast as BN after it, "
    "although only 'after' centers the next layer's inputs: evidence against the ICS-removal hypothesis "
    "(Grosse ch. 5, §4.2)",
    _STAT,
    _RULE,
)
K2_NOAFFINE = Claim("K2-noaffine", MEASURED, "The same with BN's affine off (the chapter's setting)", _STAT, _RULE)
K2_ADAM = Claim("K2-adam", MEASURED, "The same with Adam (robustness check)", _STAT, _RULE)
CLAIMS = (K2, K2_NOAFFINE, K2_ADAM)


@dataclass
class PlacementAnalysis(Analysis):
    noninferiority_bound: float = param(
        1.10, min=1.0, help="supported if the CI of steps_before/steps_after lies below this (1 + margin)"
    )
    target_loss: float = param(
        0.25, min=0.0, help="the training loss (over a probe interval, train mode) whose first crossing times a run"
    )
    centered_max: float = param(0.1, min=0.0, help="'after' counts as centered if ||m||^2/var is below this")
    uncentered_min: float = param(1.0, min=0.0, help="'before' counts as uncentered if ||m||^2/var is above this")
    comparisons: dict[str, dict[str, str]] = param(
        default_factory=lambda: {
            "K2": {"none": "none", "before": "before", "after": "after"},
            "K2-noaffine": {"none": "none", "before": "before_noaffine", "after": "after_noaffine"},
            "K2-adam": {"none": "none_adam", "before": "before_adam", "after": "after_adam"},
        },
        help="claim id -> the arms in the roles none/before/after (checked against each arm's config)",
    )


@dataclass
class PlacementConfig(ExperimentConfig):
    lr_factors: list[float] = param(
        default_factory=lambda: [0.3, 1.0, 3.0], help="every arm runs at these multiples of its configured lr"
    )
    analysis: PlacementAnalysis = field(default_factory=PlacementAnalysis)

    def check(self, path: str = "") -> None:
        needs_probes(
            self.run, "bn_placement", "inputs", "the training-loss curve and the centering check come from the probes"
        )
        arms = arm_configs(self)
        known = {c.id for c in CLAIMS}
        for cid, roles in self.analysis.comparisons.items():
            if cid not in known:
                raise ConfigError(
                    f"analysis.comparisons.{cid}: not a claim of bn_placement; use one of {', '.join(sorted(known))}"
                )
            for role, arm in roles.items():
                if role not in ("none", "before", "after"):
                    raise ConfigError(f"analysis.comparisons.{cid}.{role}: roles are none, before, after")
                if arm in arms:  # a missing arm makes the row inconclusive, not the config invalid
                    m = arms[arm].model
                    ok = (m.norm == "none") if role == "none" else (m.norm != "none" and m.norm_position == role)
                    if not ok:
                        raise ConfigError(
                            f"analysis.comparisons.{cid}.{role}: arm {arm!r} has model.norm "
                            f"{m.norm!r}, norm_position {m.norm_position!r}, not the role {role!r}"
                        )


def centering(tables: Tables) -> pd.DataFrame:
    """Per run and layer: mean over probes of ||m||^2 / mean_j var_j of the layer's inputs.
    The first layer (its input is the data, the same for every arm) is left out."""
    key = ["run_id", "arm", "seed", "layer", "step"]
    msq = tables.series(M.INPUT_MEAN_SQ_NORM).set_index(key)["value"]
    var = tables.series(M.INPUT_VAR_MEAN).set_index(key)["value"]
    ratio = (msq / var.reindex(msq.index)).rename("value").reset_index()
    ratio = ratio[ratio["layer"] != "layer1"]
    return ratio.groupby(["run_id", "arm", "seed", "layer"], sort=False)["value"].mean().reset_index()


@dataclass(frozen=True)
class GridArm:
    base: str  # the arm of the config
    lr: float
    config: RunConfig


def grid_arms(cfg: PlacementConfig, only: list[str] | None = None) -> dict[str, GridArm]:
    """Every configured arm (or only those named) at every learning rate of its grid (typed; the analysis
    reads this)."""
    out = {}
    for arm, rc in arm_configs(cfg).items():
        if only is not None and arm not in only:
            continue
        for f in cfg.lr_factors:
            lr = float(f"{rc.optim.lr * f:.6g}")
            out[f"{arm}@lr{lr:g}"] = GridArm(arm, lr, replace(rc, optim=replace(rc.optim, lr=lr)))
    return out


def grid_tasks(arms: dict[str, GridArm], seeds: list[int]) -> list[RunTask]:
    """One run per grid arm and seed, named '<arm>-s<seed>'."""
    return [RunTask(f"{name}-s{seed}", name, seed, g.config) for name, g in arms.items() for seed in seeds]


def mean_log_loss(tables: Tables) -> pd.DataFrame:
    """Per run: the mean over probes (after step 0) of log(training loss over the probe interval).
    Runs that did not finish are missing (NaN)."""
    c = tables.curve(M.BATCH_LOSS_AVG)
    c = c[c["step"] > 0]
    per = c.assign(value=np.log(c["value"])).groupby("run_id")["value"].mean()
    runs = tables.runs
    value = runs["run_id"].map(per).where(runs["status"] == "ok")
    return pd.DataFrame({"run_id": runs["run_id"], "arm": runs["arm"], "seed": runs["seed"], "value": value})


def steps_to_loss(tables: Tables, target: float) -> pd.DataFrame:
    """Per run: the step at which the training loss over a probe interval first reaches `target`,
    interpolated linearly in log loss between that probe and the one before; NaN for a run that
    never reaches it or did not finish."""
    c = tables.curve(M.BATCH_LOSS_AVG)
    c = c[c["step"] > 0].sort_values(["run_id", "step"])
    hit: dict[str, float] = {}
    for run_id, g in c.groupby("run_id", sort=False):
        steps, loss = g["step"].to_numpy(dtype=float), g["value"].to_numpy(dtype=float)
        below = np.flatnonzero(loss <= target)
        if not len(below):
            continue
        i = int(below[0])
        if i == 0 or not loss[i - 1] > 0 or not loss[i] > 0:
            hit[run_id] = steps[i]
            continue
        frac = (np.log(loss[i - 1]) - np.log(target)) / (np.log(loss[i - 1]) - np.log(loss[i]))
        hit[run_id] = float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))
    runs = tables.runs
    value = runs["run_id"].map(hit).where(runs["status"] == "ok")
    return pd.DataFrame({"run_id": runs["run_id"], "arm": runs["arm"], "seed": runs["seed"], "value": value})


def best_arms(grid: dict[str, GridArm], values: pd.DataFrame) -> dict[str, str]:
    """base arm -> its grid arm with the lowest mean over seeds of a per-run value (lower is better;
    the first of the grid on a tie); a grid arm with a missing value (a diverged run, a run that
    never reached the target) is never the best."""
    score = values.groupby("arm")["value"].agg(lambda v: v.mean() if v.notna().all() else np.inf)
    out: dict[str, str] = {}
    for name, g in grid.items():
        if name in score and np.isfinite(score[name]) and (g.base not in out or score[name] < score[out[g.base]]):
            out[g.base] = name
    return out


def crossfit_best(grid: dict, steps: pd.DataFrame, base: str) -> dict[int, str]:
    """seed -> the grid arm of `base` judged on that seed: `best_arms` on the log steps to the target
    of the other half of the seeds."""
    mine = steps[steps["arm"].isin([n for n, g in grid.items() if g.base == base])]
    out: dict[int, str] = {}
    for judged, chosen_on in crossfit_folds(sorted(set(mine["seed"]))):
        pick = best_arms(grid, mine[mine["seed"].isin(chosen_on)].assign(value=lambda d: np.log(d["value"])))
        if base in pick:
            out.update({seed: pick[base] for seed in judged})
    return out


def k2(s: "PlacementSetting", claim_id: str) -> Estimate | None:
    """BN before vs after, each at its best LR chosen on the other half of the seeds: the paired ratio of
    steps to the target loss, with the centering order (at the full-sample best LRs) and every judged
    run reaching the target as preconditions (no row for a comparison the config does not make)."""
    a, grid, chosen, tables = s.a, s.grid, s.chosen, s.tables
    roles = a.comparisons.get(claim_id)
    if roles is None:
        return None
    if roles["before"] not in chosen or roles["after"] not in chosen:
        return Estimate.missing(f"needs arms {roles['before']} and {roles['after']}")
    test, cent_arm = s.test, s.centering
    before, after, none = (chosen.get(roles[r], "") for r in ("before", "after", "none"))
    steps = s.steps
    pick_b, pick_a = crossfit_best(grid, steps, roles["before"]), crossfit_best(grid, steps, roles["after"])
    seeds = sorted(set(pick_b) & set(pick_a))
    value = steps.set_index(["arm", "seed"])["value"]
    sb = np.array([value.get((pick_b[x], x), np.nan) for x in seeds], dtype=float)
    sa = np.array([value.get((pick_a[x], x), np.nan) for x in seeds], dtype=float)
    ratio, ci, n = paired_t(sb, sa, log_ratio=True)
    c_before, c_after = cent_arm.get(before, np.nan), cent_arm.get(after, np.nan)
    centered = Check(
        "centering order",
        bool(c_after < a.centered_max and c_before > a.uncentered_min),
        f"||m||^2/var of the inputs: after {c_after:.3g} (needs < {a.centered_max:g}), before "
        f"{c_before:.3g} (needs > {a.uncentered_min:g})",
    )
    missed = [f"{roles[r]} seed {x}" for r, v in (("before", sb), ("after", sa)) for x, y in zip(seeds, v)
              if not np.isfinite(y)]  # fmt: skip
    reached = Check(
        "target reached",
        bool(seeds) and not missed,
        f"runs that never reached loss {a.target_loss:g} (or did not finish): {', '.join(missed) or 'no seeds'}",
    )
    oc = grid[before].config.optim
    acc = {x: 100 * mean_std(test[x])[0] for x in (none, before, after) if x in test}

    def lrs(pick: dict[int, str]) -> str:
        by_lr: dict[float, list[int]] = {}
        for x, name in sorted(pick.items()):
            by_lr.setdefault(grid[name].lr, []).append(x)
        return ", ".join(f"lr {lr:g} on seeds {xs}" for lr, xs in by_lr.items())

    fastest_none = best_arms(grid, steps).get(roles["none"])  # full-sample, descriptive only
    none_steps = steps[steps["arm"] == fastest_none]["value"] if fastest_none else steps["value"].iloc[:0]
    detail = (
        f"{oc.name}, BN affine {'on' if grid[before].config.model.norm_affine else 'off'}; steps to loss "
        f"{a.target_loss:g}: before {S.nanmean(sb):.0f} ({lrs(pick_b)}), after {S.nanmean(sa):.0f} ({lrs(pick_a)})"
        + (f", none {S.nanmean(none_steps):.0f} at its best" if none_steps.notna().any() else ", none never reaches it")
        + "; test acc "
        + ", ".join(f"{k} {v:.1f}%" for k, v in acc.items())
        + f"; centering ||m||^2/var (median over layers 2.., seeds): before {c_before:.3g}, after {c_after:.3g}"
    )
    note = status_note(tables, [x for x in (none, before, after) if x])
    return Estimate(ratio, ci, n, [centered, reached], leaning(ci) + "; " + detail + (f"; {note}" if note else ""))


def leaning(ci) -> str:
    """Which way the interval of steps_before / steps_after points, beside any verdict: the rule is
    non-inferiority, so an inconclusive row can still say that "before" is measurably slower."""
    lo, hi = ci.low, ci.high
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval"
    if lo > 1:
        return (
            f"the data point against the chapter's 'before generally worked better': the interval lies above 1, "
            f"'before' needs {100 * (lo - 1):.0f}-{100 * (hi - 1):.0f}% more steps than 'after'"
        )
    if hi < 1:
        return f"the data point with the chapter: 'before' needs {100 * (1 - hi):.0f}-{100 * (1 - lo):.0f}% fewer steps"
    return "the interval contains 1: the data point neither way"


@dataclass
class PlacementSetting(Setting):
    """The LR grid's arms, each run's mean log training loss, each arm's best LR, test accuracy and centering."""

    @cached_property
    def grid(self) -> dict:
        return grid_arms(self.cfg)

    @cached_property
    def logloss(self) -> pd.DataFrame:
        return mean_log_loss(self.tables)

    @cached_property
    def chosen(self) -> dict[str, str]:
        return BNPlacement.best(self.grid, self.logloss)

    @cached_property
    def steps(self) -> pd.DataFrame:
        return steps_to_loss(self.tables, self.a.target_loss)

    @cached_property
    def test(self) -> dict[str, list[float]]:
        return by_arm(final_metric(self.tables, M.TEST_ACC))

    @cached_property
    def centering(self) -> dict[str, float]:
        return centering(self.tables).groupby("arm")["value"].median().to_dict()


class BNPlacement(Experiment):
    name = "bn_placement"
    title = "K2: batch norm before vs after the activation"
    short_names = {"K2": "BN before vs after the activation"}
    claims = CLAIMS
    config_class = PlacementConfig

    def tasks(self, cfg: PlacementConfig) -> list[RunTask]:
        return grid_tasks(grid_arms(cfg), cfg.seed_list)

    # the figure's and the centering check's LR per arm: best_arms on the mean log training loss (an
    # arm without BN never reaches the K2 target, so steps to it cannot choose its LR)
    best = staticmethod(best_arms)

    estimators = {claim: partial(k2, claim_id=claim.id) for claim in CLAIMS}

    setting_class = PlacementSetting

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        chosen = self.best(grid_arms(cfg), mean_log_loss(tables))
        groups = [
            (cid, {r: chosen.get(x, "") for r, x in roles.items()})
            for cid, roles in a.comparisons.items()
            if roles["before"] in chosen
        ]
        col = P.colors(["none", "before", "after"])
        fig, axes = P.figure(ncols=max(1, len(groups)), nrows=2, width=4.0, height=3.0)
        cent = centering(tables)
        for j, (label, roles) in enumerate(groups):
            ax = axes[0, j]
            for place in ("none", "before", "after"):
                c = tables.curve(M.BATCH_LOSS_AVG)
                P.mean_band(ax, c[(c["arm"] == roles.get(place, "")) & (c["step"] > 0)], place, col[place])
            ax.set(
                yscale="log",
                xlabel="step",
                ylabel="training loss (train mode)",
                title=f"{label}: training loss, best lr per arm",
            )
            P.legend(ax)
            ax = axes[1, j]
            for place in ("none", "before", "after"):
                c = cent[cent["arm"] == roles.get(place, "")]
                g = c.groupby("layer", sort=False)["value"].agg(["mean", "min", "max"])
                if g.empty:
                    continue
                x = np.arange(len(g))
                ax.plot(x, g["mean"].clip(lower=1e-6), "o-", color=col[place], label=place)
                ax.fill_between(
                    x, g["min"].clip(lower=1e-6), g["max"].clip(lower=1e-6), color=col[place], alpha=0.15, lw=0
                )
                ax.set_xticks(x, list(g.index))
            ax.set(
                yscale="log", ylabel="||m||^2 / mean var of input (floor 1e-6)", title=f"{label}: centering of inputs"
            )
            P.legend(ax)
        return [P.save(fig, out / "bn_placement.png")]
