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

The outliers are identified by what §3 says makes them, not by a gap in the spectrum (the head of
a spectrum with thousands of nonzero eigenvalues decays smoothly, so a count above a multiple of a
"bulk" read from ranks C+1..k moves with the multiple): the mean m of the layer's inputs gives the
curvature a block (m m^T) (x) E[B^T H B], whose eigenvectors have the form u (x) m_hat. A top
eigenvector counts as a mean-direction outlier when its share ||V m_hat||^2 along the input mean is
at least `share_min` (1 for that form, about 1/in for a random direction). The eigenvalues of the
class structure (Papyan 2020), whose eigenvectors are not along the mean, are reported apart, as a
descriptive row: centering is not claimed to remove them.

Centering as the chapter states it (Eq. 9 with Sigma = I): the same trained uncentered network,
reparameterized so that the layer sees its inputs minus m and its bias absorbs W m, measured before
and after (engine/curvature.py, `centered_copy`). The arms trained with batch centering, BN next and
BN previous are other networks: batch centering is reported descriptively, BN next and previous are
judged by their removal relative to the uncentered network, paired by seed. For one layer of a ReLU
network without normalization the Hessian block equals the GGN block (piecewise linear in that
layer's weights): one exact row checks it.
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
from normlab.engine.claims import CONTROL, DESCRIPTIVE, EXACT, MEASURED, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import paired_t, t_interval

from normlab.engine.experiment import Experiment, Setting, arm_configs
from .common import num_classes
from .noise import NoiseConfig, NoiseFactory

_COUNT = (
    "mean-direction outliers per class: top-k GGN eigenvectors of the measured layer with share >= share_min "
    "along the layer's input mean, / C, at the last checkpoint; mean over seeds"
)
_MASS = (
    "mean-direction mass per class, with no per-vector cut: the trace of the top-k eigenvectors' projector on "
    "the subspace {u (x) m_hat} (the sum of their shares along the input mean) minus its chance value k / in, "
    "/ C; GGN, last checkpoint, k = top_k; mean over seeds"
)
_RELATIVE = (
    "paired by seed: 1 - (mean-direction outliers of this arm) / (those of the uncentered arm), GGN, last "
    "checkpoint; mean over seeds"
)
_ABOUT_C = (
    "the uncentered network's curvature has about C outlier eigenvalues whose eigenvectors lie along the mean of "
    "the layer's inputs (u (x) m_hat): Papyan's (2020) count; the chapter (§3) says uncentered inputs give a small "
    "number of outliers, up to as many as the layer's outputs"
)
_ABOUT_C_COUNT = (
    "the same count read per eigenvector, each counted when its share along the mean is at least share_min (the "
    "rows' statistic until 2026-12-04; it moves with the cut where the shares form a continuum)"
)
_EQ9 = (
    "reparameterizing the same network to centered inputs (Eq. 9: same function, bias absorbing W m) removes the "
    "mean-direction outliers (Grosse ch. 5, §3, Eq. 9)"
)
_EQ9_STAT = (
    "paired by seed: 1 - (mean-direction outliers after Eq. 9) / (before), the same trained uncentered network, "
    "GGN, last checkpoint; mean over seeds"
)
_FEWER = "removes the mean-direction outliers: at least removal_min of the uncentered network's (Grosse ch. 5, §4.2)"
# Descriptive from 2026-12-04: BN right after the previous activation makes the measured layer's inputs
# centred by construction, so their mean is a noise direction and "no outlier along it" cannot fail;
# Eq. 9's row (the same network, centred) carries the claim that centering removes them.
_BNPREV = (
    "BN after the previous activation: its mean-direction outliers relative to the uncentered network's "
    "(described, not judged: that BN centres the layer's inputs by construction, so their mean is noise and "
    "none can be found along it; K8-eq9 judges centering)"
)
_KNOCK = (
    "Noise after BN does not bring the outliers back at the weights that follow it, because the next "
    "layer's BN still cancels a shift of their inputs (Grosse ch. 5, §4.2, reading of Santurkar et al.)"
)
_TOP = "the same reparameterization lowers the top eigenvalue by more than a stated factor (Grosse ch. 5, §3)"
_TOPSTAT = "paired by seed: geometric mean of lambda_1 before / lambda_1 after Eq. 9, same network, GGN"
_TRAINED_CENTERED = (
    "a network trained with batch centering after every ReLU (another network, not Eq. 9's): its "
    "mean-direction outliers relative to the uncentered network's"
)
_CLASS = (
    "the top eigenvalues whose eigenvectors are not along the input mean (class structure, Papyan 2020): a "
    "different mechanism, which centering is not claimed to remove"
)
_CLASS_STAT = (
    "top-k GGN eigenvectors with share < share_min ranked within the top C, / C, uncentered network (after Eq. 9 "
    "in the detail), mean over seeds"
)

WORKLOADS = ("mnist1d", "mixture")  # the workloads the claims name, in the order their claims follow
# Each workload's claims by role, in this order (ids written out: tests hold each to one literal definition)
ROLES = ("ggn", "eq9", "top", "bn_next", "bn_prev", "knockout", "centered", "class")
CLAIMS = (
    Claim("K8-mnist1d", MEASURED, "MNIST-1D: " + _ABOUT_C, _MASS, Rule("in", "about_c_band")),
    Claim("K8-eq9-mnist1d", MEASURED, "MNIST-1D: " + _EQ9, _EQ9_STAT, Rule(">=", "removal_min")),
    Claim("K8-top-mnist1d", MEASURED, "MNIST-1D: " + _TOP, _TOPSTAT, Rule(">", "top_drop_min")),
    Claim(
        "K8-bnnext-mnist1d", MEASURED, "MNIST-1D: BN in the next layer " + _FEWER, _RELATIVE, Rule(">=", "removal_min")
    ),
    Claim("K8-bnprev-mnist1d", DESCRIPTIVE, "MNIST-1D: " + _BNPREV, _RELATIVE, Rule("none")),
    Claim(
        "K8-knockout-mnist1d",
        MEASURED,
        "MNIST-1D: " + _KNOCK,
        _COUNT.replace("GGN", "GGN (knockout arm)"),
        Rule("<", "return_max"),
    ),
    Claim("K8-centered-mnist1d", DESCRIPTIVE, "MNIST-1D: " + _TRAINED_CENTERED, _RELATIVE, Rule("none")),
    Claim("K8-class-mnist1d", DESCRIPTIVE, "MNIST-1D: " + _CLASS, _CLASS_STAT, Rule("none")),
    Claim("K8-mixture", MEASURED, "Gaussian mixture: " + _ABOUT_C, _MASS, Rule("in", "about_c_band")),
    Claim("K8-eq9-mixture", MEASURED, "Gaussian mixture: " + _EQ9, _EQ9_STAT, Rule(">=", "removal_min")),
    Claim("K8-top-mixture", MEASURED, "Gaussian mixture: " + _TOP, _TOPSTAT, Rule(">", "top_drop_min")),
    Claim(
        "K8-bnnext-mixture",
        MEASURED,
        "Gaussian mixture: BN in the next layer " + _FEWER,
        _RELATIVE,
        Rule(">=", "removal_min"),
    ),
    Claim("K8-bnprev-mixture", DESCRIPTIVE, "Gaussian mixture: " + _BNPREV, _RELATIVE, Rule("none")),
    Claim(
        "K8-knockout-mixture",
        MEASURED,
        "Gaussian mixture: " + _KNOCK,
        _COUNT.replace("GGN", "GGN (knockout arm)"),
        Rule("<", "return_max"),
    ),
    Claim("K8-centered-mixture", DESCRIPTIVE, "Gaussian mixture: " + _TRAINED_CENTERED, _RELATIVE, Rule("none")),
    Claim("K8-class-mixture", DESCRIPTIVE, "Gaussian mixture: " + _CLASS, _CLASS_STAT, Rule("none")),
    Claim("K8-count-mnist1d", DESCRIPTIVE, "MNIST-1D: " + _ABOUT_C_COUNT, _COUNT, Rule("none")),
    Claim("K8-count-mixture", DESCRIPTIVE, "Gaussian mixture: " + _ABOUT_C_COUNT, _COUNT, Rule("none")),
    Claim(
        "K8-hessian",
        CONTROL,
        "Instrument check, not a statement of the chapter: for one layer of a ReLU network without normalization "
        "the Hessian block equals the GGN block (the network is piecewise linear in that layer's weights), so the "
        "Lanczos solver must give both the same top eigenvalues",
        "max over workloads, seeds and the top-k ranks of |lambda_Hessian - lambda_GGN| / lambda_GGN, uncentered "
        "network, last checkpoint",
        Rule("<", "hessian_tol"),
    ),
)
K8 = {w: dict(zip(ROLES, CLAIMS[i * len(ROLES) : (i + 1) * len(ROLES)])) for i, w in enumerate(WORKLOADS)}
K8_COUNT = {w: CLAIMS[len(WORKLOADS) * len(ROLES) + i] for i, w in enumerate(WORKLOADS)}
K8_HESSIAN = CLAIMS[-1]
REMOVERS = ("bn_next", "bn_prev", "centered")  # the trained arms compared with the uncentered one (their roles)

# §4.4, the other normalizers, each in every hidden layer of a separately trained network, paired by seed
# with the uncentered one: weight norm (no centering), weight norm with batch centering (Salimans and
# Kingma's recommendation), layer norm right after the measured layer, and the same without its centering
# step (RMS norm). One statistic for all: the mean-direction mass per class (K8's, no per-vector cut) of an
# arm over that of a reference arm, per seed. Its meanings, fixed before the runs: "eliminates" <=
# eliminate_max; "attenuates" < attenuate_max; "no effect" (keeps them) >= attenuate_max.
_RATIO = (
    "paired by seed: (mean-direction mass per class of this arm) / (that of {ref}), GGN of the measured layer, "
    "last checkpoint, K8's mass (summed shares along the input mean minus chance, / C); mean over seeds"
)
_WN = (
    "weight norm, which rescales each unit's weights but centers nothing, keeps the mean-direction outliers: "
    "its mass stays at least attenuate_max of the uncentered network's (Grosse ch. 5, §4.4)"
)
_WNBC = (
    "weight norm with batch centering of the pre-activations (Salimans and Kingma's recommendation) removes "
    "them: at most eliminate_max of the uncentered network's mass is left (Grosse ch. 5, §4.4)"
)
_LN = (
    "layer norm right after the measured layer does not eliminate them: more than eliminate_max of the "
    "uncentered network's mass is left (Grosse ch. 5, §4.4: its centering is over units, not examples)"
)
_LNC = (
    "the open question of §4.4, whether layer norm's centering step at least attenuates the outliers: layer "
    "norm keeps less than attenuate_max of the mass that the same normalizer without centering (RMS norm) "
    "keeps, paired by seed; 'not supported' reads as no attenuation of that size"
)
_RMS = "RMS norm (layer norm without centering) right after the measured layer, against the uncentered network"
_ONES = (
    "what layer norm's centering can remove directly: in the RMS-norm network, the share of the top-k "
    "eigenvectors' mean-direction mass that lies along the single direction 1_hat (x) m_hat (the unit-side "
    "factor along all ones)"
)
_ONES_STAT = (
    "per seed: sum over the top k of (1_hat^T V m_hat)^2 / sum of ||V m_hat||^2, RMS-norm arm, GGN, last "
    "checkpoint; mean over seeds"
)
OTHER_ROLES = ("wn", "wnbc", "ln", "lncenter", "rms", "ones")
# role -> (arm, reference arm), for the ratio rows
OTHER_ARMS = {
    "wn": ("wn", "uncentered"),
    "wnbc": ("wn_center", "uncentered"),
    "ln": ("ln_next", "uncentered"),
    "lncenter": ("ln_next", "rms_next"),
    "rms": ("rms_next", "uncentered"),
}
_VS_U, _VS_RMS = _RATIO.format(ref="the uncentered arm"), _RATIO.format(ref="the RMS-norm arm")
_MN, _MX = "MNIST-1D: ", "Gaussian mixture: "
OTHER_CLAIMS = (  # workload by workload, in OTHER_ROLES' order (ids written out: one literal definition each)
    Claim("K8-wn-mnist1d", MEASURED, _MN + _WN, _VS_U, Rule(">=", "attenuate_max")),
    Claim("K8-wnbc-mnist1d", MEASURED, _MN + _WNBC, _VS_U, Rule("<=", "eliminate_max")),
    Claim("K8-ln-mnist1d", MEASURED, _MN + _LN, _VS_U, Rule(">", "eliminate_max")),
    Claim("K8-lncenter-mnist1d", MEASURED, _MN + _LNC, _VS_RMS, Rule("<", "attenuate_max")),
    Claim("K8-rms-mnist1d", DESCRIPTIVE, _MN + _RMS, _VS_U, Rule("none")),
    Claim("K8-ones-mnist1d", DESCRIPTIVE, _MN + _ONES, _ONES_STAT, Rule("none")),
    Claim("K8-wn-mixture", MEASURED, _MX + _WN, _VS_U, Rule(">=", "attenuate_max")),
    Claim("K8-wnbc-mixture", MEASURED, _MX + _WNBC, _VS_U, Rule("<=", "eliminate_max")),
    Claim("K8-ln-mixture", MEASURED, _MX + _LN, _VS_U, Rule(">", "eliminate_max")),
    Claim("K8-lncenter-mixture", MEASURED, _MX + _LNC, _VS_RMS, Rule("<", "attenuate_max")),
    Claim("K8-rms-mixture", DESCRIPTIVE, _MX + _RMS, _VS_U, Rule("none")),
    Claim("K8-ones-mixture", DESCRIPTIVE, _MX + _ONES, _ONES_STAT, Rule("none")),
)
OTHER = {w: dict(zip(OTHER_ROLES, OTHER_CLAIMS[i * len(OTHER_ROLES) : (i + 1) * len(OTHER_ROLES)]))
         for i, w in enumerate(WORKLOADS)}  # fmt: skip
K8_LN_ONES = Claim(
    "K8-ln-ones",
    EXACT,
    "layer norm's centering projects exactly one direction out of the curvature of the layer before it: the "
    "unit-side factor along all ones (its Jacobian maps the all-ones direction to zero), so no top eigenvector "
    "of that layer's GGN has any share on the subspace {1_hat (x) x} (Grosse ch. 5, §4.4)",
    "max over workloads, seeds and the top-k eigenvectors of ||V^T 1_hat||^2 / ||V||^2, layer-norm arm, GGN, "
    "last checkpoint (float32 products)",
    Rule("<", "ones_tol"),
)
CLAIMS = CLAIMS + OTHER_CLAIMS + (K8_LN_ONES,)


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
    share_min: float = param(
        0.5, min=0.0, max=1.0, help="a mean-direction outlier: a top eigenvector with at least this share along m"
    )
    about_c_band: list[float] = param(
        default_factory=lambda: [0.5, 2.0], help="'about C outliers': outliers per class inside this band"
    )
    removal_min: float = param(
        0.5, min=0.0, max=1.0, help="'removes': at least this share of the uncentered network's outliers gone"
    )
    return_max: float = param(0.5, min=0.0, help="knockout: outliers per class stay below this")
    top_drop_min: float = param(2.0, min=1.0, help="Eq. 9 lowers lambda_1 by more than this factor")
    hessian_tol: float = param(
        1e-2, min=0.0, help="K8-hessian: largest relative gap between the Hessian's and the GGN's top eigenvalues"
    )
    eliminate_max: float = param(
        0.4,
        min=0.0,
        help="§4.4 'eliminates': an arm keeps at most this share of its reference arm's mean-direction mass",
    )
    attenuate_max: float = param(
        0.8, min=0.0, help="§4.4 'attenuates': keeps less than this share; at or above it, 'no effect'"
    )
    ones_tol: float = param(
        1e-4, min=0.0, help="K8-ln-ones: largest share on {1_hat (x) x} of a top eigenvector, layer-norm arm"
    )


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
        if self.run.curvature.layer == "layer1":
            raise C.ConfigError(
                "run.curvature.layer: K8's chance value needs the measured layer's fan-in, which for a hidden layer "
                "is model.width; measure layer2 or deeper"
            )
        classes = num_classes(self.run.data)
        if self.run.curvature.top_k < 3 * classes:
            raise C.ConfigError(
                f"run.curvature.top_k: needs >= 3C = {3 * classes} eigenvalues (about C outliers and the ranks "
                f"that show where they end); set run.curvature.top_k={3 * classes}"
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


def spectra(tables: Tables, metric: str, cfg: CurvatureExperimentConfig) -> pd.DataFrame:
    """One metric with stat "rank" (eigenvalues or mean shares): one row per run, step and rank
    (columns workload, kind, seed, step, rank, value); empty where no run wrote it."""
    if not tables.has(metric):  # the Hessian and Eq. 9 are measured where the config asks only
        return pd.DataFrame(columns=["workload", "kind", "seed", "step", "rank", "value"])
    d = with_workload(tables.series(metric, "rank"), cfg)
    d["rank"] = d["item"].astype(int)
    return d[["workload", "kind", "seed", "step", "rank", "value"]]


def outliers(eig: pd.DataFrame, share: pd.DataFrame, classes: int, share_min: float) -> pd.DataFrame:
    """Per (workload, arm, seed, step): lambda_1, the mean-direction outliers (top-k eigenvectors with
    share >= share_min along the input mean), and the class-structure ones (share < share_min, ranked
    within the top C)."""
    keys = ["workload", "kind", "seed", "step", "rank"]
    d = eig.merge(share.rename(columns={"value": "share"}), on=keys, how="left")
    rows = []
    for (w, kind, seed, step), g in d.groupby(["workload", "kind", "seed", "step"]):
        g = g.sort_values("rank")
        along = g["share"] >= share_min
        rows.append(
            {
                "workload": w,
                "kind": kind,
                "seed": int(seed),
                "step": int(step),
                "top": float(g["value"].iloc[0]),
                "outliers": int(along.sum()),
                "share_sum": float(g["share"].sum()),
                "per_class": float(along.sum()) / classes,
                "top_k": len(g),
                "class_top_c": float((~along & (g["rank"] <= classes)).sum()) / classes,
                "no_share": bool(g["share"].isna().all()),
            }
        )
    cols = ["workload", "kind", "seed", "step", "top", "outliers", "share_sum", "per_class", "top_k", "class_top_c",
            "no_share"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _by_seed(o: pd.DataFrame, kind: str, column: str, seeds: list[int]) -> list[float]:
    d = o[o["kind"] == kind].set_index("seed")[column]
    return [float(d.get(s, float("nan"))) for s in seeds]


def classes_of(cfg: CurvatureExperimentConfig, workload: str) -> int:
    """C, the number of classes of a workload's data."""
    raw = C.apply_overrides(C.to_dict(cfg.run), cfg.design.workloads.get(workload) or {})
    data = C.from_dict(RunConfig, raw).data
    return num_classes(data)


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class Measured:
    """One workload's outlier tables at the last checkpoint: the trained arms, and the uncentered
    network after Eq. 9; the Hessian's and the GGN's eigenvalues of the uncentered arm."""

    classes: int
    ggn: pd.DataFrame  # outliers per run (every arm)
    eq9: pd.DataFrame  # outliers per run after Eq. 9 (the arms it was measured on)
    eig: pd.DataFrame  # the GGN's eigenvalues at that step
    hessian: pd.DataFrame  # the Hessian's eigenvalues at its last step (may be empty)
    step: int
    share_min: float
    ones: pd.DataFrame = field(default_factory=pd.DataFrame)  # per run: the all-ones shares (ones_shares)
    fan_in: int = 0  # the measured layer's inputs (the chance value of the mass is top_k / fan_in)

    def where(self) -> str:
        counts = ", ".join(f"{k} {v:.1f}" for k, v in self.ggn.groupby("kind")["outliers"].mean().items())
        eq9 = f"; after Eq. 9: {self.eq9['outliers'].mean():.1f}" if len(self.eq9) else ""
        return (
            f"step {self.step}, C = {self.classes}, an outlier's eigenvector has share >= {self.share_min:g} along "
            f"the input mean; mean outliers of the top {int(self.ggn['top_k'].max())}: {counts}{eq9}"
        )


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
        classes, share_min = classes_of(self.cfg, w), self.a.share_min

        def at_last(metric: str) -> tuple[pd.DataFrame, int]:
            sp = spectra(self.tables, metric, self.cfg)
            sp = sp[sp["workload"] == w]
            last = int(sp["step"].max()) if len(sp) else -1
            return sp[sp["step"] == last], last

        eig, step = at_last(M.eig(M.GGN))
        if eig.empty:
            return f"no GGN spectra for workload {w} (every run failed?)"
        share, _ = at_last(M.GGN_MEAN_SHARE)
        eig9, _ = at_last(M.eig(M.GGN_EQ9))
        share9, _ = at_last(M.GGN_EQ9_MEAN_SHARE)
        hess, _ = at_last(M.eig(M.HESSIAN))
        ones, _ = at_last(M.GGN_ONES_SHARE)
        ones_mean, _ = at_last(M.GGN_ONES_MEAN_SHARE)
        return Measured(
            classes,
            outliers(eig, share, classes, share_min),
            outliers(eig9, share9, classes, share_min),
            eig,
            hess,
            step,
            share_min,
            ones_by_run(ones, ones_mean, share),
            layer_fan_in(self.cfg, w),
        )


def ones_by_run(ones: pd.DataFrame, ones_mean: pd.DataFrame, share: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, seed): the largest share of a top eigenvector on {1_hat (x) x}, and the summed shares of the
    top k along 1_hat (x) m_hat and along the input mean (columns kind, seed, ones_max, ones_mean_sum, mean_sum)."""
    cols = ["kind", "seed", "ones_max", "ones_mean_sum", "mean_sum"]
    if ones.empty:
        return pd.DataFrame(columns=cols)
    keys = ["kind", "seed"]
    out = ones.groupby(keys)["value"].max().rename("ones_max").to_frame()
    out["ones_mean_sum"] = ones_mean.groupby(keys)["value"].sum()
    out["mean_sum"] = share.groupby(keys)["value"].sum()
    return out.reset_index()[cols]


def _count_estimate(m: Measured, kind: str, seeds: list[int]) -> Estimate:
    vals = _by_seed(m.ggn, kind, "per_class", seeds)
    n = int(np.isfinite(vals).sum())
    capped = m.ggn[(m.ggn["kind"] == kind) & (m.ggn["outliers"] >= m.ggn["top_k"])]
    cap = (
        f"; {len(capped)} run(s) have every one of the top k along the mean (the count is capped at k)"
        if len(capped)
        else ""
    )
    return Estimate(float(np.nanmean(vals)) if n else float("nan"), t_interval(vals), n, detail=m.where() + cap)


def k8_count(s: CurvatureSetting, w: str) -> Estimate:
    """Mean-direction outliers in the uncentered network's GGN counted by the per-vector cut, per class."""
    m = s.measured(w)
    return Estimate.missing(m) if isinstance(m, str) else _count_estimate(m, "uncentered", s.seeds)


def k8_mass(s: CurvatureSetting, w: str) -> Estimate:
    """About C outliers, read without a cut: the top-k eigenvectors' summed share along the input mean (the
    trace of their projector on the mean-direction subspace) above its chance value k / in, per class.
    A random unit vector has share 1/in on average (the subspace u (x) m_hat holds out of out x in
    dimensions), so near-degenerate eigenvectors that mix the mean and class directions count by the
    share they hold, not by which side of a cut they fall."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    fan_in = layer_fan_in(s.cfg, w)
    u = m.ggn[m.ggn["kind"] == "uncentered"].set_index("seed")
    vals = [
        float((u.at[sd, "share_sum"] - u.at[sd, "top_k"] / fan_in) / m.classes) if sd in u.index else float("nan")
        for sd in s.seeds
    ]
    n = int(np.isfinite(vals).sum())
    k = int(u["top_k"].max()) if len(u) else 0
    detail = (
        f"step {m.step}, C = {m.classes}, top {k}, the layer's {fan_in} inputs (chance {k / fan_in:.2g}); summed "
        f"share along the mean {S.nanmean(u['share_sum'].tolist()):.2f} on average; by the cut >= {m.share_min:g}: "
        f"{S.nanmean(u['outliers'].tolist()):.1f} outliers"
    )
    return Estimate(S.nanmean(vals), t_interval(vals), n, detail=detail)


def layer_fan_in(cfg: CurvatureExperimentConfig, workload: str) -> int:
    """The measured layer's number of inputs: a hidden layer's fan-in is the MLP's width."""
    raw = C.apply_overrides(C.to_dict(cfg.run), cfg.design.workloads.get(workload) or {})
    return int(C.from_dict(RunConfig, raw).model.width)


def _relative_removal(before: list[float], after: list[float]) -> tuple[list[float], str]:
    """Per seed 1 - after / before, where before > 0; and why seeds were left out."""
    out, left = [], 0
    for b, a in zip(before, after):
        if np.isfinite(b) and np.isfinite(a) and b > 0:
            out.append(1.0 - a / b)
        elif np.isfinite(b) and np.isfinite(a):
            left += 1
    why = f"{left} seed(s) without mean-direction outliers before, left out (nothing to remove)" if left else ""
    return out, why


def k8_eq9(s: CurvatureSetting, w: str) -> Estimate:
    """The same trained uncentered network before and after Eq. 9: the share of its outliers removed."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    if m.eq9.empty:
        return Estimate.missing("no Eq. 9 spectra (set curvature.eq9_steps on the uncentered arm, e.g. [1000])")
    before = _by_seed(m.ggn, "uncentered", "outliers", s.seeds)
    after = _by_seed(m.eq9, "uncentered", "outliers", s.seeds)
    rel, why = _relative_removal(before, after)
    detail = "; ".join(x for x in (m.where(), why) if x)
    return Estimate(float(np.mean(rel)) if rel else float("nan"), t_interval(rel), len(rel), detail=detail)


def k8_removal(s: CurvatureSetting, w: str, arm: str) -> Estimate:
    """The share of the uncentered network's mean-direction outliers a separately trained arm lacks,
    paired by seed."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    rel, why = _relative_removal(
        _by_seed(m.ggn, "uncentered", "outliers", s.seeds), _by_seed(m.ggn, arm, "outliers", s.seeds)
    )
    detail = "; ".join(x for x in (m.where(), why) if x)
    return Estimate(float(np.mean(rel)) if rel else float("nan"), t_interval(rel), len(rel), detail=detail)


def k8_top(s: CurvatureSetting, w: str) -> Estimate:
    """lambda_1 before over after Eq. 9, the same network, paired by seed."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    if m.eq9.empty:
        return Estimate.missing("no Eq. 9 spectra (set curvature.eq9_steps on the uncentered arm, e.g. [1000])")
    before, after = _by_seed(m.ggn, "uncentered", "top", s.seeds), _by_seed(m.eq9, "uncentered", "top", s.seeds)
    est, ci, n = paired_t(before, after, True)
    detail = f"mean lambda_1: {S.nanmean(before):.3g} before, {S.nanmean(after):.3g} after Eq. 9"
    return Estimate(est, ci, n, detail=detail)


def k8_knockout(s: CurvatureSetting, w: str) -> Estimate:
    """Mean-direction outliers per class of the knockout arm."""
    m = s.measured(w)
    return Estimate.missing(m) if isinstance(m, str) else _count_estimate(m, "knockout", s.seeds)


def k8_class(s: CurvatureSetting, w: str) -> Estimate:
    """Class-structure eigenvalues among the top C: eigenvectors not along the mean."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    vals = _by_seed(m.ggn, "uncentered", "class_top_c", s.seeds)
    after = _by_seed(m.eq9, "uncentered", "class_top_c", s.seeds) if len(m.eq9) else []
    n = int(np.isfinite(vals).sum())
    detail = f"uncentered: {S.nanmean(vals):.2f} per class of the top C not along the mean" + (
        f"; after Eq. 9: {S.nanmean(after):.2f}" if after else ""
    )
    return Estimate(float(np.nanmean(vals)) if n else float("nan"), t_interval(vals), n, detail=detail)


def k8_hessian(s: CurvatureSetting) -> Estimate:
    """The largest relative gap between the Hessian's and the GGN's top eigenvalues, uncentered arm."""
    gaps, runs = [], 0
    for w in WORKLOADS:
        m = s.measured(w)
        if isinstance(m, str) or m.hessian.empty:
            continue
        keys = ["kind", "seed", "rank"]
        both = m.eig.merge(m.hessian, on=keys, suffixes=("_ggn", "_hess"))
        both = both[both["kind"] == "uncentered"]
        runs += both["seed"].nunique()
        gaps += list(((both["value_hess"] - both["value_ggn"]).abs() / both["value_ggn"]).to_numpy())
    if not gaps:
        return Estimate.missing("no Hessian spectra (set run.curvature.hessian_steps on the uncentered arm)")
    return Estimate(float(np.max(gaps)), n=runs, detail=f"{len(gaps)} eigenvalues of {runs} runs")


def _masses(m: Measured, kind: str, seeds: list[int]) -> list[float]:
    """K8's mean-direction mass per class of one arm, per seed (nan where the arm did not run)."""
    d = m.ggn[m.ggn["kind"] == kind].set_index("seed")
    return [
        float((d.at[sd, "share_sum"] - d.at[sd, "top_k"] / m.fan_in) / m.classes) if sd in d.index else float("nan")
        for sd in seeds
    ]


def k8_mass_ratio(s: CurvatureSetting, w: str, arm: str, ref: str) -> Estimate:
    """§4.4: an arm's mean-direction mass over its reference arm's, paired by seed; seeds where the reference
    holds no mass above chance are left out (nothing to keep or remove), and said so."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    absent = [a for a in (arm, ref) if a not in s.cfg.arms]
    if absent:
        return Estimate.missing(f"the arm(s) {absent} are not in arms; add them (configs/curvature.yaml has them)")
    num, den = _masses(m, arm, s.seeds), _masses(m, ref, s.seeds)
    vals = [a / b for a, b in zip(num, den) if np.isfinite(a) and np.isfinite(b) and b > 0]
    left = sum(1 for a, b in zip(num, den) if np.isfinite(a) and np.isfinite(b) and b <= 0)
    detail = (
        f"step {m.step}, C = {m.classes}; mean mass per class: {arm} {S.nanmean(num):.3g}, {ref} {S.nanmean(den):.3g}"
        + (f"; {left} seed(s) where {ref} holds no mass above chance, left out" if left else "")
    )
    return Estimate(float(np.mean(vals)) if vals else float("nan"), t_interval(vals), len(vals), detail=detail)


def k8_ones_fraction(s: CurvatureSetting, w: str, arm: str = "rms_next") -> Estimate:
    """The share of an arm's mean-direction mass (summed over the top k) along the single direction
    1_hat (x) m_hat: all that layer norm's centering can take out of it directly."""
    m = s.measured(w)
    if isinstance(m, str):
        return Estimate.missing(m)
    d = m.ones[m.ones["kind"] == arm].set_index("seed") if len(m.ones) else pd.DataFrame()
    if d.empty:
        return Estimate.missing(f"no all-ones shares for the arm {arm!r} (is it in arms?)")
    vals = [float(d.at[sd, "ones_mean_sum"] / d.at[sd, "mean_sum"]) for sd in s.seeds if sd in d.index]
    detail = f"summed share along the input mean {S.nanmean(d['mean_sum'].tolist()):.2f}, of which along 1_hat (x) " \
        f"m_hat {S.nanmean(d['ones_mean_sum'].tolist()):.3f} on average"  # fmt: skip
    return Estimate(S.nanmean(vals), t_interval(vals), len(vals), detail=detail)


def k8_ln_ones(s: CurvatureSetting, arm: str = "ln_next") -> Estimate:
    """The largest share on {1_hat (x) x} of any top eigenvector of the layer-norm arm, over workloads and seeds."""
    worst, runs = [], 0
    for w in WORKLOADS:
        m = s.measured(w)
        if isinstance(m, str) or m.ones.empty:
            continue
        d = m.ones[m.ones["kind"] == arm]
        runs += len(d)
        worst += d["ones_max"].tolist()
    if not worst:
        return Estimate.missing(f"no all-ones shares for the arm {arm!r} (is it in arms?)")
    return Estimate(float(np.max(worst)), n=runs, detail=f"top-k eigenvectors of {runs} runs")


ESTIMATORS = {}
for _w in WORKLOADS:
    ESTIMATORS[K8[_w]["ggn"]] = partial(k8_mass, w=_w)
    ESTIMATORS[K8_COUNT[_w]] = partial(k8_count, w=_w)
    ESTIMATORS[K8[_w]["eq9"]] = partial(k8_eq9, w=_w)
    ESTIMATORS[K8[_w]["top"]] = partial(k8_top, w=_w)
    for _arm in REMOVERS:
        ESTIMATORS[K8[_w][_arm]] = partial(k8_removal, w=_w, arm=_arm)
    ESTIMATORS[K8[_w]["knockout"]] = partial(k8_knockout, w=_w)
    ESTIMATORS[K8[_w]["class"]] = partial(k8_class, w=_w)
ESTIMATORS[K8_HESSIAN] = k8_hessian
for _w in WORKLOADS:  # §4.4's rows after K8's, so that K8's keep their place in claims.csv
    for _role, (_arm, _ref) in OTHER_ARMS.items():
        ESTIMATORS[OTHER[_w][_role]] = partial(k8_mass_ratio, w=_w, arm=_arm, ref=_ref)
    ESTIMATORS[OTHER[_w]["ones"]] = partial(k8_ones_fraction, w=_w)
ESTIMATORS[K8_LN_ONES] = k8_ln_ones


class Curvature(Experiment):
    name = "curvature"
    title = "K8: outlier eigenvalues of a layer's curvature, and what centering, BN and the knockout do to them"
    short_names = {"K8": "curvature outliers and centering"}
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
        s = spectra(tables, M.eig(M.GGN), cfg)
        if s.empty:
            return []
        shares = spectra(tables, M.GGN_MEAN_SHARE, cfg)
        s9, shares9 = spectra(tables, M.eig(M.GGN_EQ9), cfg), spectra(tables, M.GGN_EQ9_MEAN_SHARE, cfg)
        workloads = [w for w in cfg.design.workloads if w in set(s["workload"])]
        kinds = list(cfg.arms)
        col = P.colors(kinds)
        fig, axes = P.figure(ncols=3, nrows=len(workloads), width=4.0, height=3.2)
        for i, w in enumerate(workloads):
            sw = s[s["workload"] == w]
            last = int(sw["step"].max())
            at_last = lambda d: d[(d["workload"] == w) & (d["step"] == last)]  # noqa: E731
            for ax, eig_or_share, eq9 in (
                (axes[i, 0], at_last(s), at_last(s9)),
                (axes[i, 1], at_last(shares), at_last(shares9)),
            ):
                for k in kinds:
                    d = eig_or_share[eig_or_share["kind"] == k]
                    if len(d):
                        P.mean_band(ax, d, k, col[k], x="rank")
                d = eq9[eq9["kind"] == "uncentered"]
                if len(d):
                    P.mean_band(ax, d, "uncentered after Eq. 9", "#000000", x="rank")
            axes[i, 0].set(
                yscale="log", xlabel="rank", ylabel="GGN eigenvalue", title=f"{w}: top eigenvalues at step {last}"
            )
            axes[i, 1].axhline(a.share_min, color="k", ls=":", lw=1, label=f"share_min {a.share_min:g}")
            axes[i, 1].set(
                xlabel="rank",
                ylabel="eigenvector's share along the input mean",
                ylim=(0, 1.02),
                title=f"{w}: which eigenvectors lie along the mean",
            )
            for ax in axes[i, :2]:
                P.legend(ax, fontsize=6)
            ax = axes[i, 2]
            dens = tables.series(M.GGN_DENSITY) if tables.has(M.GGN_DENSITY) else tables.metrics.iloc[:0]
            at = tables.series(M.GGN_DENSITY_AT) if tables.has(M.GGN_DENSITY_AT) else tables.metrics.iloc[:0]
            names = {run_arm(w, k) for k in kinds}
            dens, at = dens[dens["arm"].isin(names)], at[at["arm"].isin(names)]
            first_seed = dens["seed"].min() if len(dens) else None
            for k in kinds:
                d = dens[(dens["arm"] == run_arm(w, k)) & (dens["seed"] == first_seed)]
                x = at[(at["arm"] == run_arm(w, k)) & (at["seed"] == first_seed)]
                top = sw[(sw["kind"] == k) & (sw["seed"] == first_seed) & (sw["rank"] == 1)]
                if len(d) and len(x) and len(top):
                    scale = float(top[top["step"] == top["step"].max()]["value"].iloc[0])
                    grid, density = x["value"].to_numpy() / scale, d["value"].to_numpy()
                    keep = grid > 0  # the quadrature's grid has a margin below 0; the GGN has no negative eigenvalues
                    ax.plot(grid[keep], density[keep], color=col[k], lw=1, label=k)
            ax.set(
                xscale="log",
                yscale="log",
                ylim=(1e-6, None),
                xlabel="eigenvalue / lambda_1",
                ylabel="density",
                title=f"{w}: GGN spectral density (seed {first_seed})",
            )
            P.legend(ax, fontsize=6)
        paths = [P.save(fig, out / "curvature.png")]
        paths += self._plot_normalizers(tables, cfg, out)
        runs = tables.runs
        if M.final(M.CURVATURE_SECONDS) in runs:
            fig, axes = P.figure(width=5.0)
            ax = axes[0, 0]
            share = runs[M.final(M.CURVATURE_SECONDS)].astype(float) / runs["train_seconds"].astype(float)
            g = pd.DataFrame({"arm": runs["arm"], "share": share}).groupby("arm")["share"].mean()
            ax.barh(list(g.index), list(g.to_numpy()), color="#1f77b4")
            ax.set(xlabel="share of run wall time spent measuring curvature", title="Cost of the Lanczos measurements")
            paths.append(P.save(fig, out / "curvature_cost.png"))
        return paths

    def _plot_normalizers(self, tables: Tables, cfg: CurvatureExperimentConfig, out: Path) -> list[Path]:
        """§4.4 at a glance: each arm's mean-direction mass per class (K8's, no cut), one dot per seed and the
        mean, beside what Eq. 9 leaves of the uncentered network's: the level "eliminates" is read against."""
        setting = CurvatureSetting(tables, cfg)
        arms = [a for a in ("uncentered", "wn", "wn_center", "rms_next", "ln_next", "bn_next") if a in cfg.arms]
        workloads = [w for w in cfg.design.workloads if not isinstance(setting.measured(w), str)]
        if not workloads or not {"wn", "ln_next", "rms_next"} & set(arms):
            return []
        fig, axes = P.figure(ncols=len(workloads), width=4.6, height=3.4)
        col = P.colors(list(cfg.arms))
        for ax, w in zip(axes[0], workloads):
            m = setting.measured(w)
            for i, arm in enumerate(arms):
                vals = [v for v in _masses(m, arm, setting.seeds) if np.isfinite(v)]
                if vals:
                    ax.scatter([i] * len(vals), vals, s=10, color=col[arm], alpha=0.7)
                    ax.hlines(np.mean(vals), i - 0.3, i + 0.3, color=col[arm], lw=2)
            if len(m.eq9):
                after = (m.eq9.set_index("seed")["share_sum"] - m.eq9.set_index("seed")["top_k"] / m.fan_in) / m.classes
                ax.axhline(float(after.mean()), color="k", ls=":", lw=1, label="uncentered after Eq. 9")
                P.legend(ax, fontsize=6)
            ax.axhline(0, color="#999999", lw=0.5)
            ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=7)
            ax.set(ylabel="mean-direction mass per class", title=f"{w}: the outliers under each normalizer")
        return [P.save(fig, out / "curvature_normalizers.png")]
