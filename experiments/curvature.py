"""curvature (K8): the outlier eigenvalues that uncentered inputs give a layer's curvature.

Grosse ch. 5, §3 and §4.2 (Eqs. 9, 13-14). When a layer's inputs h have a nonzero mean mu, the
curvature with respect to its weights carries a near rank-one part from mu mu^T (times the
output-side curvature, whose rank is at most C - 1 per example), which shows up as about C
eigenvalues far above the rest. Centering the inputs (batch centering; the quasi-diagonal
reparameterization of Eq. 9 does the same) removes that part, and so does batch norm right after
the layer: the loss then ignores a shift of the inputs along mu. The chapter's reading of the
Santurkar knockout is the same argument: noise after one BN layer shifts the next layer's inputs,
but the next layer's BN still cancels the shift, so the outliers stay away.

Each run trains one MLP and, at a few checkpoints, measures the generalized Gauss-Newton matrix
(GGN) and the Hessian of the training loss with respect to one hidden layer's weights: the top-k
eigenvalues by Lanczos, and the GGN's spectral density by stochastic Lanczos quadrature
(engine/curvature.py). Arms: uncentered (no normalizer), centered (batch centering after every
ReLU), BN in the next layer (BN before every ReLU, so right after the measured layer), BN after
the previous activation, and the knockout (BN before every ReLU followed by the drifting random
affine noise of the knockout experiment), on MNIST-1D and on a Gaussian mixture.

An outlier is an eigenvalue above `outlier_factor` times the bulk scale, the median of the
eigenvalues ranked C+1..k (ranks where outliers cannot sit if there are about C of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine import stats as S
from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.claims import MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import paired_t, t_interval

from .base import Experiment, Setting, arm_configs
from .knockout import NoiseConfig, NoiseFactory

_COUNT = "outliers per class (count / C) of the GGN of the measured layer at the last checkpoint, mean over seeds"
_REMOVED = "paired by seed: (outliers of the uncentered arm - outliers of this arm) / C, GGN, last checkpoint"
_ABOUT_C = "the uncentered network shows about C outliers (Grosse ch. 5, §3, §4.2)"
_FEWER = "removes the outliers: far fewer than the uncentered network (Grosse ch. 5, §4.2)"
_KNOCK = (
    "Noise after BN does not bring the outliers back at the weights that follow it, because the next "
    "layer's BN still cancels a shift of their inputs (Grosse ch. 5, §4.2, reading of Santurkar et al.)"
)
_TOP = (
    "Centering the inputs (Eq. 9 / batch centering) lowers the top eigenvalue relative to the bulk by a "
    "stated factor (Grosse ch. 5, §3); relative to the bulk because the scales of different networks differ"
)
_TOPSTAT = "paired by seed: geometric mean of (lambda_1 / bulk) uncentered over (lambda_1 / bulk) centered, GGN"

WORKLOADS = ("mnist1d", "mixture")  # the workloads the claims name, in the order their claims follow
CLAIMS = (
    Claim("K8-mnist1d", MEASURED, f"MNIST-1D: {_ABOUT_C}", _COUNT, Rule("in", "about_c_band")),
    Claim(
        "K8-hessian-mnist1d",
        MEASURED,
        f"MNIST-1D, Hessian: {_ABOUT_C}",
        _COUNT.replace("GGN", "Hessian"),
        Rule("in", "about_c_band"),
    ),
    Claim(
        "K8-centered-mnist1d", MEASURED, f"MNIST-1D: centering the inputs {_FEWER}", _REMOVED, Rule(">=", "removal_min")
    ),
    Claim(
        "K8-bnnext-mnist1d", MEASURED, f"MNIST-1D: BN in the next layer {_FEWER}", _REMOVED, Rule(">=", "removal_min")
    ),
    Claim(
        "K8-bnprev-mnist1d",
        MEASURED,
        f"MNIST-1D: BN after the previous activation {_FEWER}",
        _REMOVED,
        Rule(">=", "removal_min"),
    ),
    Claim("K8-top-mnist1d", MEASURED, f"MNIST-1D: {_TOP}", _TOPSTAT, Rule(">", "top_drop_min")),
    Claim(
        "K8-knockout-mnist1d",
        MEASURED,
        f"MNIST-1D: {_KNOCK}",
        _COUNT.replace("GGN", "GGN (knockout arm)"),
        Rule("<", "return_max"),
    ),
    Claim("K8-mixture", MEASURED, f"Gaussian mixture: {_ABOUT_C}", _COUNT, Rule("in", "about_c_band")),
    Claim(
        "K8-hessian-mixture",
        MEASURED,
        f"Gaussian mixture, Hessian: {_ABOUT_C}",
        _COUNT.replace("GGN", "Hessian"),
        Rule("in", "about_c_band"),
    ),
    Claim(
        "K8-centered-mixture",
        MEASURED,
        f"Gaussian mixture: centering the inputs {_FEWER}",
        _REMOVED,
        Rule(">=", "removal_min"),
    ),
    Claim(
        "K8-bnnext-mixture",
        MEASURED,
        f"Gaussian mixture: BN in the next layer {_FEWER}",
        _REMOVED,
        Rule(">=", "removal_min"),
    ),
    Claim(
        "K8-bnprev-mixture",
        MEASURED,
        f"Gaussian mixture: BN after the previous activation {_FEWER}",
        _REMOVED,
        Rule(">=", "removal_min"),
    ),
    Claim("K8-top-mixture", MEASURED, f"Gaussian mixture: {_TOP}", _TOPSTAT, Rule(">", "top_drop_min")),
    Claim(
        "K8-knockout-mixture",
        MEASURED,
        f"Gaussian mixture: {_KNOCK}",
        _COUNT.replace("GGN", "GGN (knockout arm)"),
        Rule("<", "return_max"),
    ),
)
# Each workload's claims by role, in the order they are defined above: the GGN's and the Hessian's
# count, each remover's removal, the top eigenvalue's drop and the knockout's count.
ROLES = ("ggn", "hessian", "centered", "bn_next", "bn_prev", "top", "knockout")
K8 = {w: dict(zip(ROLES, CLAIMS[i * len(ROLES) : (i + 1) * len(ROLES)])) for i, w in enumerate(WORKLOADS)}
REMOVERS = ("centered", "bn_next", "bn_prev")  # the arms judged by their removal (their claims' roles)


@dataclass
class CurvatureDesign:
    workloads: dict[str, dict[str, Any]] = param(
        default_factory=lambda: {
            "mnist1d": {"data.name": "mnist1d"},
            "mixture": {"data.name": "synthetic", "data.synthetic_kind": "mixture"},
        },
        help="workload name -> overrides of `run` (every arm runs on every workload)",
    )
    noise_arms: list[str] = param(default_factory=lambda: ["knockout"], help="arms that get the knockout's noise")
    noise_level: float = param(1.0, min=0.0, help="strength of that noise (the knockout experiment's scale)")


@dataclass
class CurvatureAnalysis(Analysis):
    outlier_factor: float = param(5.0, min=1.0, help="an outlier exceeds this multiple of the bulk scale")
    about_c_band: list[float] = param(
        default_factory=lambda: [0.5, 2.0], help="'about C outliers': outliers per class inside this band"
    )
    removal_min: float = param(0.5, min=0.0, help="'far fewer': removes at least this many outliers per class")
    return_max: float = param(0.5, min=0.0, help="knockout: outliers per class stay below this")
    top_drop_min: float = param(2.0, min=1.0, help="centering lowers lambda_1 / bulk by more than this factor")


@dataclass
class CurvatureExperimentConfig(ExperimentConfig):
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    design: CurvatureDesign = field(default_factory=CurvatureDesign)
    analysis: CurvatureAnalysis = field(default_factory=CurvatureAnalysis)

    def check(self, path: str = "") -> None:
        needed = {"uncentered", "centered", "bn_next", "bn_prev", "knockout"}
        if not needed <= set(self.arms):
            raise C.ConfigError(f"arms: the curvature verdicts need the arms {sorted(needed)}; add the missing ones")
        if not self.run.curvature.steps:
            raise C.ConfigError("run.curvature.steps: the experiment measures curvature; set e.g. [0, 1000]")
        classes = 10 if self.run.data.name != "synthetic" else self.run.data.num_classes
        if self.run.curvature.top_k < 3 * classes:
            raise C.ConfigError(
                f"run.curvature.top_k: needs >= 3C = {3 * classes} eigenvalues (the bulk scale is read from ranks "
                f"C+1..k); set run.curvature.top_k={3 * classes}"
            )


def run_arm(workload: str, arm: str) -> str:
    """The name of an arm's runs on a workload in runs.csv and metrics.csv (the one place it is made)."""
    return f"{workload}-{arm}"


def workload_arms(cfg: CurvatureExperimentConfig) -> dict[str, tuple[str, str, RunConfig]]:
    """run_arm(workload, arm) -> (workload, arm, run config): every arm on every workload."""
    out = {}
    for arm, run in arm_configs(cfg).items():
        base = C.to_dict(run)
        for w, overrides in cfg.design.workloads.items():
            raw = C.apply_overrides(base, overrides or {}, f"design.workloads.{w}")
            out[run_arm(w, arm)] = (w, arm, C.from_dict(RunConfig, raw, f"design.workloads.{w}"))
    return out


def with_workload(d: pd.DataFrame, cfg: CurvatureExperimentConfig) -> pd.DataFrame:
    """Rows of metrics.csv with the workload and the arm ("kind") of each run, from the design."""
    arms = workload_arms(cfg)
    d = d.copy()
    d["workload"] = d["arm"].map(lambda name: arms[name][0])
    d["kind"] = d["arm"].map(lambda name: arms[name][1])
    return d


def spectra(tables: Tables, matrix: str, cfg: CurvatureExperimentConfig) -> pd.DataFrame:
    """Top-k eigenvalues: one row per run, step and rank (columns workload, kind, seed, step, rank, value)."""
    if not tables.has(M.eig(matrix)):  # the Hessian's spectra are optional (curvature.hessian_steps)
        return pd.DataFrame(columns=["workload", "kind", "seed", "step", "rank", "value"])
    d = with_workload(tables.series(M.eig(matrix), "rank"), cfg)
    d["rank"] = d["item"].astype(int)
    return d[["workload", "kind", "seed", "step", "rank", "value"]]


def outliers(spec: pd.DataFrame, classes: int, factor: float) -> pd.DataFrame:
    """Per (workload, arm, seed, step): lambda_1, bulk scale (median of ranks C+1..k), prominence
    lambda_1 / bulk, and the outlier count (eigenvalues above factor x bulk)."""
    rows = []
    for (w, kind, seed, step), g in spec.groupby(["workload", "kind", "seed", "step"]):
        vals = g.sort_values("rank")["value"].to_numpy()
        bulk = float(np.median(vals[classes:])) if len(vals) > classes else float("nan")
        count = int((vals > factor * bulk).sum()) if bulk > 0 else float("nan")
        top = float(vals[0])
        rows.append(
            {
                "workload": w,
                "kind": kind,
                "seed": int(seed),
                "step": int(step),
                "top": top,
                "bulk": bulk,
                "prominence": top / bulk if bulk > 0 else float("nan"),
                "outliers": count,
                "per_class": count / classes,
            }
        )
    return pd.DataFrame(
        rows, columns=["workload", "kind", "seed", "step", "top", "bulk", "prominence", "outliers", "per_class"]
    )


def _by_seed(o: pd.DataFrame, kind: str, column: str, seeds: list[int]) -> list[float]:
    d = o[o["kind"] == kind].set_index("seed")[column]
    return [float(d.get(s, float("nan"))) for s in seeds]


def classes_of(cfg: CurvatureExperimentConfig, workload: str) -> int:
    """C, the number of classes of a workload's data."""
    raw = C.apply_overrides(C.to_dict(cfg.run), cfg.design.workloads.get(workload) or {})
    data = C.from_dict(RunConfig, raw).data
    return 10 if data.name != "synthetic" else data.num_classes


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class Measured:
    """One workload's outlier tables at the last checkpoint of each matrix."""

    classes: int
    per_matrix: dict[str, tuple[pd.DataFrame, int]]  # ggn / hessian -> (outliers per run, step)
    factor: float

    @property
    def ggn(self) -> pd.DataFrame:
        return self.per_matrix["ggn"][0]

    def where(self, matrix: str = "ggn") -> str:
        om, step = self.per_matrix[matrix]
        counts = ", ".join(f"{k} {v:.1f}" for k, v in om.groupby("kind")["outliers"].mean().items())
        rule = f"C = {self.classes}, outlier > {self.factor:g} x bulk"
        return f"step {step}, {rule}; mean {'GGN' if matrix == 'ggn' else 'Hessian'} outliers: {counts}"


@dataclass
class CurvatureSetting(Setting):
    """Each workload's outlier tables (or why there are none), computed once for its claims."""

    def __post_init__(self) -> None:
        self._measured: dict[str, Measured | str] = {}

    @property
    def seeds(self) -> list[int]:
        return self.cfg.seed_list

    def measured(self, w: str) -> Measured | str:
        if w not in self._measured:
            self._measured[w] = self._measure(w)
        return self._measured[w]

    def _measure(self, w: str) -> Measured | str:
        if w not in self.cfg.design.workloads:
            return f"workload {w!r} is not in design.workloads"
        classes, factor = classes_of(self.cfg, w), self.a.outlier_factor
        per_matrix = {}
        for matrix in ("ggn", "hessian"):
            sp = spectra(self.tables, matrix, self.cfg)
            sp = sp[sp["workload"] == w]
            last = int(sp["step"].max()) if len(sp) else -1
            per_matrix[matrix] = (outliers(sp[sp["step"] == last], classes, factor), last)
        if per_matrix["ggn"][0].empty:
            return f"no GGN spectra for workload {w} (every run failed?)"
        return Measured(classes, per_matrix, factor)


def k8_count(s: CurvatureSetting, w: str, matrix: str) -> Estimate:
    """About C outliers in the uncentered network's GGN (or Hessian), per class, mean over seeds."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    om, _ = m.per_matrix[matrix]
    if om.empty:
        return Estimate.missing(f"no {matrix} spectra (set run.curvature.hessian_steps, e.g. [1000])")
    vals = _by_seed(om, "uncentered", "per_class", s.seeds)
    n = int(np.isfinite(vals).sum())
    tops = _by_seed(om, "uncentered", "prominence", s.seeds)
    detail = f"{m.where(matrix)}; uncentered lambda_1/bulk per seed: " + ", ".join(f"{v:.2f}" for v in tops)
    return Estimate(float(np.nanmean(vals)) if n else float("nan"), t_interval(vals), n, detail=detail)


def k8_removal(s: CurvatureSetting, w: str, arm: str) -> Estimate:
    """Outliers per class the arm removes, paired by seed against the uncentered arm."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    unc = _by_seed(m.ggn, "uncentered", "per_class", s.seeds)
    has_outliers = Check(
        "the uncentered network has outliers to remove",
        bool(np.nanmean(unc) >= s.a.about_c_band[0]) if np.isfinite(unc).any() else False,
        f"the uncentered arm has {S.nanmean(unc):.2f} outliers per class (< {s.a.about_c_band[0]:g})",
    )
    est, ci, n = paired_t(unc, _by_seed(m.ggn, arm, "per_class", s.seeds))
    return Estimate(est, ci, n, [has_outliers], m.where())


def k8_top(s: CurvatureSetting, w: str) -> Estimate:
    """lambda_1 / bulk, uncentered over centered, paired by seed."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    o = m.ggn
    est, ci, n = paired_t(
        _by_seed(o, "uncentered", "prominence", s.seeds), _by_seed(o, "centered", "prominence", s.seeds), True
    )
    lam = o.groupby("kind")[["top", "bulk"]].mean()
    detail = "mean lambda_1 (bulk): " + ", ".join(f"{k} {r.top:.3g} ({r.bulk:.3g})" for k, r in lam.iterrows())
    return Estimate(est, ci, n, detail=detail)


def k8_knockout(s: CurvatureSetting, w: str) -> Estimate:
    """Outliers per class of the knockout arm."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    knock = _by_seed(m.ggn, "knockout", "per_class", s.seeds)
    n = int(np.isfinite(knock).sum())
    return Estimate(float(np.nanmean(knock)) if n else float("nan"), t_interval(knock), n, detail=m.where())


ESTIMATORS = {}
for _w in WORKLOADS:
    ESTIMATORS[K8[_w]["ggn"]] = partial(k8_count, w=_w, matrix="ggn")
    ESTIMATORS[K8[_w]["hessian"]] = partial(k8_count, w=_w, matrix="hessian")
    for _arm in REMOVERS:
        ESTIMATORS[K8[_w][_arm]] = partial(k8_removal, w=_w, arm=_arm)
    ESTIMATORS[K8[_w]["top"]] = partial(k8_top, w=_w)
    ESTIMATORS[K8[_w]["knockout"]] = partial(k8_knockout, w=_w)


class Curvature(Experiment):
    name = "curvature"
    title = "K8: outlier eigenvalues of a layer's curvature, and what centering, BN and the knockout do to them"
    claims = CLAIMS
    config_class = CurvatureExperimentConfig
    estimators = ESTIMATORS

    def tasks(self, cfg: CurvatureExperimentConfig) -> list[RunTask]:
        noise = NoiseFactory(cfg.noise, level=cfg.design.noise_level)
        return [
            RunTask(f"{name}-s{seed}", name, seed, run, noise if arm in cfg.design.noise_arms else None)
            for name, (_, arm, run) in workload_arms(cfg).items()
            for seed in cfg.seed_list
        ]

    setting_class = CurvatureSetting

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        s = spectra(tables, "ggn", cfg)
        if s.empty:
            return []
        workloads = [w for w in cfg.design.workloads if w in set(s["workload"])]
        kinds = list(cfg.arms)
        col = P.colors(kinds)
        fig, axes = P.figure(ncols=3, nrows=len(workloads), width=4.0, height=3.2)
        for i, w in enumerate(workloads):
            sw = s[s["workload"] == w]
            last = int(sw["step"].max())
            ax = axes[i, 0]
            for k in kinds:
                d = sw[(sw["kind"] == k) & (sw["step"] == last)]
                if len(d):
                    P.mean_band(ax, d, k, col[k], x="rank")
            ax.set(yscale="log", xlabel="rank", ylabel="GGN eigenvalue", title=f"{w}: top eigenvalues at step {last}")
            P.legend(ax, fontsize=6)
            ax = axes[i, 1]
            o = outliers(sw, classes_of(cfg, w), a.outlier_factor)
            for k in kinds:
                d = o[o["kind"] == k].rename(columns={"outliers": "value"})
                if len(d):
                    P.mean_band(ax, d, k, col[k])
            ax.axhline(classes_of(cfg, w), color="k", ls=":", lw=1, label="C")
            ax.set(
                xlabel="step", ylabel=f"outliers (> {a.outlier_factor:g} x bulk)", title=f"{w}: outliers over training"
            )
            ax = axes[i, 2]
            dens = tables.series(M.GGN_DENSITY) if tables.has(M.GGN_DENSITY) else tables.metrics.iloc[:0]
            at = tables.series(M.GGN_DENSITY_AT) if tables.has(M.GGN_DENSITY_AT) else tables.metrics.iloc[:0]
            names = {run_arm(w, k) for k in kinds}
            dens, at = dens[dens["arm"].isin(names)], at[at["arm"].isin(names)]
            first_seed = dens["seed"].min() if len(dens) else None
            for k in kinds:
                d = dens[(dens["arm"] == run_arm(w, k)) & (dens["seed"] == first_seed)]
                x = at[(at["arm"] == run_arm(w, k)) & (at["seed"] == first_seed)]
                if len(d) and len(x):
                    bulk = o[(o["kind"] == k) & (o["seed"] == first_seed) & (o["step"] == int(d["step"].max()))]["bulk"]
                    scale = float(bulk.iloc[0]) if len(bulk) else 1.0
                    grid, density = x["value"].to_numpy() / scale, d["value"].to_numpy()
                    keep = grid > 0  # the quadrature's grid has a margin below 0; the GGN has no negative eigenvalues
                    ax.plot(grid[keep], density[keep], color=col[k], lw=1, label=k)
            ax.set(
                xscale="log",
                yscale="log",
                ylim=(1e-6, None),
                xlabel="eigenvalue / bulk scale",
                ylabel="density",
                title=f"{w}: GGN spectral density (seed {first_seed})",
            )
            ax.axvline(a.outlier_factor, color="k", ls=":", lw=1)
            P.legend(ax, fontsize=6)
        paths = [P.save(fig, out / "curvature.png")]
        runs = tables.runs
        if "final_curvature_seconds" in runs:
            fig, axes = P.figure(width=5.0)
            ax = axes[0, 0]
            share = runs["final_curvature_seconds"].astype(float) / runs["train_seconds"].astype(float)
            g = pd.DataFrame({"arm": runs["arm"], "share": share}).groupby("arm")["share"].mean()
            ax.barh(list(g.index), list(g.to_numpy()), color="#1f77b4")
            ax.set(xlabel="share of run wall time spent measuring curvature", title="Cost of the Lanczos measurements")
            paths.append(P.save(fig, out / "curvature_cost.png"))
        return paths
