"""wd_fixed_point (K4): weight decay sets the effective learning rate of scale-invariant weights.

Grosse ch. 5, §5.1 (Eqs. 22-25, Fig. 7). With weight decay lambda, plain SGD on a unit that feeds
BN follows Eq. 23, u_{k+1} = (1 - alpha lambda)^2 u_k + alpha^2 g^2 / u_k (u = ||w_j||^2, g the
normalized-gradient norm), whose fixed point is u* = sqrt(alpha g^2 / (lambda (2 - alpha lambda))).
There the angle turned per step, alpha g / u*, equals sqrt(alpha lambda (2 - alpha lambda)) ~
sqrt(2 alpha lambda): it depends on the product alpha*lambda only, not on g nor on alpha alone.

Theory part: Eq. 23 iterated exactly from several starting norms (Fig. 7), in theory.csv.
Measured part: the BN MLP trained with SGD and coupled weight decay over (alpha, lambda) cells
that include pairs with equal alpha*lambda; `normlab sweep wd` runs a larger grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import Literal

import matplotlib.ticker
import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.claims import EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.stats import geometric_t, paired_t, t_interval
from normlab.engine.executor import ParallelMap, serial_map

from . import theory as T
from normlab.engine.experiment import Experiment, Setting, arm_configs
from .common import needs_probes, status_note

K4_THEORY = Claim(
    "K4-theory",
    EXACT,
    "Iterating Eq. 23 from any starting norm reaches the fixed point u* = sqrt(alpha / "
    "(lambda (2 - alpha lambda))) (g = 1), so the effective LR tends to sqrt(alpha lambda (2 - alpha lambda)) "
    "~ sqrt(2 alpha lambda) (Grosse ch. 5, §5.1, Eqs. 23-25, Fig. 7)",
    "max over (alpha, lambda, u0) of |u_K / u* - 1| at the horizon K",
    Rule("<", "theory_rel_tol"),
)
K4_NORM = Claim(
    "K4-norm",
    MEASURED,
    "With weight decay, each BN-fed unit's ||w_j||^2 settles at sqrt(alpha g_j^2 / (lambda "
    "(2 - alpha lambda))) for its own mean squared normalized-gradient norm g_j^2 (Grosse ch. 5, §5.1, Eqs. 23-24)",
    "geometric mean over seeds of measured / predicted u_j (per run: median over units; per seed: geometric "
    "mean over cells)",
    Rule("in", "band"),
)
K4_STEP = Claim(
    "K4-step",
    MEASURED,
    "At equilibrium the rms angle turned per step is sqrt(alpha lambda (2 - alpha lambda)) "
    "~ sqrt(2 alpha lambda), whatever g is (Eq. 25)",
    "geometric mean over seeds of the units' rms angular update / sqrt(alpha lambda (2 - alpha lambda)) (per run: "
    "median over units)",
    Rule("in", "band"),
)
K4_PAIRS = Claim(
    "K4-pairs",
    MEASURED,
    "Cells with equal alpha*lambda reach the same rms angular update although alpha differs (Eq. 25)",
    "ratio of rms angular updates in the least-matching equal-product pair, paired by seed (t on log ratios)",
    Rule("in", "band"),
)
K4_TIME = Claim(
    "K4-time",
    MEASURED,
    "The larger alpha*lambda, the sooner the norms equilibrate (the relaxation rate of Eq. 23 "
    "near u* is about 4 alpha lambda)",
    "per seed: fraction of cell pairs (different products) in which the "
    "larger product settles no later; mean over seeds",
    Rule(">=", "min_order_fraction"),
)


@dataclass
class WDTheoryConfig:
    alphas: list[float] = param(default_factory=lambda: [0.01, 0.1, 1.0])
    lams: list[float] = param(default_factory=lambda: [1e-3, 1e-2])
    u0s: list[float] = param(default_factory=lambda: [0.01, 1.0, 100.0], help="starting ||w||^2")
    horizon: int = param(2_000_000, min=10)


@dataclass
class WDAnalysis(Analysis):
    eq_fraction: float = param(0.25, min=0.05, max=1.0, help="equilibrium = mean over this last fraction of steps")
    theory_rel_tol: float = param(0.01, min=0.0, help="K4-theory: |u_K / u* - 1| allowed at the horizon")
    band: list[float] = param(default_factory=lambda: [0.8, 1.25], help="allowed measured/predicted ratio")
    max_drift: float = param(
        0.1,
        min=0.0,
        help="a cell is equilibrated if, in every layer, the equilibrium_by series changes by less than this between "
        "the two halves of the window",
    )
    equilibrium_by: Literal["weight_norm", "angular_update"] = param(
        "weight_norm",
        help="the series whose drift decides equilibrium: the layer's median ||w_j||^2 (the slow variable whose "
        "fixed point Eq. 23 gives) or its median angular update per step (one step's angle per probe: noisy)",
    )
    settle_tolerance: float = param(
        0.1, min=0.0, help="time to equilibrium: first probe within this of the final value"
    )
    min_order_fraction: float = param(
        0.8, min=0.0, max=1.0, help="fraction of cell pairs in which the larger alpha*lambda settles sooner"
    )


@dataclass
class WDConfig(ExperimentConfig):
    theory: WDTheoryConfig = field(default_factory=WDTheoryConfig)
    analysis: WDAnalysis = field(default_factory=WDAnalysis)

    def check(self, path: str = "") -> None:
        needs_probes(self.run, "wd_fixed_point", "weights", "norms, gradients and angular updates come from the probes")
        if self.run.probes.unit_window != self.analysis.eq_fraction:
            raise C.ConfigError(
                f"run.probes.unit_window: {self.run.probes.unit_window:g} must equal "
                f"analysis.eq_fraction ({self.analysis.eq_fraction:g}), the window the per-unit "
                "means are taken over; set both"
            )


def theory_curves(cfg: WDTheoryConfig) -> pd.DataFrame:
    grid = [(a, lam, u0) for a in cfg.alphas for lam in cfg.lams for u0 in cfg.u0s]
    alpha, lam, u0 = (np.array(v, dtype=float) for v in zip(*grid))
    steps = T.log_steps(cfg.horizon)
    u = T.iterate(alpha, lam, u0, cfg.horizon, steps)
    frames = [
        pd.DataFrame(
            {
                "figure": "fig7",
                "alpha": alpha[j],
                "lam": lam[j],
                "u0": u0[j],
                "step": steps,
                "u": u[:, j],
                "eff_lr": alpha[j] / u[:, j],
            }
        )
        for j in range(len(grid))
    ]
    return pd.concat(frames, ignore_index=True)


def cell_table(tables: Tables, a: WDAnalysis) -> pd.DataFrame:
    """One row per finished run: the per-unit equilibrium measurements reduced over units at the end
    (medians of measured/predicted), the equilibration check and the settling step. alpha and
    lambda come from each arm's resolved config."""
    cfg = C.from_dict(WDConfig, tables.config)
    arm_cfg = arm_configs(cfg)

    def hidden(metric: str) -> pd.DataFrame:
        d = tables.series(metric, "median")
        return d[(d["layer"] != "out") & (d["step"] > 0)]

    summ, norms = hidden(M.ANGULAR_UPDATE), hidden(M.WEIGHT_NORM_SQ)
    unit = tables.metrics.iloc[:0]
    if tables.has(M.UNIT_U_MEAN):  # the per-unit window is optional (probes.unit_window)
        unit = pd.concat([tables.series(k, "unit") for k in (M.UNIT_U_MEAN, M.UNIT_G2_MEAN, M.UNIT_ANG2_MEAN)])
    rows = []
    for r in tables.runs.to_dict("records"):
        if r["status"] != "ok" or r["arm"] not in arm_cfg:
            continue
        rc = arm_cfg[r["arm"]]
        alpha, lam, steps = rc.optim.lr, rc.optim.weight_decay, rc.train.steps
        start = (1 - a.eq_fraction) * steps
        drifts, norm_drifts, settle = [], [], []
        for _, g in norms[norms["run_id"] == r["run_id"]].groupby("layer"):
            norm_drifts.append(_half_drift(g.sort_values("step"), start))
        for _, g in summ[summ["run_id"] == r["run_id"]].groupby("layer"):
            g = g.sort_values("step")
            drifts.append(_half_drift(g, start))
            eq = g[g["step"] >= start]["value"].mean()
            ok = g[(g["value"] - eq).abs() <= a.settle_tolerance * eq]["step"]
            settle.append(float(ok.min()) if len(ok) else np.nan)
        d = unit[unit["run_id"] == r["run_id"]].pivot_table(index=["layer", "item"], columns="metric", values="value")
        if d.empty or not drifts:
            continue
        u_pred = T.fixed_point(alpha, lam, np.sqrt(d[M.UNIT_G2_MEAN]))
        norm_ratio = d[M.UNIT_U_MEAN] / u_pred
        step_ratio = np.sqrt(d[M.UNIT_ANG2_MEAN]) / float(T.equilibrium_step(alpha, lam))
        rows.append(
            {
                "run_id": r["run_id"],
                "arm": r["arm"],
                "seed": int(r["seed"]),
                "alpha": alpha,
                "lam": lam,
                "product": alpha * lam,
                "norm_ratio": float(norm_ratio.median()),
                "norm_q10": float(norm_ratio.quantile(0.1)),
                "norm_q90": float(norm_ratio.quantile(0.9)),
                "step_ratio": float(step_ratio.median()),
                "step_q10": float(step_ratio.quantile(0.1)),
                "step_q90": float(step_ratio.quantile(0.9)),
                "ang_rms": float(np.sqrt(d[M.UNIT_ANG2_MEAN]).median()),
                "u_meas": float(d[M.UNIT_U_MEAN].median()),
                "u_pred": float(np.median(u_pred)),
                "drift_angle": _nanmax(drifts),
                "drift_norm": _nanmax(norm_drifts),
                "settle_step": _nanmax(settle),
                "test_acc": float(r.get(M.final(M.TEST_ACC), np.nan)),
            }
        )
    df = pd.DataFrame(rows)
    if len(df):
        df["drift"] = df["drift_norm" if a.equilibrium_by == "weight_norm" else "drift_angle"]
        df["equilibrated"] = df["drift"] < a.max_drift
    return df


def _half_drift(g: pd.DataFrame, start: float) -> float:
    """|mean of the window's second half / mean of its first half - 1| for one layer's series."""
    win = g[g["step"] >= start]["value"]
    half = len(win) // 2
    return abs(win.iloc[half:].mean() / win.iloc[:half].mean() - 1) if half else np.nan


def _nanmax(values: list[float]) -> float:
    a = np.asarray(values, dtype=float)
    return float(a[np.isfinite(a)].max()) if np.isfinite(a).any() else float("nan")


def _geo_over_seeds(eq: pd.DataFrame, col: str):
    """Per seed the geometric mean over cells of `col`; then a t interval on the logs over seeds."""
    return geometric_t(np.exp(np.log(eq[col]).groupby(eq["seed"]).mean()))


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class WDSetting(Setting):
    """What every K4 estimator reads: the per-run equilibrium table and the runs used (equilibrated)."""

    @cached_property
    def cells(self) -> pd.DataFrame:
        return cell_table(self.tables, self.a)

    @cached_property
    def eq(self) -> pd.DataFrame:
        return self.cells[self.cells["equilibrated"]]

    @cached_property
    def note(self) -> str:
        return status_note(self.tables, sorted(set(self.tables.runs["arm"])))

    @cached_property
    def eq_note(self) -> str:
        a = self.a
        share = self.cells.groupby("arm", sort=False)["equilibrated"].agg(["sum", "count"])
        by = "median ||w_j||^2" if a.equilibrium_by == "weight_norm" else "median angular update"
        return (
            f"{int(share['sum'].sum())} of {int(share['count'].sum())} runs equilibrated ({by} moved "
            f"< {a.max_drift:.0%} between the halves of the last {a.eq_fraction:.0%} of steps, every layer); "
            "only those are used. Per cell: "
            + ", ".join(f"{arm} {int(r['sum'])}/{int(r['count'])}" for arm, r in share.iterrows())
        )


NO_CELLS = "no finished run with per-unit statistics (run.probes.unit_window)"


def k4_theory(s: WDSetting) -> Estimate:
    th = s.tables.read("theory")
    last = th[th["step"] == th["step"].max()]
    err = (last["u"] / T.fixed_point(last["alpha"], last["lam"]) - 1).abs()
    approx = float(
        (T.equilibrium_step(last["alpha"], last["lam"]) / np.sqrt(2 * last["alpha"] * last["lam"]) - 1).abs().max()
    )
    return Estimate(
        float(err.max()),
        n=len(last),
        detail=(
            f"exact iteration to K = {int(th['step'].max())}; largest gap between sqrt(alpha lambda (2 - "
            f"alpha lambda)) "
            f"and its approximation sqrt(2 alpha lambda) on this grid: {approx:.2%}"
        ),
    )


def _ratio_to_prediction(s: WDSetting, col: str, q: str) -> Estimate:
    """Geometric mean over seeds of the units' measured / predicted `col` (norm or step)."""
    if s.cells.empty:
        return Estimate.missing(NO_CELLS)
    eq = s.eq
    est, ci, n = _geo_over_seeds(eq, col)
    spread = (
        (
            f"units' measured/predicted, medians over runs of q10 {eq[f'{q}_q10'].median():.3f}, "
            f"q50 {eq[col].median():.3f}, q90 {eq[f'{q}_q90'].median():.3f}"
        )
        if len(eq)
        else ""
    )
    return Estimate(est, ci, n, [], "; ".join(x for x in (spread, s.eq_note, s.note) if x))


def k4_norm(s: WDSetting) -> Estimate:
    return _ratio_to_prediction(s, "norm_ratio", "norm")


def k4_step(s: WDSetting) -> Estimate:
    return _ratio_to_prediction(s, "step_ratio", "step")


def k4_pairs(s: WDSetting) -> Estimate:
    """Equal-product pairs: the same rms angular update although alpha differs."""
    if s.cells.empty:
        return Estimate.missing(NO_CELLS)
    eq = s.eq
    per_cell = eq.pivot_table(index="seed", columns="arm", values="ang_rms")
    prod = eq.groupby("arm")[["product", "alpha"]].first()
    pairs = []
    for a1, a2 in combinations(prod.index, 2):
        if np.isclose(prod.loc[a1, "product"], prod.loc[a2, "product"], rtol=1e-6) and not np.isclose(
            prod.loc[a1, "alpha"], prod.loc[a2, "alpha"]
        ):
            ratio, ci, n = paired_t(per_cell[a1].to_numpy(), per_cell[a2].to_numpy(), log_ratio=True)
            pairs.append((a1, a2, ratio, ci, n))
    usable = [p for p in pairs if p[4] > 0]
    if not usable:
        return Estimate.missing("no equal-product pair with a seed equilibrated in both cells")
    worst = max(usable, key=lambda p: abs(np.log(p[2])))
    detail = "pairs (ratio, CI, n): " + "; ".join(
        f"{x} / {y}: {r:.3f} [{c.low:.3f}, {c.high:.3f}], n {n}" for x, y, r, c, n in pairs
    )
    return Estimate(worst[2], worst[3], worst[4], [], detail)


def k4_time(s: WDSetting) -> Estimate:
    """Time to equilibrium shrinks as alpha*lambda grows: per seed, the fraction of ordered pairs."""
    if s.cells.empty:
        return Estimate.missing(NO_CELLS)
    eq = s.eq
    fractions = []
    for _, g in eq.groupby("seed"):
        ordered = total = 0
        for (_, r1), (_, r2) in combinations(g.iterrows(), 2):
            if np.isclose(r1["product"], r2["product"], rtol=1e-6):
                continue
            total += 1
            fast, slow = (r1, r2) if r1["product"] > r2["product"] else (r2, r1)
            ordered += fast["settle_step"] <= slow["settle_step"]
        if total:
            fractions.append(ordered / total)
    settle = eq.groupby("arm")[["product", "settle_step"]].mean().sort_values("product")
    enough = Check(
        "cells with different products",
        eq["product"].nunique() >= 2,
        "needs equilibrated cells at two or more values of alpha*lambda",
    )
    return Estimate(
        float(np.mean(fractions)) if fractions else float("nan"),
        t_interval(fractions),
        len(fractions),
        [enough],
        "mean settling step per cell: " + ", ".join(f"{arm} {r.settle_step:.0f}" for arm, r in settle.iterrows()),
    )


class WDFixedPoint(Experiment):
    name = "wd_fixed_point"
    title = "K4: the weight-decay fixed point of the effective learning rate"
    short_names = {"K4": "the weight-decay fixed point"}
    claims = (K4_THEORY, K4_NORM, K4_STEP, K4_PAIRS, K4_TIME)
    config_class = WDConfig
    estimators = {K4_THEORY: k4_theory, K4_NORM: k4_norm, K4_STEP: k4_step, K4_PAIRS: k4_pairs, K4_TIME: k4_time}

    def derived(self, cfg: WDConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        return {"theory": theory_curves(cfg.theory)}

    setting_class = WDSetting

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        fig, axes = P.figure(ncols=2)
        _plot_theory(axes[0, 0], tables.read("theory"))
        _plot_norms(axes[0, 1], cell_table(tables, cfg.analysis))
        paths = [P.save(fig, out / "wd_theory_and_norms.png")]
        fig, axes = P.figure(ncols=2)
        _plot_angles(axes[0, 0], tables)
        _plot_accuracy(axes[0, 1], fig, tables)
        paths.append(P.save(fig, out / "wd_angular_and_accuracy.png"))
        return paths


def _plot_theory(ax, th: pd.DataFrame) -> None:
    """Eq. 23's effective learning rate over steps from three starting norms, against sqrt(2 alpha lambda)."""
    combos = th[["alpha", "lam"]].drop_duplicates().values.tolist()
    col = P.colors([f"{x:g},{y:g}" for x, y in combos])
    for alpha, lam in combos:
        c = col[f"{alpha:g},{lam:g}"]
        for u0, ls in zip(sorted(th["u0"].unique()), (":", "-", "--")):
            g = th[(th["alpha"] == alpha) & (th["lam"] == lam) & (th["u0"] == u0) & (th["step"] > 0)]
            ax.plot(
                g["step"], g["eff_lr"], ls=ls, color=c, lw=1, label=f"a={alpha:g}, l={lam:g}" if u0 == 1.0 else None
            )
        ax.axhline(np.sqrt(2 * alpha * lam), color=c, lw=0.6, alpha=0.6)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step k",
        ylabel="effective LR alpha/u_k",
        title="Eq. 23 (cf. Fig. 7): lines sqrt(2 alpha lambda);\nu0 = 0.01 dotted, 1 solid, 100 dashed",
    )
    P.legend(ax, fontsize=6)


def _plot_norms(ax, cells: pd.DataFrame) -> None:
    """Each run's measured equilibrium norm against Eq. 23's prediction from its measured gradient."""
    if len(cells):
        for eqd, marker in ((True, "o"), (False, "x")):
            d = cells[cells["equilibrated"] == eqd]
            ax.scatter(
                d["u_pred"],
                d["u_meas"],
                marker=marker,
                s=14,
                c=np.log10(d["product"]),
                cmap="viridis",
                label="equilibrated" if eqd else "not equilibrated",
            )
        lim = [
            min(cells["u_pred"].min(), cells["u_meas"].min()) * 0.8,
            max(cells["u_pred"].max(), cells["u_meas"].max()) * 1.25,
        ]
        ax.plot(lim, lim, "k--", lw=1, label="identity")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="predicted ||w_j||^2 (Eq. 23, measured g)",
            ylabel="measured ||w_j||^2",
            title="Equilibrium norm: one point per run (median unit)\n(colour: log10 alpha*lambda)",
        )
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        for axis in (ax.xaxis, ax.yaxis):  # labels at 1, 2 and 5 per decade: 2x .. 9x overlapped
            axis.set_major_formatter(plain)
            axis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            axis.set_minor_formatter(plain)
        P.legend(ax, fontsize=6)


def _plot_angles(ax, tables: Tables) -> None:
    """The angle each unit turns per step, by alpha*lambda, against Eq. 25's equilibrium angle."""
    ang = tables.series(M.ANGULAR_UPDATE, "median")
    ang = ang[(ang["layer"] != "out") & (ang["step"] > 0)]
    runs = tables.runs.drop_duplicates("arm").set_index("arm")
    products = sorted({float(runs.loc[x, "optim.lr"]) * float(runs.loc[x, "optim.weight_decay"]) for x in runs.index})
    pcol = P.colors([f"{p:g}" for p in products])
    styles = {}
    for arm in runs.index:
        alpha, lam = float(runs.loc[arm, "optim.lr"]), float(runs.loc[arm, "optim.weight_decay"])
        key = f"{alpha * lam:g}"
        styles.setdefault(key, iter(["-", "--", ":", "-."]))
        d = ang[ang["arm"] == arm].groupby(["seed", "step"])["value"].mean().reset_index()
        g = d.groupby("step")["value"].mean()
        ax.plot(g.index, g.values, ls=next(styles[key]), color=pcol[key], lw=1.2, label=arm)
    for p in products:
        ax.axhline(np.sqrt(p * (2 - p)), color=pcol[f"{p:g}"], lw=0.8, alpha=0.5)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step",
        ylabel="angle turned per step (median unit)",
        title="Angular update; equal colour = equal alpha*lambda,\nthin lines: sqrt(alpha lambda (2 - alpha lambda))",
    )
    P.legend(ax, fontsize=6)


def _plot_accuracy(ax, fig, tables: Tables) -> None:
    """Mean test accuracy over the (alpha, lambda) grid."""
    acc = (
        tables.runs[tables.runs["status"] == "ok"]
        .groupby(["optim.lr", "optim.weight_decay"])[M.final(M.TEST_ACC)]
        .mean()
        .unstack()
    )
    if not acc.empty:
        im = ax.imshow(100 * acc.values, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(acc.shape[1]), [f"{v:g}" for v in acc.columns])
        ax.set_yticks(range(acc.shape[0]), [f"{v:g}" for v in acc.index])
        for (i, j), v in np.ndenumerate(100 * acc.values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=7)
        ax.set(xlabel="weight decay lambda", ylabel="step size alpha", title="Test accuracy (%), mean over seeds")
        ax.grid(False)
        fig.colorbar(im, ax=ax)
