"""deep_linear (K15): L2 on the layers of a deep linear network is a sparsifying penalty on the product.

Grosse ch. 5, §5. A diagonal linear network of depth K computes beta = w_1 * w_2 * ... * w_K
(elementwise). At any stationary point of (1/2n) ||X beta - y||^2 + lambda sum_k ||w_k||^2 the
layers are balanced, w_{k,i}^2 = w_{j,i}^2 (multiply the stationarity condition of w_{k,i} by
w_{k,i}: every layer gives the same r_i beta_i / (2 lambda)), so the summed L2 penalty equals
K sum_i |beta_i|^(2/K): ridge for K = 1, the lasso for K = 2, and a quasi-norm below 1 for K >= 3,
which favours ever sparser products.

Workload: linear regression, n = 50 examples, d = 100 features, Gaussian design and noise, with a
true weight vector whose magnitudes decay as a power law (`truth: power_law`; `sparse` gives k
nonzeros), so that the fits of different depths K >= 2 can keep different numbers of weights (with
a 5-sparse truth every K >= 2 floors at the true support and only ridge, K = 1, differs). Per depth
K = 1..4, a sweep over lambda; every fit is L-BFGS in float64 until the gradient vanishes, from
`starts` random initializations: for K >= 3 the origin is a strict local minimum and L-BFGS can
stop in a worse minimum than another start finds. The fit kept is the start with the lowest
objective, and a descriptive row reports how often each depth's starts land above it. Where a
closed form exists the fits are checked against it: K = 1 is ridge regression, and K = 2 on an
orthogonal design (X^T X / n = I) is soft thresholding of X^T y / n at 2 lambda. Each seed draws its
own data and initializations. No training loop of the engine runs: the fits are written to tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import t_interval
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Setting, TableExperiment

K15_SPARSE = Claim(
    "K15-sparsity",
    MEASURED,
    "L2 on the layers of a depth-K diagonal linear network acts as an L_{2/K} penalty on the product, which "
    "sparsifies: across K = 1..4 at matched training error fewer weights are non-negligible the deeper the "
    "network (Grosse ch. 5, §5; the chapter says K > 2 sparsifies, the trend over K is normlab's reading)",
    "per seed, slope of log2(non-negligible end-to-end weights) against K (all depths) at the matched "
    "training error, mean over seeds",
    Rule("<", "max_slope"),
)
_STEP = (
    "per seed, log2 of the ratio of non-negligible end-to-end weights, depth {k} over depth {j}, each at its "
    "penalty matched to target_mse (bisected), mean over seeds"
)
K15_STEP_3 = Claim(
    "K15-step-3",
    MEASURED,
    "Past the lasso, the L_{2/K} penalty sparsifies further: at matched training error a depth-3 product keeps "
    "fewer non-negligible weights than a depth-2 one (Grosse ch. 5, §5: L_{2/K} for K > 2 favours exact zeros)",
    _STEP.format(k=3, j=2),
    Rule("<", "max_slope"),
)
K15_STEP_4 = Claim(
    "K15-step-4",
    MEASURED,
    "And one step deeper: a depth-4 product keeps fewer than a depth-3 one (normlab's extrapolation: the chapter "
    "says K > 2 sparsifies, not that each added layer does more)",
    _STEP.format(k=4, j=3),
    Rule("<", "max_slope"),
)
K15_BALANCE = Claim(
    "K15-balance",
    EXACT,
    "At convergence the layers are balanced (w_{k,i}^2 the same in every layer), so the summed L2 penalty "
    "equals K sum_i |beta_i|^(2/K), the L_{2/K} penalty of the product (Grosse ch. 5, §5)",
    "max over fits (K >= 2, nonzero product) of the larger of the imbalance max_{i,k} |w_{k,i}^2 - "
    "mean_k w_{k,i}^2| / max_i mean_k w_{k,i}^2 and |sum_k ||w_k||^2 / (K sum_i |beta_i|^(2/K)) - 1|",
    Rule("<", "balance_tol"),
)
K15_CLOSED_FORM = Claim(
    "K15-closed-form",
    EXACT,
    "Where the minimizer has a closed form the fits reach it: K = 1 is ridge regression, and K = 2 on an "
    "orthogonal design is soft thresholding of X^T y / n at 2 lambda, the lasso (Grosse ch. 5, §5)",
    "max over those fits of max_i |beta_i - beta*_i| / max_i |beta*_i| (absolute where beta* = 0)",
    Rule("<", "closed_form_tol"),
)
K15_STARTS = Claim(
    "K15-starts",
    DESCRIPTIVE,
    "How often a depth's fit from one random start stops above the best objective its starts found (for "
    "K >= 3 the origin is a strict local minimum)",
    "share of fits (seed, lambda, start) with K >= 3 whose objective exceeds the best start's by more "
    "than objective_rtol; per depth in the detail (K = 1, 2 fit from one start: no spurious minima)",
    Rule("none"),
)


@dataclass
class SparseProblem:
    n: int = param(50, min=2, help="examples")
    d: int = param(100, min=2, help="features")
    truth: Literal["power_law", "sparse"] = param(
        "power_law", help="true weights: |beta_i| = rank^-decay over all d features, or `nonzeros` Gaussian ones"
    )
    decay: float = param(1.0, min=0.0, help="power_law truth: the exponent of the decay of |beta_i| with rank")
    nonzeros: int = param(5, min=1, help="sparse truth: nonzero true weights")
    noise_std: float = param(0.1, min=0.0, help="std of the noise on y")
    depths: list[int] = param(default_factory=lambda: [1, 2, 3, 4], help="K values")
    lambdas: list[float] = param(
        default_factory=lambda: np.logspace(-4, 0, 17).tolist(), help="penalty strengths swept per depth"
    )
    init_std: float = param(0.5, min=0.0, help="std of the random initial layer weights")
    max_iter: int = param(5000, min=10, help="L-BFGS iterations per fit")
    grad_tol: float = param(1e-12, min=0.0, help="L-BFGS stops when the gradient is below this")
    starts: int = param(
        3,
        min=1,
        help="random initializations per fit at K >= 3, the lowest objective kept (K = 1 is convex, and at K = 2 "
        "every local minimum is global, so those fit from one start)",
    )
    refine_steps: int = param(
        6,
        min=0,
        help="bisections of log lambda between the grid penalties that bracket target_mse, per (seed, K): "
        "every depth's matched fit lies within a factor 1.78^(1/2^steps) of the penalty that meets the target",
    )
    orthogonal_d: int = param(
        20, min=1, help="features of the orthogonal design (n rows, X^T X / n = I) of the K = 2 closed-form check"
    )

    def check(self, path: str = "") -> None:
        from normlab.engine import config as C

        if self.orthogonal_d > self.n:
            raise C.ConfigError(
                f"{path}orthogonal_d: {self.orthogonal_d} must be at most n ({self.n}): an orthogonal design "
                "needs at least as many examples as features"
            )


@dataclass
class SparseAnalysis(Analysis):
    target_mse: float = param(
        0.05, min=0.0, help="matched training error: the sparsest fit with train MSE at most this"
    )
    match_rtol: float = param(
        0.1, min=0.0, help="K15-step-*: a matched fit's train MSE must lie within this fraction of target_mse"
    )
    negligible: float = param(1e-3, min=0.0, help="|beta_i| below this times max |beta| counts as zero")
    max_slope: float = param(0.0, help="K15-sparsity(-deep): the slope of log2(count) vs K must be below this")
    balance_tol: float = param(1e-4, min=0.0, help="K15-balance: largest relative imbalance or penalty error")
    closed_form_tol: float = param(1e-6, min=0.0, help="K15-closed-form: largest relative error allowed")
    objective_rtol: float = param(
        1e-8, min=0.0, help="K15-starts: a start is above the best when its objective exceeds it by this, relative"
    )


@dataclass
class DeepLinearConfig(ExperimentConfig):
    problem: SparseProblem = field(default_factory=SparseProblem)
    analysis: SparseAnalysis = field(default_factory=SparseAnalysis)


def sparse_data(p: SparseProblem, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(p.n, p.d, generator=g, dtype=torch.float64)
    beta = torch.zeros(p.d, dtype=torch.float64)
    order = torch.randperm(p.d, generator=g)
    if p.truth == "sparse":
        beta[order[: p.nonzeros]] = torch.randn(p.nonzeros, generator=g, dtype=torch.float64)
    else:  # |beta| = 1, 2^-decay, 3^-decay, ... in a random order, with random signs
        signs = torch.randint(0, 2, (p.d,), generator=g).to(torch.float64) * 2 - 1
        beta[order] = signs * torch.arange(1, p.d + 1, dtype=torch.float64) ** -p.decay
    y = X @ beta + p.noise_std * torch.randn(p.n, generator=g, dtype=torch.float64)
    return X, y, beta


def orthogonal_data(p: SparseProblem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n x orthogonal_d design with X^T X / n = I exactly (a scaled QR factor), and y from the same
    kind of truth as the main problem, on its first orthogonal_d coordinates."""
    g = torch.Generator().manual_seed(seed + 7919)
    q, _ = torch.linalg.qr(torch.randn(p.n, p.orthogonal_d, generator=g, dtype=torch.float64))
    X = q * np.sqrt(p.n)
    beta = torch.randn(p.orthogonal_d, generator=g, dtype=torch.float64)
    y = X @ beta + p.noise_std * torch.randn(p.n, generator=g, dtype=torch.float64)
    return X, y


def ridge(X: torch.Tensor, y: torch.Tensor, lam: float) -> np.ndarray:
    """The minimizer of (1/2n)||X b - y||^2 + lam ||b||^2: the normal equations."""
    Xn, yn = X.numpy(), y.numpy()
    return np.linalg.solve(Xn.T @ Xn / len(yn) + 2 * lam * np.eye(Xn.shape[1]), Xn.T @ yn / len(yn))


def soft_threshold(X: torch.Tensor, y: torch.Tensor, lam: float) -> np.ndarray:
    """The K = 2 minimizer on an orthogonal design: the penalty is 2 lam ||beta||_1 at balance, and
    (1/2n)||X b - y||^2 = (1/2)||b - z||^2 + const with z = X^T y / n, so beta* = soft(z, 2 lam)."""
    z = (X.T @ y).numpy() / len(y)
    return np.sign(z) * np.maximum(np.abs(z) - 2 * lam, 0.0)


def relative_error(beta: np.ndarray, target: np.ndarray) -> float:
    scale = np.abs(target).max()
    err = np.abs(beta - target).max()
    return float(err / scale) if scale > 0 else float(err)


def fit(X, y, depth: int, lam: float, p: SparseProblem, seed: int, start: int = 0) -> dict:
    """L-BFGS on (1/2n)||X prod_k w_k - y||^2 + lam sum_k ||w_k||^2 from a seeded random start."""
    g = torch.Generator().manual_seed(seed * 1000 + depth + 100_000 * start)
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
        mse = float(((X @ beta - y) ** 2).mean())
        return {
            "depth": depth,
            "lambda": lam,
            "start": start,
            "objective": 0.5 * mse + lam * penalty,
            "train_mse": mse,
            "beta_max": float(beta.abs().max()),
            "beta_abs": beta.abs().numpy(),
            "imbalance": imbalance,
            "penalty": penalty,
            "predicted_penalty": predicted,
            # in full precision here: the CSV keeps 9 digits, which would hide the difference
            "penalty_rel_err": abs(penalty / predicted - 1.0) if predicted > 0 else float("nan"),
            "grad_max": grad_norm,
            "beta": beta.numpy(),
        }


# K = 1 is ridge (convex); K = 2 is the factorized lasso, whose local minima are all global (the
# factorized form of a convex problem, Haeffele and Vidal 2015). From K = 3 the origin is a strict
# local minimum and others can exist: only those depths need several starts, and the K = 2 fits at
# small lambda are the slowest of all (thousands of L-BFGS iterations).
MULTI_START_DEPTH = 3


def fit_rows(job: tuple[SparseProblem, int, int, float]) -> tuple[list[dict], list[dict], list[dict]]:
    """One (problem, seed, depth, lambda): a row of fits.csv per start (`best` marks the lowest
    objective), the best start's rows of weights.csv, and, where a closed form exists (K = 1 on this
    design; K = 2 on the orthogonal one, fit here too), rows of closed_form.csv. The data are drawn
    again from the seed, so a worker needs nothing but the job."""
    p, seed, depth, lam = job
    X, y, beta_true = sparse_data(p, seed)
    runs = [fit(X, y, depth, lam, p, seed, start) for start in range(p.starts if depth >= MULTI_START_DEPTH else 1)]
    best = min(range(len(runs)), key=lambda i: (runs[i]["objective"], i))
    closed = []
    if depth == 1:
        closed.append(("ridge", relative_error(runs[best]["beta"], ridge(X, y, lam))))
    if depth == 2:
        Xo, yo = orthogonal_data(p, seed)
        ro = fit(Xo, yo, 2, lam, p, seed)
        closed.append(("soft threshold (orthogonal design)", relative_error(ro["beta"], soft_threshold(Xo, yo, lam))))
    babs = np.abs(runs[best]["beta"])
    fits = []
    for i, r in enumerate(runs):
        r = {k: v for k, v in r.items() if k != "beta"}
        fits.append({"seed": seed, **r, "best": i == best})
    weights = [
        {"seed": seed, "depth": depth, "lambda": lam, "index": i, "beta_abs": float(b),
         "true_abs": float(abs(beta_true[i]))}
        for i, b in enumerate(babs)
    ]  # fmt: skip
    closed_rows = [
        {"seed": seed, "depth": depth, "lambda": lam, "closed_form": name, "rel_err": err} for name, err in closed
    ]
    return fits, weights, closed_rows


@dataclass
class FitsSetting(Setting):
    """The kept fit (the best start) of every (K, lambda, seed), and those with a nonzero product at
    depth >= 2; every start's fit for K15-starts."""

    @cached_property
    def all_starts(self) -> pd.DataFrame:
        return self.tables.read("fits")

    @cached_property
    def fits(self) -> pd.DataFrame:
        return kept(self.all_starts)

    @cached_property
    def nontrivial(self) -> pd.DataFrame:
        deep = self.fits[self.fits["depth"] >= 2]
        return deep[deep["beta_max"] > 1e-8]  # fits that collapsed to 0 are balanced trivially; skip them


NO_FITS = "fits.csv is empty"


def kept(fits: pd.DataFrame) -> pd.DataFrame:
    """The best start of each (seed, depth, lambda); all rows of a table without starts."""
    return fits[fits["best"].astype(bool)].reset_index(drop=True) if "best" in fits else fits


def _slope(s: FitsSetting, min_depth: int) -> Estimate:
    """Per seed, the slope of log2(non-negligible weights) on K (K >= min_depth) at the matched
    training error."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    a = s.a
    matched = matched_counts(s.fits, s.tables.read("weights"), a)
    matched = matched[matched["depth"] >= min_depth]
    slopes = []
    for seed, g in matched.groupby("seed"):
        g = g.dropna(subset=["count"])
        if g["depth"].nunique() >= 2 and (g["count"] > 0).all():
            slopes.append(float(np.polyfit(g["depth"], np.log2(g["count"]), 1)[0]))
    by_depth = matched.groupby("depth")["count"].agg(["mean", "min", "max"])
    detail = "non-negligible weights by K, mean (min-max over seeds): " + ", ".join(
        f"K={k}: {r['mean']:.1f} ({r['min']:.0f}-{r['max']:.0f})" for k, r in by_depth.iterrows()
    )
    reached = Check(
        "every depth reaches the matched training error",
        bool(matched["count"].notna().all()),
        f"some (K, seed) never reach train MSE <= {a.target_mse:g} over the lambda grid",
    )
    depths = Check("two depths or more", matched["depth"].nunique() >= 2, f"needs two depths >= {min_depth}")
    est = float(np.mean(slopes)) if slopes else float("nan")
    return Estimate(est, t_interval(slopes), len(slopes), [reached, depths], detail)


def k15_sparse(s: FitsSetting) -> Estimate:
    return _slope(s, 1)


def k15_step(s: FitsSetting, depth: int) -> Estimate:
    """One step of depth, K - 1 -> K: per seed the log2 ratio of the matched counts, paired by seed;
    inconclusive unless both depths' matched fits lie within match_rtol of the target error."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    a = s.a
    m = matched_counts(s.fits, s.tables.read("weights"), a)
    if not {depth - 1, depth} <= set(m["depth"]):
        return Estimate.missing(f"needs depths {depth - 1} and {depth}")
    both = m[m["depth"].isin([depth - 1, depth])].pivot(index="seed", columns="depth")
    logs = np.log2(both["count"][depth] / both["count"][depth - 1]).to_numpy(dtype=float)
    logs = logs[np.isfinite(logs)]
    mse = both["train_mse"]
    off = (mse / a.target_mse - 1).abs()
    matched = Check(
        "every depth matched in training error",
        bool(off.notna().all().all() and (off <= a.match_rtol).all().all()),
        f"some (K, seed) matched fit lies more than {a.match_rtol:.0%} from train MSE {a.target_mse:g} "
        f"(largest gap {float(off.max().max()):.0%}), or never reaches it",
    )
    counts = both["count"]
    detail = (
        f"non-negligible weights, K={depth - 1} -> K={depth} by seed: "
        + ", ".join(f"{int(sd)}: {counts.loc[sd, depth - 1]:.0f} -> {counts.loc[sd, depth]:.0f}" for sd in counts.index)
        + f"; fewer at K={depth} in {int((counts[depth] < counts[depth - 1]).sum())} of {len(counts)} seeds; "
        f"matched train MSE within {float(off.max().max()):.1%} of {a.target_mse:g}"
    )
    est = float(np.mean(logs)) if len(logs) else float("nan")
    return Estimate(est, t_interval(logs), len(logs), [matched], detail)


def k15_balance(s: FitsSetting) -> Estimate:
    """The largest imbalance between the layers' norms, or penalty error, at a fit with a nonzero product."""
    if s.fits.empty:
        return Estimate.missing(NO_FITS)
    nontrivial = s.nontrivial
    if nontrivial.empty:
        return Estimate.missing("no fit with K >= 2 and a nonzero product")
    worst = nontrivial.loc[nontrivial["imbalance"].idxmax()]
    detail = (
        f"{len(nontrivial)} fits with a nonzero product; largest imbalance {worst['imbalance']:.2g} at "
        f"K={int(worst['depth'])}, lambda {worst['lambda']:.3g}; largest penalty error "
        f"{nontrivial['penalty_rel_err'].max():.2g}; largest gradient entry at the end "
        f"{nontrivial['grad_max'].max():.2g}"
    )
    value = float(max(nontrivial["imbalance"].max(), nontrivial["penalty_rel_err"].max()))
    return Estimate(value, n=int(nontrivial["seed"].nunique()), detail=detail)


def k15_closed_form(s: FitsSetting) -> Estimate:
    """The fits against ridge (K = 1) and soft thresholding (K = 2, orthogonal design)."""
    cf = s.tables.read("closed_form") if (s.tables.folder / "closed_form.csv").is_file() else pd.DataFrame()
    if cf.empty:
        return Estimate.missing("closed_form.csv is empty: no K = 1 or K = 2 fits")
    per = cf.groupby("closed_form")["rel_err"].agg(["max", "count"])
    detail = "; ".join(
        f"{name}: largest error {r['max']:.2g} over {int(r['count'])} fits" for name, r in per.iterrows()
    )
    return Estimate(float(cf["rel_err"].max()), n=int(cf["seed"].nunique()), detail=detail)


def k15_starts(s: FitsSetting) -> Estimate:
    """The share of starts that stop above the best objective of their (seed, depth, lambda)."""
    f = s.all_starts
    if f.empty or "objective" not in f:
        return Estimate.missing(NO_FITS)
    best = f.groupby(["seed", "depth", "lambda"])["objective"].transform("min")
    f = f.assign(above=f["objective"] > best * (1 + s.a.objective_rtol))
    per = f.groupby("depth")["above"].agg(["mean", "sum", "count"])
    detail = (
        f"{int(f['start'].nunique())} starts per fit at K >= {MULTI_START_DEPTH} (one below: no spurious minima); "
        "above the best start, by K: "
        + ", ".join(f"K={k}: {int(r['sum'])} of {int(r['count'])}" for k, r in per.iterrows() if k >= MULTI_START_DEPTH)
    )
    deep = f[f["depth"] >= MULTI_START_DEPTH]
    return Estimate(
        float(deep["above"].mean()) if len(deep) else float("nan"), n=int(f["seed"].nunique()), detail=detail
    )


class DeepLinear(TableExperiment):
    name = "deep_linear"
    title = "K15: L2 on a deep (diagonal) linear network as a sparsifying L_{2/K} penalty on the product"
    short_names = {"K15": "L2 on a deep linear network"}
    claims = (K15_SPARSE, K15_STEP_3, K15_STEP_4, K15_BALANCE, K15_CLOSED_FORM, K15_STARTS)
    estimators = {
        K15_SPARSE: k15_sparse,
        K15_STEP_3: partial(k15_step, depth=3),
        K15_STEP_4: partial(k15_step, depth=4),
        K15_BALANCE: k15_balance,
        K15_CLOSED_FORM: k15_closed_form,
        K15_STARTS: k15_starts,
    }

    setting_class = FitsSetting

    config_class = DeepLinearConfig

    def derived(self, cfg: DeepLinearConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        p = cfg.problem
        jobs = [(p, seed, depth, lam) for seed in cfg.seed_list for depth in p.depths for lam in p.lambdas]
        done = pmap(fit_rows, jobs)  # hundreds of independent L-BFGS fits: spread over the workers
        for fits, _, _ in done:
            for r in fits:
                r["refined"] = False
        done += self.refine(cfg, done, pmap)
        return {
            "fits": pd.DataFrame([r for fits, _, _ in done for r in fits]),
            "weights": pd.DataFrame([w for _, rows, _ in done for w in rows]),
            "closed_form": pd.DataFrame(
                [c for _, _, rows in done for c in rows], columns=["seed", "depth", "lambda", "closed_form", "rel_err"]
            ),
        }

    @staticmethod
    def refine(cfg: DeepLinearConfig, done: list, pmap: ParallelMap) -> list:
        """Match the training error: per (seed, K), bisect log lambda between the grid's two penalties
        that bracket target_mse (the largest at or below it, the next above), refine_steps times, so
        every depth is compared at nearly the same training error rather than at the grid's nearest
        point (one grid step moved a fit's error 2.5x: 0.025 against 0.06 at K = 4)."""
        p, target = cfg.problem, cfg.analysis.target_mse
        fits = pd.DataFrame([r for f, _, _ in done for r in f if r["best"]])
        if fits.empty or p.refine_steps == 0:
            return []
        bracket = {}
        for (seed, depth), g in fits.groupby(["seed", "depth"]):
            g = g.sort_values("lambda")
            ok, over = g[g["train_mse"] <= target], g[g["train_mse"] > target]
            if len(ok) and len(over[over["lambda"] > ok["lambda"].max()]):
                lo = float(ok["lambda"].max())
                bracket[(int(seed), int(depth))] = (lo, float(over[over["lambda"] > lo]["lambda"].min()))
        out = []
        for _ in range(p.refine_steps):
            keys = sorted(bracket)
            mids = {k: float(np.sqrt(bracket[k][0] * bracket[k][1])) for k in keys}
            rows = pmap(fit_rows, [(p, seed, depth, mids[(seed, depth)]) for seed, depth in keys])
            for k, (f, w, c) in zip(keys, rows):
                for r in f:
                    r["refined"] = True
                best = next(r for r in f if r["best"])
                lo, hi = bracket[k]
                bracket[k] = (mids[k], hi) if best["train_mse"] <= target else (lo, mids[k])
                out.append((f, w, c))
        return out

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        a = self.typed_config(tables).analysis
        fits, weights = kept(tables.read("fits")), tables.read("weights")
        if fits.empty:
            return []
        # the curves over lambda show the grid's fits only: the refinement's penalties differ by seed
        grid = fits[~fits["refined"].astype(bool)] if "refined" in fits else fits
        counts = count_table(grid, weights, a)
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
                "train_mse": float(best["train_mse"]) if best is not None else np.nan,
            }
        )
    return pd.DataFrame(rows)
