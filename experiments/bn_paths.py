"""bn_paths (N42): batch norm's direct path and statistics path, taken apart in training.

Grosse ch. 5, §4.2 splits BN's backward pass into a direct path (the statistics held fixed) and a
statistics path (what moving the batch mean and variance does), and says both matter for
optimization; §4.3 asks which one carries the implicit learning-rate decay. Each arm here trains the
knockout's 6-layer MLP (BN before every ReLU, no gain or shift, as the chapter assumes) with the same
forward pass and a different backward pass: full BN, the batch mean detached (`no_mean`), the batch
variance detached (`no_var`), both detached (`direct`: the direct path alone), and no BN.

Along a unit's weights w_j the direct path's gradient has the part z/sigma, the mean path -mu/sigma
and the variance path -(z - mu)/sigma (each weighted by the backpropagated signal): only all three
together cancel, so only full BN keeps every update orthogonal to w_j (chapter_checks' X43-paths
computes it exactly). The detached arms compute a function whose loss still ignores the scale of
w_j, with a gradient that does not respect it; their norms need not grow.

Every arm runs at each learning rate of its grid (`lr_factors` times the configured one) and is
compared at its own best, chosen on one half of the seeds and judged on the other (cross-fitting,
as bn_placement does). Training speed is the number of steps to a stated training loss; a run that
never reaches it counts the horizon, and LRs that tie there (an arm none of whose runs arrives) are
told apart by the mean log training loss over the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine import stats as S
from normlab.engine.claims import DESCRIPTIVE, EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.experiment import Experiment, Setting, arm_configs
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import paired_t, t_interval

from .bn_placement import grid_arms, grid_tasks, mean_log_loss, steps_to_loss
from .common import crossfit_folds, needs_probes, status_note

FULL, NO_MEAN, NO_VAR, DIRECT, NONE, EQ9 = "full", "no_mean", "no_var", "direct", "none", "eq9"
DETACHED = {NO_MEAN: "mean", NO_VAR: "var", DIRECT: "both"}  # arm -> the model.norm_detach it must have

_SPEED = (
    "steps to reach the target training loss, {arm} / full BN, each at its best LR cross-fitted over seed halves "
    "(a run that never reaches the target counts the horizon, a lower bound); geometric mean over seeds, paired t "
    "on the log ratio"
)
_COS = (
    "max over the arm's runs (every LR), probes and BN-fed layers of max_j |cos(w_j, grad_j)|, the gradient at the "
    "probe's batch"
)
_NONORTH = (
    "min over the arm's runs (every LR) of the largest |cos(w_j, grad_j)| over its probes, BN-fed layers and units"
)
_NORM = (
    "at each run's cross-fitted LR: the last probe's median ||w_j||^2 over the first one's, geometric mean over the "
    "BN-fed layers and the seeds"
)
N42_STATS = Claim(
    "N42-stats",
    MEASURED,
    "BN's statistics path matters for optimization: with the batch mean and variance both detached (the direct "
    "path alone) the network needs more than paths_slower_min times the steps full BN needs to reach the target "
    "training loss, each at its own tuned learning rate (Grosse ch. 5, §4.2)",
    _SPEED.format(arm="direct path alone"),
    Rule(">", "paths_slower_min"),
)
N42_MEAN = Claim(
    "N42-mean", DESCRIPTIVE, "Speed with only the batch mean detached", _SPEED.format(arm="mean detached"),
    Rule("none"),
)  # fmt: skip
N42_VAR = Claim(
    "N42-var", DESCRIPTIVE, "Speed with only the batch variance detached", _SPEED.format(arm="variance detached"),
    Rule("none"),
)  # fmt: skip
N42_ORTH = Claim(
    "N42-orth",
    EXACT,
    "With the whole statistics path every update of a BN-fed unit is orthogonal to its weights (Eq. 16), in every "
    "run and at every probe",
    _COS,
    Rule("<", "orth_tol"),
)
_NONORTH_TEXT = "some unit's gradient has a part along its weights in every run"
N42_NONORTH = {  # the arm -> its row (ids written out: one literal definition each)
    NO_MEAN: Claim("N42-nonorth-mean", EXACT, "With the batch mean detached " + _NONORTH_TEXT + " (the mean "
                   "path's -mu/sigma is missing)", _NONORTH, Rule(">", "nonorth_min")),
    NO_VAR: Claim("N42-nonorth-var", EXACT, "With the batch variance detached " + _NONORTH_TEXT + " (the "
                  "variance path's -(z - mu)/sigma is missing)", _NONORTH, Rule(">", "nonorth_min")),
    DIRECT: Claim("N42-nonorth-direct", EXACT, "With the direct path alone " + _NONORTH_TEXT, _NONORTH,
                  Rule(">", "nonorth_min")),
}  # fmt: skip
_MOVE = "How the BN-fed weight norms move: "
N42_NORMS = {
    FULL: Claim("N42-norm-full", DESCRIPTIVE, _MOVE + "full BN (no decay: they can only grow, Eq. 19)", _NORM,
                Rule("none")),
    NO_MEAN: Claim("N42-norm-mean", DESCRIPTIVE, _MOVE + "the batch mean detached", _NORM, Rule("none")),
    NO_VAR: Claim("N42-norm-var", DESCRIPTIVE, _MOVE + "the batch variance detached", _NORM, Rule("none")),
    DIRECT: Claim("N42-norm-direct", DESCRIPTIVE, _MOVE + "the direct path alone", _NORM, Rule("none")),
}  # fmt: skip
N42_REACH = Claim(
    "N42-reach",
    DESCRIPTIVE,
    "Whether the direct path alone still trains: the share of its runs (at the cross-fitted LR) that reach the target "
    "training loss, beside no BN's",
    "fraction of the direct-path arm's judged runs that reach the target loss within the horizon",
    Rule("none"),
)
N42_EQ9 = Claim(
    "N42-eq9",
    MEASURED,
    "Removing only the outliers speeds training: the plain network needs more than eq9_faster_min times the steps "
    "the same network in Eq. 9's centered coordinates needs to reach the target training loss, each at its own "
    "tuned learning rate (the same function at the start; the next-layer-BN explanation as an intervention, which "
    "the chapter leaves as a class project, §4.2)",
    "steps to reach the target training loss, no normalizer / Eq. 9's centered parameterization, each at its best "
    "LR cross-fitted over seed halves (a run that never reaches the target counts the horizon, a lower bound); "
    "geometric mean over seeds, paired t on the log ratio",
    Rule(">", "eq9_faster_min"),
)
_CURV = (
    "at each run's cross-fitted LR, the end of training: the top-k GGN eigenvectors of curvature.layer with share >= "
    "share_min along the mean of the layer's inputs, mean over seeds (and lambda_1)"
)
N42_EQ9_CURV = {
    NONE: Claim("N42-eq9-outliers-none", DESCRIPTIVE, "The plain network's mean-direction outliers at the end",
                _CURV, Rule("none")),
    EQ9: Claim("N42-eq9-outliers-eq9", DESCRIPTIVE, "The same, trained in Eq. 9's centered coordinates (the GGN "
               "with respect to the parameters it trains)", _CURV, Rule("none")),
}  # fmt: skip
CLAIMS = (
    N42_STATS, N42_MEAN, N42_VAR, N42_ORTH, *N42_NONORTH.values(), *N42_NORMS.values(), N42_REACH, N42_EQ9,
    *N42_EQ9_CURV.values(),
)  # fmt: skip


@dataclass
class PathsAnalysis(Analysis):
    target_loss: float = param(
        0.25, min=0.0, help="the training loss (over a probe interval, train mode) whose first crossing times a run"
    )
    paths_slower_min: float = param(
        1.25, min=1.0, help="N42-stats: the direct path alone needs more than this times full BN's steps"
    )
    orth_tol: float = param(1e-3, min=0.0, help="N42-orth: largest |cos(w_j, grad_j)| under full BN")
    nonorth_min: float = param(0.05, min=0.0, help="N42-nonorth-*: every run's largest |cos(w_j, grad_j)| exceeds this")
    eq9_faster_min: float = param(
        1.25, min=1.0, help="N42-eq9: the plain network needs more than this times the centered one's steps"
    )
    share_min: float = param(
        0.5, min=0.0, max=1.0, help="N42-eq9-outliers-*: an outlier's eigenvector has this share along the mean (K8's)"
    )


@dataclass
class PathsConfig(ExperimentConfig):
    lr_factors: list[float] = param(
        default_factory=lambda: [0.3, 1.0, 3.0], help="every arm runs at these multiples of its configured lr"
    )
    analysis: PathsAnalysis = field(default_factory=PathsAnalysis)

    def check(self, path: str = "") -> None:
        needs_probes(self.run, "bn_paths", "weights", "the gradient's angle to the weights and their norms")
        arms = arm_configs(self)
        for arm, detach in {FULL: "none", **DETACHED}.items():
            if arm in arms and (arms[arm].model.norm != "batch" or arms[arm].model.norm_detach != detach):
                m = arms[arm].model
                raise ConfigError(
                    f"arms.{arm}: the role {arm!r} needs model.norm batch with model.norm_detach {detach!r}; it has "
                    f"norm {m.norm!r}, norm_detach {m.norm_detach!r}"
                )
        if NONE in arms and (arms[NONE].model.norm != "none" or arms[NONE].model.centered_reparam):
            raise ConfigError(f"arms.{NONE}: the role 'none' needs model.norm: none in the plain coordinates")
        if EQ9 in arms and not arms[EQ9].model.centered_reparam:
            raise ConfigError(f"arms.{EQ9}: the role 'eq9' needs model.centered_reparam: true (and model.norm: none)")


def censored_steps(tables: Tables, target: float) -> pd.DataFrame:
    """steps_to_loss with a run that never reaches the target (or diverged) at the horizon, train.steps: a
    lower bound on the steps it would need."""
    steps = steps_to_loss(tables, target)
    horizon = float(tables.config["run"]["train"]["steps"])
    return steps.assign(value=steps["value"].fillna(horizon), reached=steps["value"].notna())


def cos_extremes(tables: Tables) -> pd.DataFrame:
    """Per run: the largest max_j |cos(w_j, grad_j)| over probes and BN-fed layers (the read-out left out)."""
    if not tables.has(M.W_GRAD_COS):
        return pd.DataFrame(columns=["run_id", "arm", "seed", "value"])
    d = tables.series(M.W_GRAD_COS)
    d = d[d["stat"].isin(["min", "max"]) & (d["layer"] != "out")]
    worst = d.assign(value=d["value"].abs()).groupby(["run_id", "arm", "seed"])["value"].max()
    return worst.reset_index()


def norm_growth(tables: Tables, stat: str = "median") -> pd.DataFrame:
    """Per run and BN-fed layer: the last probe's `stat` of ||w_j||^2 over the first probe's."""
    if not tables.has(M.WEIGHT_NORM_SQ):
        return pd.DataFrame(columns=["run_id", "arm", "seed", "layer", "value"])
    d = tables.series(M.WEIGHT_NORM_SQ, stat)
    d = d[d["layer"] != "out"].sort_values("step")
    g = d.groupby(["run_id", "arm", "seed", "layer"])["value"]
    return (g.last() / g.first()).rename("value").reset_index()


def crossfit_picks(grid: dict, steps: pd.DataFrame, logloss: pd.DataFrame, base: str) -> dict[int, str]:
    """seed -> the grid arm of `base` judged on that seed, chosen on the other half of the seeds: the fewest
    mean log (censored) steps to the target, and among LRs that tie there (every run of an arm that never
    reaches the target counts the horizon) the lowest mean log training loss over the run."""
    names = [n for n, g in grid.items() if g.base == base]
    key = ["arm", "seed"]
    both = steps[steps["arm"].isin(names)].merge(logloss[key + ["value"]], on=key, suffixes=("", "_loss"))
    out: dict[int, str] = {}
    for judged, chosen_on in crossfit_folds(sorted(set(both["seed"]))):
        d = both[both["seed"].isin(chosen_on)]
        score = {
            name: (float(np.log(g["value"]).mean()), float(g["value_loss"].mean()) if g["value_loss"].notna().all()
                   else np.inf)
            for name, g in d.groupby("arm")
        }  # fmt: skip
        if score:
            best = min(names, key=lambda n: score.get(n, (np.inf, np.inf)))
            out.update({seed: best for seed in judged})
    return out


@dataclass
class PathsSetting(Setting):
    @cached_property
    def grid(self) -> dict:
        return grid_arms(self.cfg)

    @cached_property
    def steps(self) -> pd.DataFrame:
        return censored_steps(self.tables, self.a.target_loss)

    @cached_property
    def picks(self) -> dict[str, dict[int, str]]:
        """arm -> seed -> the grid arm judged on that seed (its LR chosen on the other half)."""
        logloss = mean_log_loss(self.tables)
        return {arm: crossfit_picks(self.grid, self.steps, logloss, arm) for arm in arm_configs(self.cfg)}

    def judged(self, arm: str) -> dict[int, float]:
        """seed -> the censored steps of the arm's judged run."""
        value = self.steps.set_index(["arm", "seed"])["value"]
        return {x: float(value.get((name, x), np.nan)) for x, name in self.picks.get(arm, {}).items()}

    def reached(self, arm: str) -> dict[int, bool]:
        hit = self.steps.set_index(["arm", "seed"])["reached"]
        return {x: bool(hit.get((name, x), False)) for x, name in self.picks.get(arm, {}).items()}

    def lrs(self, arm: str) -> str:
        by_lr: dict[float, list[int]] = {}
        for x, name in sorted(self.picks.get(arm, {}).items()):
            by_lr.setdefault(self.grid[name].lr, []).append(x)
        return ", ".join(f"lr {lr:g} on seeds {xs}" for lr, xs in by_lr.items())


def speed(s: PathsSetting, arm: str, ref: str = FULL, label: str = "") -> Estimate:
    """An arm's steps to the target over the reference arm's (full BN's), each at its cross-fitted LR, paired by
    seed; `label` names the reference arm in the row's words."""
    if arm not in s.picks or ref not in s.picks or not s.picks[arm] or not s.picks[ref]:
        return Estimate.missing(f"needs the arms {arm!r} and {ref!r} with runs at their LR grids")
    mine, full = s.judged(arm), s.judged(ref)
    seeds = sorted(set(mine) & set(full))
    ratio, ci, n = paired_t([mine[x] for x in seeds], [full[x] for x in seeds], log_ratio=True)
    full_missed = [x for x in seeds if not s.reached(ref)[x]]
    label = label or {FULL: "full BN", EQ9: "Eq. 9's centered network"}.get(ref, ref)
    reached = Check(
        f"{label} reaches the target",
        not full_missed,
        f"{label} runs that never reached loss {s.a.target_loss:g}: seeds {full_missed or 'none'}",
    )
    missed = sum(not v for v in s.reached(arm).values())
    names = [n for n, g in s.grid.items() if g.base == arm]
    grid_runs = s.steps[s.steps["arm"].isin(names)]
    tie = (
        "; no run at any LR of its grid reached it, so its LR was chosen by the training loss"
        if len(grid_runs) and not grid_runs["reached"].any()
        else ""
    )
    ref_missed = sum(not v for v in s.reached(ref).values())
    detail = (
        f"steps to loss {s.a.target_loss:g}: {arm} {S.nanmean([mine[x] for x in seeds]):.0f} ({s.lrs(arm)}; "
        f"{missed} judged run(s) never reached it, counted at the horizon{tie}), {label} "
        f"{S.nanmean([full[x] for x in seeds]):.0f} ({s.lrs(ref)}"
        + (f"; {ref_missed} never reached it" if ref_missed else "")
        + ")"
    )
    note = status_note(s.tables, list(s.picks.get(arm, {}).values()))
    return Estimate(ratio, ci, n, [reached], detail + (f"; {note}" if note else ""))


def orthogonal(s: PathsSetting) -> Estimate:
    """The largest |cos(w_j, grad_j)| of any full-BN run."""
    c = cos_extremes(s.tables)
    names = [n for n, g in s.grid.items() if g.base == FULL]
    c = c[c["arm"].isin(names)]
    if c.empty:
        return Estimate.missing("no gradient angles of full BN (probes.weights on, summaries min and max)")
    return Estimate(float(c["value"].max()), n=len(c), detail=f"{len(c)} runs; median of the runs' worst "
                    f"{float(c['value'].median()):.2g}")  # fmt: skip


def not_orthogonal(s: PathsSetting, arm: str) -> Estimate:
    """The smallest, over an arm's runs, of its largest |cos(w_j, grad_j)|."""
    c = cos_extremes(s.tables)
    names = [n for n, g in s.grid.items() if g.base == arm]
    c = c[c["arm"].isin(names)]
    if c.empty:
        return Estimate.missing(f"no gradient angles of {arm!r} (probes.weights on, summaries min and max)")
    return Estimate(float(c["value"].min()), n=len(c), detail=f"{len(c)} runs; median of the runs' worst "
                    f"{float(c['value'].median()):.2g}")  # fmt: skip


def norms(s: PathsSetting, arm: str) -> Estimate:
    """Final over initial median ||w_j||^2, BN-fed layers, the arm's judged runs: geometric mean, t interval in logs."""
    g = norm_growth(s.tables)
    names = set(s.picks.get(arm, {}).values())
    judged = {(name, x) for x, name in s.picks.get(arm, {}).items()}
    g = g[g["arm"].isin(names)]
    g = g[[(a, x) in judged for a, x in zip(g["arm"], g["seed"])]]
    if g.empty:
        return Estimate.missing(f"no weight norms of {arm!r} (probes.weights on, summary median)")
    per_seed = np.log(g.groupby("seed")["value"].apply(lambda v: float(np.exp(np.log(v).mean()))))
    ci = t_interval(list(per_seed))
    detail = "per layer (mean over seeds): " + ", ".join(
        f"{lay} {v:.3g}" for lay, v in g.groupby("layer", sort=False)["value"].mean().items()
    )
    return Estimate(float(np.exp(per_seed.mean())), type(ci)(np.exp(ci.low), np.exp(ci.high), ci.method),
                    len(per_seed), detail=detail)  # fmt: skip


def reach(s: PathsSetting) -> Estimate:
    """The share of the direct-path arm's judged runs that reach the target, and no BN's beside it."""
    mine = list(s.reached(DIRECT).values())
    if not mine:
        return Estimate.missing(f"needs the arm {DIRECT!r}")
    none = list(s.reached(NONE).values())
    detail = (
        f"direct path {sum(mine)} of {len(mine)} runs, full BN {sum(s.reached(FULL).values())} of "
        f"{len(s.reached(FULL))}" + (f", no BN {sum(none)} of {len(none)}" if none else "")
    )
    return Estimate(float(np.mean(mine)), n=len(mine), detail=detail)


def mean_outliers(s: PathsSetting, arm: str) -> Estimate:
    """The arm's mean-direction outliers at the end of its judged runs (K8's count: top-k GGN eigenvectors with a
    share >= share_min along the input mean), mean over seeds, t interval; lambda_1 in the detail."""
    if not (s.tables.has(M.eig(M.GGN)) and s.tables.has(M.GGN_MEAN_SHARE)):
        return Estimate.missing(f"no GGN spectra (set curvature.steps on the arm {arm!r}, e.g. [1500])")
    eig, share = s.tables.series(M.eig(M.GGN)), s.tables.series(M.GGN_MEAN_SHARE)
    keys = ["run_id", "arm", "seed", "step", "item"]
    d = eig.merge(share[keys + ["value"]], on=keys, suffixes=("", "_share"))
    d = d[d["step"] == d.groupby("run_id")["step"].transform("max")]
    judged = {(name, x) for x, name in s.picks.get(arm, {}).items()}
    d = d[[(a, x) in judged for a, x in zip(d["arm"], d["seed"])]]
    if d.empty:
        return Estimate.missing(f"no GGN spectra of the arm {arm!r}'s judged runs")
    per = d.groupby("seed").apply(
        lambda g: pd.Series(
            {"count": float((g["value_share"] >= s.a.share_min).sum()), "top": float(g["value"].max()), "k": len(g)}
        ),  # fmt: skip
        include_groups=False,
    )
    counts = per["count"].tolist()
    detail = (
        f"of the top {int(per['k'].iloc[0])}, share >= {s.a.share_min:g}: per seed {[int(c) for c in counts]}; "
        f"lambda_1 mean {per['top'].mean():.3g}"
    )
    return Estimate(float(np.mean(counts)), t_interval(counts), len(counts), detail=detail)


ESTIMATORS = {
    N42_STATS: partial(speed, arm=DIRECT),
    N42_MEAN: partial(speed, arm=NO_MEAN),
    N42_VAR: partial(speed, arm=NO_VAR),
    N42_ORTH: orthogonal,
    **{claim: partial(not_orthogonal, arm=arm) for arm, claim in N42_NONORTH.items()},
    **{claim: partial(norms, arm=arm) for arm, claim in N42_NORMS.items()},
    N42_REACH: reach,
    N42_EQ9: partial(speed, arm=NONE, ref=EQ9),
    **{claim: partial(mean_outliers, arm=arm) for arm, claim in N42_EQ9_CURV.items()},
}


class BNPaths(Experiment):
    name = "bn_paths"
    title = "N42: batch norm's direct path and statistics path, taken apart"
    short_names = {"N42": "BN's two paths, taken apart in training"}
    claims = CLAIMS
    config_class = PathsConfig
    estimators = ESTIMATORS
    setting_class = PathsSetting

    def tasks(self, cfg: PathsConfig) -> list[RunTask]:
        return grid_tasks(grid_arms(cfg), cfg.seed_list)

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        s = PathsSetting(tables, cfg)
        arms = [a for a in (NONE, EQ9, FULL, NO_MEAN, NO_VAR, DIRECT) if a in cfg.arms]
        col = P.colors(arms)
        fig, axes = P.figure(ncols=3, width=4.2, height=3.2)
        loss = tables.curve(M.BATCH_LOSS_AVG)
        norm = tables.series(M.WEIGHT_NORM_SQ, "median") if tables.has(M.WEIGHT_NORM_SQ) else None
        cos = cos_extremes(tables)
        for arm in arms:
            judged = set(s.picks.get(arm, {}).items())
            keep = lambda d: d[[(x, a) in judged for a, x in zip(d["arm"], d["seed"])]]  # noqa: E731
            P.mean_band(axes[0, 0], keep(loss[loss["step"] > 0]), arm, col[arm])
            if norm is not None and arm not in (NONE, EQ9):
                n = keep(norm[norm["layer"] == "layer3"])
                P.mean_band(axes[0, 1], n, arm, col[arm])
            c = cos[cos["arm"].isin([n for n, g in s.grid.items() if g.base == arm])]
            if len(c) and arm not in (NONE, EQ9):
                axes[0, 2].scatter([arms.index(arm)] * len(c), c["value"].clip(lower=1e-7), s=10, color=col[arm])
        axes[0, 0].axhline(cfg.analysis.target_loss, color="k", ls=":", lw=1, label="target")
        axes[0, 0].set(yscale="log", xlabel="step", ylabel="training loss", title="Training loss, tuned lr per arm")
        axes[0, 1].set(yscale="log", xlabel="step", ylabel="median ||w_j||^2, layer3", title="Weight norms")
        axes[0, 2].axhline(cfg.analysis.orth_tol, color="k", ls=":", lw=1)
        axes[0, 2].set_xticks(range(len(arms)), arms, rotation=30, fontsize=7)
        axes[0, 2].set(yscale="log", ylabel="largest |cos(w_j, grad_j)| per run", title="Orthogonality, every run")
        for ax in axes[0, :2]:
            P.legend(ax, fontsize=7)
        return [P.save(fig, out / "bn_paths.png")]
