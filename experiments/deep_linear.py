"""deep_linear (K15): L2 on the layers of a deep linear network is a sparsifying penalty on the product.

Grosse ch. 5, §5. A diagonal linear network of depth K computes beta = w_1 * w_2 * ... * w_K
(elementwise). At any stationary point of (1/2n) ||X beta - y||^2 + lambda sum_k ||w_k||^2 the
layers are balanced, w_{k,i}^2 = w_{j,i}^2 (multiply the stationarity condition of w_{k,i} by
w_{k,i}: every layer gives the same r_i beta_i / (2 lambda)), so the summed L2 penalty equals
K sum_i |beta_i|^(2/K): ridge for K = 1, the lasso for K = 2, and a quasi-norm below 1 for K >= 3,
which favours ever sparser products.

Workload: sparse linear regression, n = 50 examples, d = 100 features, 5 nonzero true weights,
Gaussian design and noise; per depth K = 1..4, a sweep over lambda; every fit is L-BFGS in float64
from a random initialization until the gradient vanishes. Each seed draws its own data and
initialization. No training loop of the engine runs: the fits are written to a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from normlab.engine import plots as P
from normlab.engine.claims import EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import t_interval
from normlab.engine.executor import ParallelMap, serial_map

from .base import Setting, TableExperiment

K15_SPARSE = Claim(
    "K15-sparsity",
    MEASURED,
    "L2 on the layers of a depth-K diagonal linear network acts as an L_{2/K} penalty on the product, which "
    "sparsifies more as K grows: at matched training error fewer weights are non-negligible (Grosse ch. 5, §5)",
    "per seed, slope of log2(non-negligible end-to-end weights) against K at the matched training error, "
    "mean over seeds",
    Rule("<", "max_slope"),
)
K15_BALANCE = Claim(
    "K15-balance",
    EXACT,
    "At convergence the layers are balanced: w_{k,i}^2 is the same in every layer (Grosse ch. 5, §5)",
    "max over fits (K >= 2) of max_{i,k} |w_{k,i}^2 - mean_k w_{k,i}^2| / max_i mean_k w_{k,i}^2",
    Rule("<", "balance_tol"),
)
K15_PENALTY = Claim(
    "K15-penalty",
    EXACT,
    "So the summed L2 penalty equals K sum_i |beta_i|^(2/K), the predicted L_{2/K} penalty of the product "
    "(Grosse ch. 5, §5)",
    "max over fits (K >= 2) of |sum_k ||w_k||^2 / (K sum_i |beta_i|^(2/K)) - 1|",
    Rule("<", "penalty_tol"),
)


@dataclass
class SparseProblem:
    n: int = param(50, min=2, help="examples")
    d: int = param(100, min=2, help="features")
    nonzeros: int = param(5, min=1, help="nonzero true weights")
    noise_std: float = param(0.1, min=0.0, help="std of the noise on y")
    depths: list[int] = param(default_factory=lambda: [1, 2, 3, 4], help="K values")
    lambdas: list[float] = param(
        default_factory=lambda: np.logspace(-4, 0, 17).tolist(), help="penalty strengths swept per depth"
    )
    init_std: float = param(0.5, min=0.0, help="std of the random initial layer weights")
    max_iter: int = param(5000, min=10, help="L-BFGS iterations per fit")
    grad_tol: float = param(1e-12, min=0.0, help="L-BFGS stops when the gradient is below this")


@dataclass
class SparseAnalysis(Analysis):
    target_mse: float = param(
        0.05, min=0.0, help="matched training error: the sparsest fit with train MSE at most this"
    )
    negligible: float = param(1e-3, min=0.0, help="|beta_i| below this times max |beta| counts as zero")
    max_slope: float = param(0.0, help="K15-sparsity: the slope of log2(count) vs K must be below this")
    balance_tol: float = param(1e-4, min=0.0, help="K15-balance: largest relative imbalance allowed")
    penalty_tol: float = param(1e-4, min=0.0, help="K15-penalty: largest relative error allowed")


@dataclass
class DeepLinearConfig(ExperimentConfig):
    problem: SparseProblem = field(default_factory=SparseProblem)
    analysis: SparseAnalysis = field(default_factory=SparseAnalysis)


def sparse_data(p: SparseProblem, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(p.n, p.d, generator=g, dtype=torch.float64)
    beta = torch.zeros(p.d, dtype=torch.float64)
    support = torch.randperm(p.d, generator=g)[: p.nonzeros]
    beta[support] = torch.randn(p.nonzeros, generator=g, dtype=torch.float64)
    y = X @ beta + p.noise_std * torch.randn(p.n, generator=g, dtype=torch.float64)
    return X, y, beta


def fit(X, y, depth: int, lam: float, p: SparseProblem, seed: int) -> dict:
    """L-BFGS on (1/2n)||X prod_k w_k - y||^2 + lam sum_k ||w_k||^2 from a seeded random start."""
    g = torch.Generator().manual_seed(seed * 1000 + depth)
    w = [
        (p.init_std * torch.randn(X.shape[1], generator=g, dtype=torch.float64)).requires_grad_() for _ in range(depth)
    ]
    opt = torch.optim.LBFGS(
        w, lr=1.0, max_iter=p.max_iter, tolerance_grad=p.grad_tol, tolerance_change=1e-30, line_search_fn="strong_wolfe"
    )

    def objective():
        opt.zero_grad()
        beta = torch.stack(w).prod(0)
        loss = 0.5 * ((X @ beta - y) ** 2).mean() + lam * sum((wk**2).sum() for wk in w)
        loss.backward()
        return loss

    opt.step(objective)
    with torch.no_grad():
        W = torch.stack(w)
        beta = W.prod(0)
        sq = W**2
        mean_sq = sq.mean(0)
        imbalance = float((sq - mean_sq).abs().max() / mean_sq.max().clamp_min(1e-300))
        penalty = float(sq.sum())
        predicted = float(depth * (beta.abs() ** (2.0 / depth)).sum())
        grad_norm = float(torch.cat([wk.grad.flatten() for wk in w]).abs().max()) if w[0].grad is not None else np.nan
        return {
            "depth": depth,
            "lambda": lam,
            "train_mse": float(((X @ beta - y) ** 2).mean()),
            "beta_max": float(beta.abs().max()),
            "beta_abs": beta.abs().numpy(),
            "imbalance": imbalance,
            "penalty": penalty,
            "predicted_penalty": predicted,
            # in full precision here: the CSV keeps 9 digits, which would hide the difference
            "penalty_rel_err": abs(penalty / predicted - 1.0) if predicted > 0 else float("nan"),
            "grad_max": grad_norm,
        }


def fit_rows(job: tuple[SparseProblem, int, int, float]) -> tuple[dict, list[dict]]:
    """One fit (problem, seed, depth, lambda): its row of fits.csv and its rows of weights.csv. The
    data are drawn again from the seed, so a worker needs nothing but the job."""
    p, seed, depth, lam = job
    X, y, beta_true = sparse_data(p, seed)
    r = fit(X, y, depth, lam, p, seed)
    babs = r.pop("beta_abs")
    weights = [
        {"seed": seed, "depth": depth, "lambda": lam, "index": i, "beta_abs": float(b),
         "true_nonzero": bool(beta_true[i] != 0)}
        for i, b in enumerate(babs)
    ]  # fmt: skip
    return {"seed": seed, **r}, weights


@dataclass
class FitsSetting(Setting):
    """The fits of every (K, lambda, seed), and those with a nonzero product at depth >= 2."""

    @cached_property
    def fits(self) -> pd.DataFrame:
        return self.tables.read("fits")

    @cached_property
    def nontrivial(self) -> pd.DataFrame:
        deep = self.fits[self.fits["depth"] >= 2]
        return deep[deep["beta_max"] > 1e-8]  # fits that collapsed to 0 are balanced trivially; skip them


NO_FITS = "fits.csv is empty"


def k15_sparse(s: FitsSetting) -> Estimate:
    """Per seed, the slope of log2(non-negligible weights) on K at the matched training error."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    a = s.a
    matched = matched_counts(s.fits, s.tables.read("weights"), a)
    slopes = []
    for seed, g in matched.groupby("seed"):
        g = g.dropna(subset=["count"])
        if len(g) >= 2 and (g["count"] > 0).all():
            slopes.append(float(np.polyfit(g["depth"], np.log2(g["count"]), 1)[0]))
    by_depth = matched.groupby("depth")["count"].mean()
    detail = "mean non-negligible weights by K: " + ", ".join(f"K={k}: {v:.1f}" for k, v in by_depth.items())
    reached = Check(
        "every depth reaches the matched training error",
        bool(matched["count"].notna().all()),
        f"some (K, seed) never reach train MSE <= {a.target_mse:g} over the lambda grid",
    )
    est = float(np.mean(slopes)) if slopes else float("nan")
    return Estimate(est, t_interval(slopes), len(slopes), [reached], detail)


def k15_balance(s: FitsSetting) -> Estimate:
    """The largest imbalance between the layers' norms at a fit with a nonzero product."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    nontrivial = s.nontrivial
    worst = nontrivial.loc[nontrivial["imbalance"].idxmax()] if len(nontrivial) else None
    detail = (
        f"{len(nontrivial)} fits with a nonzero product; worst at K={int(worst['depth'])}, "
        f"lambda {worst['lambda']:.3g}; largest gradient entry at the end {nontrivial['grad_max'].max():.2g}"
        if worst is not None
        else ""
    )
    value = float(nontrivial["imbalance"].max()) if len(nontrivial) else float("nan")
    return Estimate(value, n=int(nontrivial["seed"].nunique()), detail=detail)


def k15_penalty(s: FitsSetting) -> Estimate:
    """The L2 penalty of the factors against the L_{2/K} penalty of the product, relative error."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    rel = s.nontrivial["penalty_rel_err"]
    return Estimate(float(rel.max()) if len(rel) else float("nan"), n=int(s.nontrivial["seed"].nunique()))


class DeepLinear(TableExperiment):
    name = "deep_linear"
    title = "K15: L2 on a deep (diagonal) linear network as a sparsifying L_{2/K} penalty on the product"
    claims = (K15_SPARSE, K15_BALANCE, K15_PENALTY)
    estimators = {K15_SPARSE: k15_sparse, K15_BALANCE: k15_balance, K15_PENALTY: k15_penalty}

    setting_class = FitsSetting

    config_class = DeepLinearConfig

    def derived(self, cfg: DeepLinearConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        p = cfg.problem
        jobs = [(p, seed, depth, lam) for seed in cfg.seed_list for depth in p.depths for lam in p.lambdas]
        done = pmap(fit_rows, jobs)  # hundreds of independent L-BFGS fits: spread over the workers
        fits = [row for row, _ in done]
        weights = [w for _, rows in done for w in rows]
        return {"fits": pd.DataFrame(fits), "weights": pd.DataFrame(weights)}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        a = self.typed_config(tables).analysis
        fits, weights = tables.read("fits"), tables.read("weights")
        if fits.empty:
            return []
        counts = count_table(fits, weights, a)
        depths = sorted(fits["depth"].unique())
        col = P.colors([f"K={k}" for k in depths])
        fig, axes = P.figure(ncols=3, width=4.0)
        for k in depths:
            d = counts[counts["depth"] == k]
            P.mean_band(axes[0, 0], d.rename(columns={"count": "value"}), f"K={k}", col[f"K={k}"], x="lambda")
            P.mean_band(axes[0, 1], d.rename(columns={"train_mse": "value"}), f"K={k}", col[f"K={k}"], x="lambda")
        axes[0, 0].set(xscale="log", yscale="log", xlabel="lambda", ylabel="non-negligible weights", title="Sparsity")
        axes[0, 1].axhline(a.target_mse, color="k", ls=":", lw=1, label="matched error")
        axes[0, 1].set(xscale="log", yscale="log", xlabel="lambda", ylabel="train MSE", title="Training error")
        for ax in axes[0, :2]:
            P.legend(ax, fontsize=7)
        matched = matched_counts(fits, weights, a)
        ax = axes[0, 2]
        for seed, g in matched.groupby("seed"):
            ax.plot(g["depth"], g["count"], "o-", color="#1f77b4", alpha=0.5)
        ax.set(
            yscale="log",
            xticks=depths,
            xlabel="depth K",
            ylabel="non-negligible weights",
            title=f"At train MSE <= {a.target_mse:g} (one line per seed)",
        )
        return [P.save(fig, out / "deep_linear.png")]


def count_table(fits: pd.DataFrame, weights: pd.DataFrame, a: SparseAnalysis) -> pd.DataFrame:
    """Per fit: its training error and the number of non-negligible end-to-end weights."""
    w = weights.merge(fits[["seed", "depth", "lambda", "beta_max", "train_mse"]], on=["seed", "depth", "lambda"])
    w["big"] = w["beta_abs"] > a.negligible * w["beta_max"]
    c = w.groupby(["seed", "depth", "lambda"]).agg(
        count=("big", "sum"), train_mse=("train_mse", "first"), beta_max=("beta_max", "first")
    )
    c["count"] = c["count"].where(c["beta_max"] > 1e-8)  # a product collapsed to 0 has no support to count
    return c.reset_index().drop(columns="beta_max")


def matched_counts(fits: pd.DataFrame, weights: pd.DataFrame, a: SparseAnalysis) -> pd.DataFrame:
    """Per (seed, depth): the count of the fit with the largest lambda whose train MSE is <= target."""
    c = count_table(fits, weights, a)
    rows = []
    for (seed, depth), g in c.groupby(["seed", "depth"]):
        ok = g[g["train_mse"] <= a.target_mse]
        best = ok.loc[ok["lambda"].idxmax()] if len(ok) else None
        rows.append(
            {
                "seed": seed,
                "depth": depth,
                "lambda": float(best["lambda"]) if best is not None else np.nan,
                "count": float(best["count"]) if best is not None else np.nan,
            }
        )
    return pd.DataFrame(rows)
