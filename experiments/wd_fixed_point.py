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
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRow, bootstrap_ci, judge)

from . import theory as T
from .base import Experiment
from .common import status_note


@dataclass
class WDTheoryConfig:
    alphas: list[float] = param(default_factory=lambda: [0.01, 0.1, 1.0])
    lams: list[float] = param(default_factory=lambda: [1e-3, 1e-2])
    u0s: list[float] = param(default_factory=lambda: [0.01, 1.0, 100.0], help="starting ||w||^2")
    horizon: int = param(2_000_000, min=10)
    rel_tol: float = param(0.01, min=0.0, help="|u_K / u* - 1| allowed at the horizon")


@dataclass
class WDAnalysis(Analysis):
    eq_fraction: float = param(0.25, min=0.05, max=1.0, help="equilibrium = mean over this last fraction of steps")
    band: list[float] = param(default_factory=lambda: [0.8, 1.25], help="allowed measured/predicted ratio")
    max_drift: float = param(0.1, min=0.0, help="a cell is equilibrated if its angular update changes by less than this between the two halves of the window")
    settle_tolerance: float = param(0.1, min=0.0, help="time to equilibrium: first probe within this of the final value")
    min_order_fraction: float = param(0.8, min=0.0, max=1.0, help="fraction of cell pairs in which the larger alpha*lambda settles sooner")
    min_seeds: int = param(2, min=1)


@dataclass
class WDConfig(ExperimentConfig):
    theory: WDTheoryConfig = field(default_factory=WDTheoryConfig)
    analysis: WDAnalysis = field(default_factory=WDAnalysis)


def theory_curves(cfg: WDTheoryConfig) -> pd.DataFrame:
    grid = [(a, l, u0) for a in cfg.alphas for l in cfg.lams for u0 in cfg.u0s]
    alpha, lam, u0 = (np.array(v, dtype=float) for v in zip(*grid))
    steps = T.log_steps(cfg.horizon)
    u = T.iterate(alpha, lam, u0, cfg.horizon, steps)
    frames = [pd.DataFrame({"figure": "fig7", "alpha": alpha[j], "lam": lam[j], "u0": u0[j], "step": steps,
                            "u": u[:, j], "eff_lr": alpha[j] / u[:, j]}) for j in range(len(grid))]
    return pd.concat(frames, ignore_index=True)


def cell_table(tables: Tables, a: WDAnalysis) -> pd.DataFrame:
    """One row per (run, hidden layer): equilibrium measurements and the theory's predictions."""
    runs = tables.runs.set_index("run_id")
    m = tables.metrics
    m = m[(m["layer"] != "out") & (m["stat"] == "median") & (m["step"] > 0)]
    rows = []
    for (rid, layer), g in m.groupby(["run_id", "layer"]):
        r = runs.loc[rid]
        if r["status"] != "ok":
            continue
        alpha, lam, steps = float(r["optim.lr"]), float(r["optim.weight_decay"]), float(r["train.steps"])
        start = (1 - a.eq_fraction) * steps
        series = {k: v.sort_values("step") for k, v in g.groupby("metric")}
        if not {"weight_norm_sq", "normalized_grad_norm", "angular_update"} <= set(series):
            continue
        win = {k: v[v["step"] >= start] for k, v in series.items()}
        ang = win["angular_update"]
        half = len(ang) // 2
        drift = abs(ang["value"].iloc[half:].mean() / ang["value"].iloc[:half].mean() - 1) if half else np.nan
        u_meas = win["weight_norm_sq"]["value"].mean()
        g_rms = float(np.sqrt((win["normalized_grad_norm"]["value"] ** 2).mean()))
        step_eq = ang["value"].mean()
        full = series["angular_update"]
        settled = full[(full["value"] - step_eq).abs() <= a.settle_tolerance * step_eq]["step"]
        rows.append({"run_id": rid, "arm": r["arm"], "seed": r["seed"], "layer": layer, "alpha": alpha, "lam": lam,
                     "product": alpha * lam, "u_meas": u_meas,
                     "u_pred": float(T.fixed_point(alpha, lam, g_rms)), "step_meas": step_eq,
                     "step_pred": float(T.equilibrium_step(alpha, lam)), "drift": drift,
                     "settle_step": float(settled.min()) if len(settled) else np.nan,
                     "test_acc": float(r.get("final_test_acc", np.nan))})
    df = pd.DataFrame(rows)
    if len(df):
        df["equilibrated"] = df["drift"] < a.max_drift
    return df


class WDFixedPoint(Experiment):
    name = "wd_fixed_point"
    title = "K4: the weight-decay fixed point of the effective learning rate"
    claims = ("K4",)
    config_class = WDConfig

    def derived(self, cfg: WDConfig) -> dict[str, pd.DataFrame]:
        return {"theory": theory_curves(cfg.theory)}

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        cfg = self.typed_config(tables)
        a, lo, hi = cfg.analysis, *cfg.analysis.band
        rows = [self._theory_row(tables, cfg.theory)]
        cells = cell_table(tables, a)
        note = status_note(tables, sorted(set(tables.runs["arm"])))
        if cells.empty:
            return rows
        eq = cells[cells["equilibrated"]]
        share = cells.groupby("arm", sort=False)["equilibrated"].agg(["sum", "count"])
        eq_note = (f"{int(share['sum'].sum())} of {int(share['count'].sum())} (run, layer) series equilibrated "
                   f"(angular update moved < {a.max_drift:.0%} between the halves of the last "
                   f"{a.eq_fraction:.0%} of steps); only those are used. Per cell: "
                   + ", ".join(f"{arm} {int(r['sum'])}/{int(r['count'])}" for arm, r in share.iterrows()))
        within = lambda v: lo <= v <= hi  # noqa: E731

        def ratio_row(claim_id, statement, statistic, ratio_col):
            per_seed = eq.assign(r=ratio_col(eq)).groupby("seed")["r"].median().tolist()
            value = float(np.median(eq.assign(r=ratio_col(eq))["r"])) if len(eq) else float("nan")
            ci = bootstrap_ci(per_seed, stat=np.median)
            return ClaimRow(claim_id, statement, statistic, value, f"in [{lo:g}, {hi:g}]", ci[0], ci[1],
                            len(per_seed), judge(value, ci, within, len(per_seed), a.min_seeds),
                            eq_note + (f"; {note}" if note else ""))

        rows.append(ratio_row(
            "K4-norm", "With weight decay, ||w_j||^2 of BN-fed units settles at sqrt(alpha g^2 / (lambda (2 - alpha "
            "lambda))) for the measured normalized-gradient norm g (Grosse ch. 5, §5.1, Eqs. 23-24)",
            "median over cells, layers, seeds of measured / predicted equilibrium ||w_j||^2 (unit medians)",
            lambda d: d["u_meas"] / d["u_pred"]))
        rows.append(ratio_row(
            "K4-step", "At equilibrium the angle turned per step is sqrt(alpha lambda (2 - alpha lambda)) ~ "
            "sqrt(2 alpha lambda), whatever g is (Eq. 25)",
            "median over cells, layers, seeds of measured angular update / sqrt(alpha lambda (2 - alpha lambda))",
            lambda d: d["step_meas"] / d["step_pred"]))

        # equal-product pairs: same angular update although alpha differs
        per_cell = eq.groupby(["arm", "alpha", "lam", "product", "seed"])["step_meas"].mean().reset_index()
        pairs = []
        for (a1, r1), (a2, r2) in combinations(per_cell.groupby("arm"), 2):
            p1, p2 = r1["product"].iloc[0], r2["product"].iloc[0]
            if np.isclose(p1, p2, rtol=1e-6) and not np.isclose(r1["alpha"].iloc[0], r2["alpha"].iloc[0]):
                m = r1.set_index("seed")["step_meas"] / r2.set_index("seed")["step_meas"]
                pairs.append((a1, a2, m.dropna().tolist()))
        comparable = [p for p in pairs if p[2]]
        if comparable:
            worst = max(comparable, key=lambda p: abs(np.log(np.mean(p[2]))))
            value = float(np.mean(worst[2]))
            ci = bootstrap_ci(worst[2])
            rows.append(ClaimRow(
                "K4-pairs", "Cells with equal alpha*lambda reach the same angular update although alpha differs "
                "(Eq. 25)", "ratio of equilibrium angular updates within the least-matching equal-product pair",
                value, f"in [{lo:g}, {hi:g}]", ci[0], ci[1], len(worst[2]),
                judge(value, ci, within, len(worst[2]), a.min_seeds),
                "pairs: " + "; ".join(f"{x} / {y}: " + (f"{np.mean(v):.3f}" if v else
                                      "not comparable (no seed equilibrated in both)") for x, y, v in pairs)))

        # time to equilibrium shrinks as alpha*lambda grows
        settle = eq.groupby(["arm", "product"])["settle_step"].mean().reset_index()
        ordered, total = 0, 0
        for (_, r1), (_, r2) in combinations(settle.iterrows(), 2):
            if np.isclose(r1["product"], r2["product"], rtol=1e-6):
                continue
            total += 1
            fast, slow = (r1, r2) if r1["product"] > r2["product"] else (r2, r1)
            ordered += fast["settle_step"] <= slow["settle_step"]
        if total:
            value = ordered / total
            verdict = SUPPORTED if value >= a.min_order_fraction else NOT_SUPPORTED
            if len(settle) < 3:
                verdict = INCONCLUSIVE
            rows.append(ClaimRow(
                "K4-time", "The larger alpha*lambda, the sooner the norms equilibrate (the relaxation rate of "
                "Eq. 23 near u* is about 4 alpha lambda)", "fraction of cell pairs (different products) in which "
                "the larger product settles no later", value, f">= {a.min_order_fraction:g}", value, value, total,
                verdict, "settling step per cell: " + ", ".join(
                    f"{r.arm} {r.settle_step:.0f}" for r in settle.sort_values("product").itertuples())))
        return rows

    def _theory_row(self, tables: Tables, cfg: WDTheoryConfig) -> ClaimRow:
        th = tables.read("theory")
        last = th[th["step"] == th["step"].max()]
        err = (last["u"] / T.fixed_point(last["alpha"], last["lam"]) - 1).abs()
        value = float(err.max())
        approx = float((T.equilibrium_step(last["alpha"], last["lam"]) / np.sqrt(2 * last["alpha"] * last["lam"]) - 1).abs().max())
        return ClaimRow(
            "K4-theory", "Iterating Eq. 23 from any starting norm reaches the fixed point u* = sqrt(alpha / "
            "(lambda (2 - alpha lambda))) (g = 1), so the effective LR tends to sqrt(alpha lambda (2 - alpha lambda)) "
            "~ sqrt(2 alpha lambda) (Grosse ch. 5, §5.1, Eqs. 23-25, Fig. 7)",
            f"max over (alpha, lambda, u0) of |u_K / u* - 1| at K = {int(th['step'].max())}", value,
            f"< {cfg.rel_tol:g}", value, value, len(last), SUPPORTED if value < cfg.rel_tol else NOT_SUPPORTED,
            f"exact iteration; largest gap between sqrt(alpha lambda (2 - alpha lambda)) and its approximation "
            f"sqrt(2 alpha lambda) on this grid: {approx:.2%}")

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        paths = []
        th = tables.read("theory")
        fig, axes = P.figure(ncols=2)
        combos = th[["alpha", "lam"]].drop_duplicates().values.tolist()
        col = P.colors([f"{x:g},{y:g}" for x, y in combos])
        for alpha, lam in combos:
            c = col[f"{alpha:g},{lam:g}"]
            for u0, ls in zip(sorted(th["u0"].unique()), (":", "-", "--")):
                g = th[(th["alpha"] == alpha) & (th["lam"] == lam) & (th["u0"] == u0) & (th["step"] > 0)]
                axes[0, 0].plot(g["step"], g["eff_lr"], ls=ls, color=c, lw=1,
                                label=f"a={alpha:g}, l={lam:g}" if u0 == 1.0 else None)
            axes[0, 0].axhline(np.sqrt(2 * alpha * lam), color=c, lw=0.6, alpha=0.6)
        axes[0, 0].set(xscale="log", yscale="log", xlabel="step k", ylabel="effective LR alpha/u_k",
                       title="Eq. 23 (cf. Fig. 7): lines sqrt(2 alpha lambda);\nu0 = 0.01 dotted, 1 solid, 100 dashed")
        axes[0, 0].legend(fontsize=6)
        cells = cell_table(tables, cfg.analysis)
        ax = axes[0, 1]
        if len(cells):
            for eqd, marker in ((True, "o"), (False, "x")):
                d = cells[cells["equilibrated"] == eqd]
                ax.scatter(d["u_pred"], d["u_meas"], marker=marker, s=14, c=np.log10(d["product"]), cmap="viridis",
                           label="equilibrated" if eqd else "not equilibrated")
            lim = [min(cells["u_pred"].min(), cells["u_meas"].min()) * 0.8, max(cells["u_pred"].max(), cells["u_meas"].max()) * 1.25]
            ax.plot(lim, lim, "k--", lw=1, label="identity")
            ax.set(xscale="log", yscale="log", xlabel="predicted ||w_j||^2 (Eq. 23, measured g)",
                   ylabel="measured ||w_j||^2", title="Equilibrium norm: one point per run and layer\n(colour: log10 alpha*lambda)")
            ax.legend(fontsize=6)
        paths.append(P.save(fig, out / "wd_theory_and_norms.png"))

        fig, axes = P.figure(ncols=2)
        ang = tables.metrics
        ang = ang[(ang["metric"] == "angular_update") & (ang["stat"] == "median") & (ang["layer"] != "out") & (ang["step"] > 0)]
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
            axes[0, 0].plot(g.index, g.values, ls=next(styles[key]), color=pcol[key], lw=1.2, label=arm)
        for p in products:
            axes[0, 0].axhline(np.sqrt(p * (2 - p)), color=pcol[f"{p:g}"], lw=0.8, alpha=0.5)
        axes[0, 0].set(xscale="log", yscale="log", xlabel="step", ylabel="angle turned per step (median unit)",
                       title="Angular update; equal colour = equal alpha*lambda,\nthin lines: sqrt(alpha lambda (2 - alpha lambda))")
        axes[0, 0].legend(fontsize=6)
        ax = axes[0, 1]
        acc = tables.runs[tables.runs["status"] == "ok"].groupby(["optim.lr", "optim.weight_decay"])["final_test_acc"].mean().unstack()
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
        paths.append(P.save(fig, out / "wd_angular_and_accuracy.png"))
        return paths
