"""eff_lr (K3, with K13): batch norm's implicit learning-rate decay.

Grosse ch. 5, §4.3 (Eqs. 16-19, Figs. 5-6). A unit whose incoming weights w_j feed a normalizer
has a loss that ignores the scale of w_j, so its gradient is orthogonal to w_j (Eq. 16 with
k = 0) and every SGD step lengthens w_j (Eq. 19). The effective learning rate alpha/||w_j||^2 then
decays like 1/sqrt(2k) whatever alpha is: alpha only sets a transient.

Theory part: Eq. 19 iterated exactly for several alpha (Fig. 6), written to theory.csv.
Measured part: a BN MLP trained with plain SGD at several alphas (no momentum, no weight decay),
Adam, a control that puts every scale-invariant w_j back on the unit sphere after each step, and
layer-norm and weight-norm networks (§4.4). The read-out layer, which feeds no normalizer, is
the control for the Euler identity.
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
from normlab.engine.stats import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRow, bootstrap_ci,
                                  bootstrap_ci_fn, judge)

from . import theory as T
from .base import Experiment
from .common import status_note


@dataclass
class TheoryConfig:
    alphas: list[float] = param(default_factory=lambda: [0.001, 0.01, 0.1, 1.0], help="Fig. 6 step sizes")
    u0: float = param(1.0, min=1e-6, help="||w_0||^2 of the theory curves (Fig. 6 uses 1)")
    horizon: int = param(1_000_000, min=10, help="steps the recurrence is iterated")
    rel_tol: float = param(0.01, min=0.0, help="|alpha/u_k * sqrt(2k) - 1| allowed at k = 100 k0")


@dataclass
class EffLRAnalysis(Analysis):
    sgd_arms: list[str] = param(default_factory=lambda: ["sgd_a0.01", "sgd_a0.1", "sgd_a1"])
    adam_arms: list[str] = param(default_factory=lambda: ["adam"])
    renorm_arm: str = param("renorm")
    extra_norm_arms: list[str] = param(default_factory=lambda: ["layernorm", "weightnorm"], help="K13 arms")
    late_fraction: float = param(0.5, min=0.05, max=1.0, help="slope fit window: the last fraction of training")
    slope_band: list[float] = param(default_factory=lambda: [-0.75, -0.25], help="allowed late slope")
    transient_factor: float = param(10.0, min=1.0, help="an arm counts as past its transient if the fit window starts after this * k0")
    max_spread_ratio: float = param(0.03, min=0.0, help="(spread of final eff. LRs) / (spread of alphas) must be below this")
    euler_max_cos: float = param(1e-3, min=0.0, help="|cos(w_j, grad_j)| allowed for scale-invariant units")
    growth_min_fraction: float = param(0.95, min=0.0, max=1.0, help="fraction of probe intervals in which ||w||^2 must grow")
    renorm_tolerance: float = param(0.01, min=0.0, help="|eff_lr / alpha - 1| allowed in the renormalized control")
    min_seeds: int = param(2, min=1)


@dataclass
class EffLRConfig(ExperimentConfig):
    theory: TheoryConfig = field(default_factory=TheoryConfig)
    analysis: EffLRAnalysis = field(default_factory=EffLRAnalysis)


def _layer_series(tables: Tables, metric: str, stat: str, invariant_only: bool = True) -> pd.DataFrame:
    """Rows of `metric`/`stat` for the hidden (normalizer-fed) layers, i.e. all but `out`."""
    m = tables.metrics
    sel = m[(m["metric"] == metric) & (m["stat"] == stat)]
    if invariant_only:
        sel = sel[sel["layer"] != "out"]
    return sel


def _per_seed(df: pd.DataFrame, arm: str, fn) -> list[float]:
    out = []
    for _, g in df[df["arm"] == arm].groupby("seed"):
        out.append(fn(g))
    return out


def _slope(g: pd.DataFrame, start: float) -> float:
    """Least-squares slope of log(value) on log(step) for steps >= start, averaged over layers."""
    slopes = []
    for _, lg in g[(g["step"] >= start) & (g["step"] > 0) & (g["value"] > 0)].groupby("layer"):
        if len(lg) >= 3:
            slopes.append(np.polyfit(np.log(lg["step"]), np.log(lg["value"]), 1)[0])
    return float(np.mean(slopes)) if slopes else float("nan")


def theory_curves(cfg: TheoryConfig) -> pd.DataFrame:
    alphas = np.array(cfg.alphas, dtype=float)
    steps = T.log_steps(cfg.horizon)
    u = T.iterate(alphas, 0.0, cfg.u0, cfg.horizon, steps)
    rows = []
    for j, a in enumerate(alphas):
        rows.append(pd.DataFrame({"figure": "fig6", "alpha": a, "lam": 0.0, "u0": cfg.u0, "step": steps,
                                  "u": u[:, j], "eff_lr": a / u[:, j]}))
    return pd.concat(rows, ignore_index=True)


class EffLR(Experiment):
    name = "eff_lr"
    title = "K3: batch norm's implicit learning-rate decay (and K13: weight norm, layer norm)"
    claims = ("K3", "K13")
    config_class = EffLRConfig

    def derived(self, cfg: EffLRConfig) -> dict[str, pd.DataFrame]:
        return {"theory": theory_curves(cfg.theory)}

    # ---------------------------------------------------------------- claims
    def analyze(self, tables: Tables) -> list[ClaimRow]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        arms = set(tables.runs["arm"])
        lr = tables.runs.groupby("arm")["optim.lr"].first().to_dict()
        steps = float(tables.runs["train.steps"].max())
        rows = [self._theory_row(tables, cfg.theory)]
        sgd = [x for x in a.sgd_arms if x in arms]
        note = status_note(tables, sorted(arms))

        # Euler: w_j . grad_j = 0 for normalizer-fed units; the read-out is the control
        cos = _layer_series(tables, "w_grad_cos", "q75")
        cos25 = _layer_series(tables, "w_grad_cos", "q25")
        mag = pd.concat([cos, cos25.assign(value=cos25["value"].abs())])
        mag["value"] = mag["value"].abs()
        per_seed = [v for arm in sgd for v in _per_seed(mag, arm, lambda g: g["value"].median())]
        out_cos = _layer_series(tables, "w_grad_cos", "median", invariant_only=False)
        out_cos = out_cos[(out_cos["layer"] == "out") & out_cos["arm"].isin(sgd)]["value"].abs().median()
        value = float(np.median(per_seed)) if per_seed else float("nan")
        ci = bootstrap_ci(per_seed, stat=np.median)
        rows.append(ClaimRow(
            "K3-euler", "Incoming weights of units that feed BN are orthogonal to their gradient "
            "(Grosse ch. 5, §4.3, Eq. 16 with k = 0); the read-out layer, which feeds no normalizer, is not",
            "typical |cos(w_j, grad_j)| of BN-fed units (quartile magnitude, median over probes and seeds)",
            value, f"< {a.euler_max_cos:g}", ci[0], ci[1], len(per_seed),
            judge(value, ci, lambda v: v < a.euler_max_cos, len(per_seed), a.min_seeds),
            f"read-out layer (control): median |cos| {out_cos:.3g}" + (f"; {note}" if note else "")))

        # Monotone growth of ||w_j||^2 (Eq. 19)
        rows.append(self._growth_row("K3-growth", tables, sgd, "median", a,
                                     "Under SGD the norms of BN-fed weights grow monotonically (Eq. 19)"))

        # Late-phase slope of the effective LR, SGD arms past their transient
        eff = _layer_series(tables, "eff_lr", "median")
        u = _layer_series(tables, "weight_norm_sq", "median")
        gn = _layer_series(tables, "normalized_grad_norm", "median")
        start = (1 - a.late_fraction) * steps
        past, transient = [], []
        for arm in sgd:
            u0 = u[(u["arm"] == arm) & (u["step"] == 0)]["value"].median()
            g = gn[(gn["arm"] == arm) & (gn["step"] <= start)]["value"].median()
            k0 = float(T.transient(lr[arm], u0, g))
            (past if start >= a.transient_factor * k0 else transient).append((arm, k0))
        slopes = [s for arm, _ in past for s in _per_seed(eff, arm, lambda g: _slope(g, start))]
        rows.append(self._slope_row("K3-slope", slopes, a,
                                    "Past its transient, the effective LR alpha/||w_j||^2 of SGD decays like "
                                    "1/sqrt(k) (Grosse ch. 5, §4.3, Fig. 6)",
                                    f"late log-log slope of eff. LR (steps >= {start:.0f}), arms past transient",
                                    "arms past transient: " + (", ".join(f"{x} (k0~{k:.0f})" for x, k in past) or "none")
                                    + "; still in transient: " + (", ".join(f"{x} (k0~{k:.0f})" for x, k in transient) or "none")))

        # Adam: angle turned per step (its steps are normalized per coordinate)
        ang = _layer_series(tables, "angular_update", "median")
        adam_slopes = [s for arm in a.adam_arms if arm in arms for s in _per_seed(ang, arm, lambda g: _slope(g, start))]
        if adam_slopes:
            rows.append(self._slope_row("K3-adam", adam_slopes, a,
                                        "With Adam the implicit decay is also O(1/sqrt(k)) (Grosse ch. 5, §4.3)",
                                        f"late log-log slope of the measured angular update (steps >= {start:.0f})",
                                        "Adam's step is normalized per coordinate, so its effective LR is the angle "
                                        "turned per step, not alpha/||w||^2"))

        # Spread of final effective LRs across alphas
        final = eff[eff["step"] >= start]
        groups = [_per_seed(final, arm, lambda g: g["value"].mean()) for arm in sgd]
        if len(sgd) >= 2:
            alpha_spread = max(lr[x] for x in sgd) / min(lr[x] for x in sgd)
            spread = lambda *m: (max(m) / min(m)) / alpha_spread  # noqa: E731
            means = [np.mean(g) for g in groups]
            value = spread(*means)
            ci = bootstrap_ci_fn(groups, spread)
            n = min(len(g) for g in groups)
            rows.append(ClaimRow(
                "K3-spread", "The explicit learning rate only matters for a transient: late effective LRs "
                "are nearly the same for every alpha (Grosse ch. 5, §4.3, Fig. 6)",
                "(max/min late eff. LR across alphas) / (max/min alpha)", value, f"< {a.max_spread_ratio:g}",
                ci[0], ci[1], n, judge(value, ci, lambda v: v < a.max_spread_ratio, n, a.min_seeds),
                "late mean eff. LR per arm: " + ", ".join(f"{x} {m:.3g}" for x, m in zip(sgd, means))
                + f"; alpha spread {alpha_spread:g}x"))

        # Renormalized control: effective LR equals alpha
        if a.renorm_arm in arms:
            r = eff[(eff["arm"] == a.renorm_arm) & (eff["step"] > 0)]
            ratios = _per_seed(r, a.renorm_arm, lambda g: float((g["value"] / lr[a.renorm_arm]).median()))
            value = float(np.median(ratios))
            ci = bootstrap_ci(ratios)
            rows.append(ClaimRow(
                "K3-renorm", "Rescaling every BN-fed w_j to unit norm after each step keeps the effective LR "
                "equal to alpha (the chapter's third option, §4.3)", "median eff. LR / alpha after step 0",
                value, f"within 1 +- {a.renorm_tolerance:g}", ci[0], ci[1], len(ratios),
                judge(value, ci, lambda v: abs(v - 1) <= a.renorm_tolerance, len(ratios), a.min_seeds)))

        extra = [x for x in a.extra_norm_arms if x in arms]
        if extra:
            rows.append(self._growth_row("K13", tables, extra, "mean", a,
                                         "Weight norm and layer norm show the same norm growth as BN; layer norm "
                                         "only for the whole matrix (Grosse ch. 5, §4.4)"))
        return rows

    def _theory_row(self, tables: Tables, cfg: TheoryConfig) -> ClaimRow:
        th = tables.read("theory")
        errs, still, per_alpha = [], [], []
        for alpha, g in th.groupby("alpha"):
            k0 = float(T.transient(alpha, cfg.u0))
            rel = (g["eff_lr"] * np.sqrt(2 * g["step"]) - 1).abs()
            late = rel[g["step"] >= 100 * k0]
            if late.empty:
                still.append(f"{alpha:g} (k0 = {k0:.3g})")
                continue
            errs.append(float(late.max()))
            later = rel[g["step"] >= 1000 * k0]
            per_alpha.append(f"alpha {alpha:g}: {errs[-1]:.2%} at k >= 100 k0"
                             + (f", {later.max():.2%} at k >= 1000 k0" if len(later) else ""))
        value = max(errs) if errs else float("nan")
        verdict = INCONCLUSIVE if not errs else (SUPPORTED if value < cfg.rel_tol else NOT_SUPPORTED)
        return ClaimRow(
            "K3-theory", "Iterating Eq. 19 (||grad J(w_hat)|| = 1, ||w_0|| = 1), every effective LR approaches "
            "1/sqrt(2k) once k >> k0 = u0^2/(2 alpha^2), whatever alpha (Grosse ch. 5, §4.3, Fig. 6)",
            "max over alphas and k >= 100 k0 of |eff. LR * sqrt(2k) - 1|", value, f"< {cfg.rel_tol:g}",
            value, value, len(errs), verdict,
            "exact iteration, no sampling; " + "; ".join(per_alpha)
            + "; alphas still in their transient at the horizon: " + (", ".join(still) or "none")
            + ". The recurrence's correction alpha^4 sum 1/u_i^2 ~ (alpha^2/2) ln k is what remains at small k")

    def _growth_row(self, claim_id: str, tables: Tables, arms: list[str], stat: str,
                    a: EffLRAnalysis, statement: str) -> ClaimRow:
        u = _layer_series(tables, "weight_norm_sq", stat)

        def growth(g: pd.DataFrame) -> float:
            fr = [float((np.diff(lg.sort_values("step")["value"].to_numpy()) > 0).mean())
                  for _, lg in g.groupby("layer")]
            return float(np.mean(fr))

        per = [v for arm in arms for v in _per_seed(u, arm, growth)]
        value = float(np.mean(per)) if per else float("nan")
        ci = bootstrap_ci(per)
        ratio = {arm: float(np.mean(_per_seed(u, arm, lambda g: g[g["step"] == g["step"].max()]["value"].mean()
                                              / g[g["step"] == 0]["value"].mean()))) for arm in arms}
        return ClaimRow(claim_id, statement,
                        f"fraction of probe intervals in which the {stat} ||w_j||^2 of BN-fed layers grew",
                        value, f">= {a.growth_min_fraction:g}", ci[0], ci[1], len(per),
                        judge(value, ci, lambda v: v >= a.growth_min_fraction, len(per), a.min_seeds),
                        "final/initial ||w||^2: " + ", ".join(f"{k} x{v:.3g}" for k, v in ratio.items()))

    def _slope_row(self, claim_id: str, slopes: list[float], a: EffLRAnalysis, statement: str,
                   statistic: str, detail: str) -> ClaimRow:
        lo, hi = a.slope_band
        value = float(np.mean(slopes)) if slopes else float("nan")
        ci = bootstrap_ci(slopes)
        return ClaimRow(claim_id, statement, statistic, value, f"in [{lo:g}, {hi:g}] (theory: -0.5)",
                        ci[0], ci[1], len(slopes),
                        judge(value, ci, lambda v: lo <= v <= hi, len(slopes), a.min_seeds), detail)

    # ---------------------------------------------------------------- figures
    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        paths = []
        th = tables.read("theory")
        alphas = sorted(th["alpha"].unique())
        col = P.colors([f"{x:g}" for x in alphas])
        fig, axes = P.figure(ncols=2)
        for alpha in alphas:
            g = th[(th["alpha"] == alpha) & (th["step"] > 0)]
            axes[0, 0].plot(g["step"], np.sqrt(g["u"]), color=col[f"{alpha:g}"], label=f"alpha = {alpha:g}")
            axes[0, 1].plot(g["step"], g["eff_lr"], color=col[f"{alpha:g}"], label=f"alpha = {alpha:g}")
        k = np.logspace(0, np.log10(th["step"].max()), 50)
        axes[0, 1].plot(k, 1 / np.sqrt(2 * k), "k--", lw=1, label="1/sqrt(2k)")
        axes[0, 0].set(xscale="log", yscale="log", xlabel="step k", ylabel="||w_k||", title="Eq. 19: weight norm (cf. Fig. 6 left)")
        axes[0, 1].set(xscale="log", yscale="log", xlabel="step k", ylabel="effective LR alpha/||w_k||^2",
                       title="Eq. 19: effective LR (cf. Fig. 6 right)")
        axes[0, 0].legend()
        axes[0, 1].legend()
        paths.append(P.save(fig, out / "theory_fig6.png"))

        arms = list(dict.fromkeys(tables.runs["arm"]))
        col = P.colors(arms)
        fig, axes = P.figure(ncols=3, width=3.8)
        u = _layer_series(tables, "weight_norm_sq", "median")
        eff = _layer_series(tables, "eff_lr", "median")
        ang = _layer_series(tables, "angular_update", "median")
        for arm in arms:
            layer_mean = lambda d: d[d["arm"] == arm].groupby(["seed", "step"])["value"].mean().reset_index()  # noqa: E731
            if arm in a.sgd_arms or arm in a.extra_norm_arms:
                P.mean_band(axes[0, 0], layer_mean(u), arm, col[arm])
            if arm in a.sgd_arms or arm == a.renorm_arm:
                d = layer_mean(eff)
                P.mean_band(axes[0, 1], d[d["step"] > 0], arm, col[arm])
            d = layer_mean(ang)
            P.mean_band(axes[0, 2], d[d["step"] > 0], arm, col[arm])
        for arm in a.sgd_arms:  # Eq. 19 driven by the measured normalized-gradient norms
            pred = self._recurrence_overlay(tables, arm)
            if pred is not None:
                axes[0, 0].plot(pred["step"], pred["value"], ls="--", lw=1, color=col[arm])
        axes[0, 0].set(xscale="log", yscale="log", xlabel="step", ylabel="median ||w_j||^2 (hidden layers)",
                       title="Norm growth (dashed: Eq. 19 fed\nwith the measured gradient norms)")
        axes[0, 1].set(xscale="log", yscale="log", xlabel="step", ylabel="median alpha/||w_j||^2", title="Effective LR")
        axes[0, 2].set(xscale="log", yscale="log", xlabel="step", ylabel="median angle turned per step (rad)",
                       title="Angular update")
        for ax in axes[0]:
            ax.legend(fontsize=6)
        paths.append(P.save(fig, out / "eff_lr_measured.png"))
        return paths

    def _recurrence_overlay(self, tables: Tables, arm: str) -> pd.DataFrame | None:
        """Eq. 19 iterated step by step from the measured u_0, with g held at its latest probe."""
        runs = tables.runs[tables.runs["arm"] == arm]
        if runs.empty:
            return None
        alpha, steps = float(runs["optim.lr"].iloc[0]), int(runs["train.steps"].iloc[0])
        u = _layer_series(tables, "weight_norm_sq", "median")
        g = _layer_series(tables, "normalized_grad_norm", "median")
        u, g = u[u["arm"] == arm], g[g["arm"] == arm]
        curves = []
        for (seed, layer), gg in g.groupby(["seed", "layer"]):
            gs = gg.sort_values("step")
            u0 = u[(u["seed"] == seed) & (u["layer"] == layer) & (u["step"] == 0)]["value"]
            if u0.empty:
                continue
            k = np.arange(steps + 1)
            g_at = np.interp(k, gs["step"], gs["value"], left=gs["value"].iloc[0], right=gs["value"].iloc[-1])
            pred = np.empty(steps + 1)
            pred[0] = u0.iloc[0]
            for i in range(steps):
                pred[i + 1] = pred[i] + (alpha * g_at[i]) ** 2 / pred[i]
            curves.append(pred)
        if not curves:
            return None
        k = np.unique(np.round(np.logspace(0, np.log10(steps), 60))).astype(int)
        return pd.DataFrame({"step": k, "value": np.mean(curves, axis=0)[k]})
