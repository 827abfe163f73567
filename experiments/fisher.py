"""fisher (K12): the empirical Fisher is not the Fisher (Kunstner, Balles & Hennig 2019, Fig. 2).

Grosse ch. 5, §2.1. On linear regression with a Gaussian likelihood the Fisher equals the Hessian
of the loss (the data part), so natural gradient descent is Newton's method and heads straight for
theta*. The empirical Fisher (1/N) sum r_i^2 x_i x_i^T, the matrix whose diagonal Adam and RMSprop
estimate, weights each example by its squared residual instead: far from theta* the residuals are
large and uneven, and the preconditioned flow bends away from the natural gradient. Near theta*
the residuals are the noise, independent of x with variance 1 here, so the empirical Fisher at
theta* is a sample mean whose limit, as N grows, is the Fisher: the two directions agree in the
limit the claim is about (theta -> theta*, then N -> infinity), and at any finite N they differ by
the sampling error of that mean, which heavy-tailed inputs make large.

Nearness is measured on the problem's own scale: the rms change of the model's predictions,
||X (theta - theta*)|| / sqrt(N), in units of the noise std. The limiting angle as theta -> theta*
is computed exactly: there grad L = F (theta - theta*) (the loss is quadratic) and EF -> EF(theta*),
so along a direction d the two directions are d and EF(theta*)^-1 F d; the largest angle over d is
taken on a circle of 3600 directions. Away from theta*, EF(theta) is a quadratic in theta - theta*
whose coefficients (moments of x and the residuals at theta*) are computed once per N, so the
angle against the distance costs nothing per point. The N-sequence is one growing sample per seed
(the first N of `near_sizes[-1]` examples).

Setup as in the paper: N = 1000, x = [1, LogNormal(0, 0.75)], theta_true = (2, 2),
y = x theta_true + N(0, 1); loss = (1/N) sum (y_i - x_i theta)^2 / 2 + theta^T theta / (2 * 0.1 * N)
(a Gaussian prior with variance 0.1, scaled by 1/N). Vector fields, as drawn in the paper:
  GD   -(1/3) grad L
  NGD  -(F + 1e-8 I)^-1 grad L        F = Hessian of L (constant for least squares)
  EF   -3 (EF + 1e-8 I)^-1 grad L     EF = (1/N) sum r_i^2 x_i x_i^T, r_i the residual at theta
Trajectories: 50,000 Euler steps of 0.001 from (2, 4.5), (1, 0), (4.5, 3) and (-0.5, 3). Every
seed draws its own dataset (seed 0 is the paper's draw up to the random generator).
No training loop runs: the tables are computed at run time and written next to the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import stages_of, t_interval
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Setting, TableExperiment

K12_REACH = Claim(
    "K12-reach",
    EXACT,
    "Gradient descent and natural gradient descent both reach the minimizer theta* from every start "
    "(Kunstner et al. 2019, Fig. 2; Grosse ch. 5, §2.1)",
    "max over seeds, starts and the two flows of ||theta_end - theta*|| / ||theta_start - theta*||",
    Rule("<", "reach_tol"),
)
K12_DEVIATE = Claim(
    "K12-deviate",
    EXACT,
    "Away from theta*, the empirical-Fisher flow points in a direction far from the natural gradient's "
    "(Kunstner et al. 2019, Fig. 2; Grosse ch. 5, §2.1)",
    "smallest over seeds of the share of grid points farther than far_radius from theta* where the angle "
    "between the EF and NGD directions exceeds angle_min",
    Rule(">", "share_min"),
)
K12_NEAR = Claim(
    "K12-near",
    MEASURED,
    "Near theta* the empirical Fisher is a fair stand-in for the Fisher, under the chapter's conditions (a "
    "well-specified model, no label noise beyond it, calibrated predictions: this regression meets them by "
    "construction): as theta -> theta* the angle between the EF and NGD directions tends to a limit that "
    "vanishes as the data grow (Kunstner et al. 2019; Grosse ch. 5, §2.1)",
    "per seed, slope of log(largest limiting angle over directions) against log N over near_sizes; mean over "
    "seeds (the central limit theorem predicts -1/2)",
    Rule("<", "near_slope_max"),
)
K12_NEAR_AT_N = Claim(
    "K12-near-at-n",
    DESCRIPTIVE,
    "At this experiment's N: the largest angle between the EF and NGD directions where the predictions are "
    "within near_scale noise std of theta*'s, and its limit at theta*",
    "max over seeds and points with rms prediction change <= near_scale * noise_std of the angle (degrees)",
    Rule("none"),
)


@dataclass
class FisherProblem:
    n: int = param(1000, min=2, help="examples")
    lognormal_sigma: float = param(0.75, min=0.0, help="x_2 ~ LogNormal(0, sigma)")
    theta_true: list[float] = param(default_factory=lambda: [2.0, 2.0], help="parameters that generate y")
    noise_std: float = param(1.0, min=0.0, help="std of the Gaussian noise on y")
    prior_var: float = param(0.1, min=1e-12, help="variance of the Gaussian prior (its term is scaled by 1/N)")
    damping: float = param(1e-8, min=0.0, help="added to both Fisher matrices before solving")
    gd_scale: float = param(1.0 / 3.0, min=0.0, help="GD's field is -gd_scale * grad")
    ef_scale: float = param(3.0, min=0.0, help="EF's field is -ef_scale * EF^-1 grad")
    starts: list[list[float]] = param(
        default_factory=lambda: [[2.0, 4.5], [1.0, 0.0], [4.5, 3.0], [-0.5, 3.0]], help="trajectory starts"
    )
    euler_steps: int = param(50000, min=1, help="Euler steps per trajectory")
    euler_dt: float = param(0.001, min=0.0, help="Euler step size")
    record_every: int = param(250, min=1, help="keep every k-th trajectory point")
    grid_halfwidth: float = param(3.0, min=0.0, help="direction grid: theta* +- this in each coordinate")
    grid_points: int = param(41, min=3, help="grid points per coordinate")
    near_sizes: list[int] = param(
        default_factory=lambda: [100, 300, 1000, 3000, 10000, 30000, 100000],
        help="K12-near: data sizes N of one growing sample per seed (the first N examples)",
    )
    near_distances: list[float] = param(
        default_factory=lambda: np.logspace(-3, 1, 17).tolist(),
        help="rms prediction changes (units of noise_std) at which the angle is measured for the figure",
    )


@dataclass
class FisherAnalysis(Analysis):
    reach_tol: float = param(0.01, min=0.0, help="K12-reach: remaining fraction of the starting distance")
    far_radius: float = param(1.0, min=0.0, help="K12-deviate: 'away from theta*' means farther than this")
    angle_min: float = param(30.0, min=0.0, max=180.0, help="K12-deviate: an angle above this counts (degrees)")
    share_min: float = param(0.25, min=0.0, max=1.0, help="K12-deviate: share of far grid points that must deviate")
    near_slope_max: float = param(
        -0.25, help="K12-near: the slope of log(limiting angle) against log N must be below this"
    )
    near_scale: float = param(
        0.1, min=0.0, help="K12-near-at-n: 'near' = rms prediction change at most this many noise std"
    )
    looks: list[int] = param(
        default_factory=list,
        help="seed counts at which K12-near was looked at before seeds were added; it is then judged by the "
        "stages' t tests combined by the inverse normal method",
    )


@dataclass
class FisherConfig(ExperimentConfig):
    problem: FisherProblem = field(default_factory=FisherProblem)
    analysis: FisherAnalysis = field(default_factory=FisherAnalysis)


@dataclass
class Regression:
    """The least-squares problem of one seed, with its gradient, Fisher and empirical Fisher."""

    x: np.ndarray  # N x 2
    y: np.ndarray  # N
    p: FisherProblem

    @classmethod
    def draw(cls, p: FisherProblem, seed: int) -> "Regression":
        rng = np.random.default_rng(seed)
        x = np.stack([np.ones(p.n), rng.lognormal(0.0, p.lognormal_sigma, p.n)], axis=1)
        y = x @ np.asarray(p.theta_true) + p.noise_std * rng.standard_normal(p.n)
        return cls(x, y, p)

    @property
    def fisher(self) -> np.ndarray:
        n = len(self.y)
        return self.x.T @ self.x / n + np.eye(2) / (self.p.prior_var * n)

    @property
    def theta_star(self) -> np.ndarray:
        return np.linalg.solve(self.fisher, self.x.T @ self.y / len(self.y))

    def grad(self, theta: np.ndarray) -> np.ndarray:
        """Gradients at many points (M x 2)."""
        n = len(self.y)
        r = self.y[None, :] - theta @ self.x.T  # M x N residuals
        return -(r @ self.x) / n + theta / (self.p.prior_var * n)

    def empirical_fisher(self, theta: np.ndarray) -> np.ndarray:
        """(1/N) sum_i r_i^2 x_i x_i^T at many points (M x 2 x 2)."""
        r2 = (self.y[None, :] - theta @ self.x.T) ** 2
        return np.einsum("mn,ni,nj->mij", r2, self.x, self.x) / len(self.y)

    def field(self, kind: str, theta: np.ndarray) -> np.ndarray:
        g = self.grad(theta)
        damp = self.p.damping * np.eye(2)
        if kind == "gd":
            return -self.p.gd_scale * g
        if kind == "ngd":
            return -np.linalg.solve(self.fisher + damp, g.T).T
        return -self.p.ef_scale * np.linalg.solve(self.empirical_fisher(theta) + damp, g[..., None])[..., 0]


def _angles(reg: Regression, theta: np.ndarray) -> np.ndarray:
    """Angle in degrees between the EF and NGD directions at each point."""
    return _angle(reg.field("ef", theta), reg.field("ngd", theta))


FLOWS = ("gd", "ngd", "ef")


def trajectories(reg: Regression, seed: int, flows: tuple[str, ...] = FLOWS) -> pd.DataFrame:
    p = reg.p
    rows = []
    for kind in flows:
        theta = np.asarray(p.starts, dtype=float)
        for k in range(p.euler_steps + 1):
            if k % p.record_every == 0 or k == p.euler_steps:
                rows += [
                    {"seed": seed, "flow": kind, "start": i, "step": k, "theta1": t[0], "theta2": t[1]}
                    for i, t in enumerate(theta)
                ]
            if k < p.euler_steps:
                theta = theta + p.euler_dt * reg.field(kind, theta)
    return pd.DataFrame(rows)


def direction_grid(reg: Regression, seed: int) -> pd.DataFrame:
    p, star = reg.p, reg.theta_star
    axis = np.linspace(-p.grid_halfwidth, p.grid_halfwidth, p.grid_points)
    t1, t2 = np.meshgrid(star[0] + axis, star[1] + axis)
    theta = np.stack([t1.ravel(), t2.ravel()], axis=1)
    dist = np.linalg.norm(theta - star, axis=1)
    return pd.DataFrame(
        {"seed": seed, "theta1": theta[:, 0], "theta2": theta[:, 1], "distance": dist, "angle": _angles(reg, theta)}
    )


N_DIRECTIONS = 3600  # directions on the circle over which the largest angle is taken


class NearTheta:
    """The EF and NGD directions near theta* for one data size, from moments computed once: with
    delta = theta - theta* and r the residuals at theta*, EF(theta) = A0 - 2 sum_k delta_k A1_k +
    sum_kl delta_k delta_l A2_kl, and grad L = F delta exactly."""

    def __init__(self, reg: "Regression"):
        x, n = reg.x, len(reg.y)
        self.star = reg.theta_star
        r = reg.y - x @ self.star
        xx = np.einsum("ni,nj->nij", x, x)
        self.a0 = np.einsum("n,nij->ij", r**2, xx) / n
        self.a1 = np.einsum("n,nk,nij->kij", r, x, xx) / n
        self.a2 = np.einsum("nk,nl,nij->klij", x, x, xx) / n
        self.fisher = reg.fisher
        self.gram = x.T @ x / n  # prediction change: delta^T gram delta = ||X delta||^2 / N
        self.damping = reg.p.damping

    def angles(self, delta: np.ndarray) -> np.ndarray:
        """Angle (degrees) between the EF and NGD directions at theta* + delta (M x 2, nonzero rows;
        the limit delta -> 0 is `limit_angles`)."""
        ef = (
            self.a0 - 2 * np.einsum("mk,kij->mij", delta, self.a1) + np.einsum("mk,ml,klij->mij", delta, delta, self.a2)
        )
        g = delta @ self.fisher.T
        damp = self.damping * np.eye(2)
        return _angle(np.linalg.solve(ef + damp, g[..., None])[..., 0], np.linalg.solve(self.fisher + damp, g.T).T)

    def limit_angles(self, directions: np.ndarray) -> np.ndarray:
        """The limit theta -> theta* along each direction: d against EF(theta*)^-1 F d."""
        damp = self.damping * np.eye(2)
        g = self.fisher @ directions.T
        return _angle(np.linalg.solve(self.a0 + damp, g).T, np.linalg.solve(self.fisher + damp, g).T)

    def at_prediction_change(self, scale: float, directions: np.ndarray) -> np.ndarray:
        """Points theta* + delta whose rms prediction change ||X delta|| / sqrt(N) equals `scale`."""
        norm = np.sqrt(np.einsum("mi,ij,mj->m", directions, self.gram, directions))
        return directions * (scale / norm)[:, None]


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, the angle in degrees between two sets of vectors (M x 2)."""
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def circle(m: int = N_DIRECTIONS) -> np.ndarray:
    phi = np.linspace(0, np.pi, m, endpoint=False)  # a direction and its opposite give the same angle
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def near_tables(p: "FisherProblem", seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For each N of near_sizes (the first N examples of one sample): the largest and median limiting
    angle at theta*, and the largest angle at each rms prediction change of near_distances."""
    big = Regression.draw(replace(p, n=max(p.near_sizes)), seed)
    d = circle()
    limits, curve = [], []
    for n in p.near_sizes:
        near = NearTheta(Regression(big.x[:n], big.y[:n], replace(p, n=n)))
        lim = near.limit_angles(d)
        limits.append({"seed": seed, "n": n, "limit_max": float(lim.max()), "limit_median": float(np.median(lim))})
        for scale in p.near_distances:
            ang = near.angles(near.at_prediction_change(scale * p.noise_std, d))
            curve.append({"seed": seed, "n": n, "prediction_change": scale, "angle_max": float(ang.max())})
    return pd.DataFrame(limits), pd.DataFrame(curve)


def fisher_job(job: tuple[FisherProblem, int, str]) -> list[pd.DataFrame]:
    """(problem, seed, part): one flow's trajectories, or for part "grid" the direction grid, or for
    part "near" the tables near theta* against N, of one seed's regression (drawn again from the seed)."""
    p, seed, part = job
    if part == "near":
        return list(near_tables(p, seed))
    reg = Regression.draw(p, seed)
    if part == "grid":
        return [direction_grid(reg, seed)]
    return [trajectories(reg, seed, (part,))]


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class FlowSetting(Setting):
    """The derived tables: the flows' trajectories, the update directions along them and the optima."""

    @cached_property
    def trajectories(self) -> pd.DataFrame:
        return self.tables.read("trajectories")

    @cached_property
    def directions(self) -> pd.DataFrame:
        return self.tables.read("directions")

    @cached_property
    def optima(self) -> pd.DataFrame:
        return self.tables.read("optima")

    @property
    def empty(self) -> bool:
        return self.trajectories.empty or self.directions.empty or self.optima.empty

    @cached_property
    def near_limit(self) -> pd.DataFrame:
        return self.tables.read("near_limit")

    @cached_property
    def near_curve(self) -> pd.DataFrame:
        return self.tables.read("near_curve")


EMPTY = "the derived tables are empty"


def k12_reach(s: FlowSetting) -> Estimate:
    """The largest fraction of the starting distance to theta* a GD or NGD flow has left at the end."""
    if s.empty:
        return Estimate.missing(EMPTY)
    tr = s.trajectories
    star = s.optima.set_index("seed")[["theta1", "theta2"]]
    first = tr[tr["step"] == 0].set_index(["seed", "flow", "start"])[["theta1", "theta2"]]
    last = tr[tr["step"] == tr["step"].max()].set_index(["seed", "flow", "start"])[["theta1", "theta2"]]
    at_star = star.reindex(last.index.get_level_values("seed")).to_numpy()
    frac = pd.Series(
        np.linalg.norm(last.to_numpy() - at_star, axis=1)
        / np.linalg.norm(first.reindex(last.index).to_numpy() - at_star, axis=1),
        index=last.index,
    )
    by_flow = frac.groupby(level="flow").max()
    detail = (
        "worst remaining fraction per flow: "
        + ", ".join(f"{k} {v:.2g}" for k, v in by_flow.items())
        + " (the EF flow is reported, not judged)"
    )
    return Estimate(float(by_flow[["gd", "ngd"]].max()), n=int(star.shape[0]), detail=detail)


def k12_deviate(s: FlowSetting) -> Estimate:
    """Away from theta*: the smallest share, over seeds, of points where EF and NGD directions differ."""
    if s.empty:
        return Estimate.missing(EMPTY)
    a = s.a
    far = s.directions[s.directions["distance"] > a.far_radius]
    shares = far.groupby("seed")["angle"].apply(lambda v: float((v > a.angle_min).mean()))
    detail = (
        f"share per seed: {', '.join(f'{v:.3f}' for v in shares)}; median angle away from theta*: "
        f"{far['angle'].median():.1f} deg, largest {far['angle'].max():.1f} deg"
    )
    return Estimate(float(shares.min()), n=len(shares), detail=detail)


def k12_near(s: FlowSetting) -> Estimate:
    """Per seed, the slope of log(largest limiting angle) on log N."""
    lim = s.near_limit
    if lim.empty:
        return Estimate.missing("near_limit.csv is empty")
    slopes = [
        float(np.polyfit(np.log(g["n"]), np.log(g["limit_max"]), 1)[0])
        for _, g in lim.sort_values("seed").groupby("seed")
        if g["n"].nunique() >= 2 and (g["limit_max"] > 0).all()
    ]
    by_n = lim.groupby("n")["limit_max"].agg(["mean", "min", "max"])
    detail = "largest limiting angle at theta* by N, mean (min-max over seeds): " + ", ".join(
        f"N={int(n)}: {r['mean']:.2f} ({r['min']:.2f}-{r['max']:.2f}) deg" for n, r in by_n.iterrows()
    )
    sizes = Check("two sizes or more", lim["n"].nunique() >= 2, "needs two or more values in near_sizes")
    est = float(np.mean(slopes)) if slopes else float("nan")
    return Estimate(est, t_interval(slopes), len(slopes), [sizes], detail, stages=stages_of(slopes, s.a.looks))


def k12_near_at_n(s: FlowSetting) -> Estimate:
    """At the config's N: the largest angle within near_scale noise std of prediction change."""
    curve, lim = s.near_curve, s.near_limit
    n = s.cfg.problem.n
    at = curve[(curve["n"] == n) & (curve["prediction_change"] <= s.a.near_scale * (1 + 1e-12))]
    if at.empty:
        return Estimate.missing(f"N = {n} is not among near_sizes, or no distance within near_scale")
    limit = lim[lim["n"] == n]["limit_max"]
    detail = (
        f"N = {n}: within {s.a.near_scale:g} noise std of prediction change the angle reaches "
        f"{at['angle_max'].max():.1f} deg; its limit at theta*, largest over directions, is "
        f"{limit.mean():.1f} deg (mean over seeds, {limit.min():.1f}-{limit.max():.1f})"
    )
    return Estimate(float(at["angle_max"].max()), n=int(at["seed"].nunique()), detail=detail)


class Fisher(TableExperiment):
    name = "fisher"
    title = "K12: the empirical Fisher's flow against gradient descent and the natural gradient on least squares"
    short_names = {"K12": "the empirical Fisher's flow"}
    claims = (K12_REACH, K12_DEVIATE, K12_NEAR, K12_NEAR_AT_N)
    config_class = FisherConfig

    def derived(self, cfg: FisherConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        # one job per seed and flow (the Euler loops are most of the time), one per seed for the grids
        jobs = [(cfg.problem, seed, part) for seed in cfg.seed_list for part in (*FLOWS, "grid", "near")]
        tables = pmap(fisher_job, jobs)
        of = {part: [ts for job, ts in zip(jobs, tables) if job[2] == part] for part in (*FLOWS, "grid", "near")}
        trajs = [ts[0] for part in FLOWS for ts in of[part]]
        trajs = sorted(trajs, key=lambda t: int(t["seed"].iloc[0]) if len(t) else 0)  # seed-major, as before
        optima = []
        for seed in cfg.seed_list:
            star = Regression.draw(cfg.problem, seed).theta_star
            optima.append({"seed": seed, "theta1": star[0], "theta2": star[1]})
        return {
            "trajectories": pd.concat(trajs, ignore_index=True),
            "directions": pd.concat([ts[0] for ts in of["grid"]], ignore_index=True),
            "optima": pd.DataFrame(optima),
            "near_limit": pd.concat([ts[0] for ts in of["near"]], ignore_index=True),
            "near_curve": pd.concat([ts[1] for ts in of["near"]], ignore_index=True),
        }

    estimators = {K12_REACH: k12_reach, K12_DEVIATE: k12_deviate, K12_NEAR: k12_near, K12_NEAR_AT_N: k12_near_at_n}

    setting_class = FlowSetting

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        tr, opt = tables.read("trajectories"), tables.read("optima")
        if tr.empty:
            return []
        seed = int(opt["seed"].min())
        reg = Regression.draw(cfg.problem, seed)
        star = reg.theta_star
        lo, hi = star - cfg.problem.grid_halfwidth, star + cfg.problem.grid_halfwidth
        t1, t2 = np.meshgrid(np.linspace(lo[0], hi[0], 15), np.linspace(lo[1], hi[1], 15))
        theta = np.stack([t1.ravel(), t2.ravel()], axis=1)
        titles = {"gd": "Gradient descent", "ngd": "Natural gradient (Fisher)", "ef": "Empirical Fisher"}
        fig, axes = P.figure(ncols=4, width=3.4, height=3.3)
        starts = P.colors([str(i) for i in range(len(cfg.problem.starts))])
        for ax, kind in zip(axes[0, :3], ("gd", "ngd", "ef")):
            v = reg.field(kind, theta)
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)  # directions, as in the paper
            ax.quiver(theta[:, 0], theta[:, 1], v[:, 0], v[:, 1], color="#999999", angles="xy", width=0.004)
            d = tr[(tr["seed"] == seed) & (tr["flow"] == kind)]
            for i, g in d.groupby("start"):
                ax.plot(g["theta1"], g["theta2"], color=starts[str(i)], lw=1.6)
                ax.plot(g["theta1"].iloc[0], g["theta2"].iloc[0], "o", color=starts[str(i)], ms=4)
            ax.plot(*star, "k*", ms=10, label="theta*")
            ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="theta_1", ylabel="theta_2", title=titles[kind])
        P.legend(axes[0, 0], loc="lower right")
        ax = axes[0, 3]
        dr = tables.read("directions")
        d = dr[dr["seed"] == seed].sort_values("distance")
        ax.scatter(d["distance"], d["angle"], s=3, color="#1f77b4", alpha=0.5)
        a = cfg.analysis
        ax.axhline(a.angle_min, color="#d62728", ls="--", lw=1, label=f"{a.angle_min:g} deg")
        ax.axvline(a.far_radius, color="k", ls=":", lw=1, label="far radius")
        ax.set(xlabel="||theta - theta*||", ylabel="angle EF vs NGD (deg)", title="How far EF turns from NGD")
        P.legend(ax, loc="upper left", bbox_to_anchor=(0.0, 1.0), framealpha=0.9, frameon=True)
        paths = [P.save(fig, out / "fisher.png")]
        if (tables.folder / "near_limit.csv").is_file():
            paths.append(self._plot_near(tables, out, seed, cfg.analysis.near_scale))
        return paths

    def _plot_near(self, tables: Tables, out: Path, seed: int, near_scale: float) -> Path:
        """The limit K12-near is about: the angle at theta* against N, and the angle against the
        distance to theta* (on the problem's scale) for each N."""
        lim, curve = tables.read("near_limit"), tables.read("near_curve")
        fig, axes = P.figure(ncols=2, width=4.2, height=3.4)
        ax = axes[0, 0]
        for sd, g in lim.groupby("seed"):
            ax.plot(g["n"], g["limit_max"], "o-", color="#1f77b4", alpha=0.6, lw=1, ms=3,
                    label="one seed" if sd == seed else None)  # fmt: skip
        ref = lim.groupby("n")["limit_max"].mean()
        n0 = float(ref.index[0])
        ns = np.asarray(ref.index, dtype=float)
        ax.plot(ns, ref.iloc[0] * (ns / n0) ** -0.5, "k--", lw=1, label="N^-1/2")
        ax.set(xscale="log", yscale="log", xlabel="data size N", ylabel="largest angle at theta* (deg)",
               title="EF vs NGD in the limit theta -> theta*")  # fmt: skip
        P.legend(ax, fontsize=7)
        ax = axes[0, 1]
        sizes = sorted(curve["n"].unique())
        col = P.colors([f"N={n}" for n in sizes])
        for n in sizes:
            g = curve[(curve["seed"] == seed) & (curve["n"] == n)]
            ax.plot(g["prediction_change"], g["angle_max"], "-", color=col[f"N={n}"], lw=1.3, label=f"N={n}")
        ax.axvline(near_scale, color="k", ls=":", lw=1)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="rms prediction change / noise std",
            ylabel="largest angle EF vs NGD (deg)",
            title=f"Angle against distance to theta* (seed {seed})",
        )
        P.legend(ax, fontsize=6)
        return P.save(fig, out / "fisher_near.png")
