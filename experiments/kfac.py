"""kfac (K16): weight decay under K-FAC (Grosse ch. 5, §5.2-5.3; Zhang, Wang, Xu & Grosse 2019).

Three claims about a natural-gradient optimizer, K-FAC (engine/kfac.py, exact damping of Eq. 26):

(a) K-FAC does not suffer batch norm's implicit learning-rate decay. A BN MLP started at weight
    scale 1 and at scale 10 computes the same function; with negligible damping K-FAC turns every
    BN-fed weight by the same angle from both starts, while SGD's angle shrinks by about the square
    of the scale (its effective LR is alpha/||w||^2, Eq. 18).
(b) With BN, weight decay acts on K-FAC through the damping: as the weights grow, the curvature of
    a BN-fed layer shrinks like 1/||w||^2 and the fixed damping eta takes over, so K-FAC drifts
    towards a (slow) first-order method; decay keeps the norm down. Hence decay should raise the
    late angular update more when eta matters (1e-3, Zhang et al.'s value) than when it does not (1e-9).
(c) Without BN, decay under a Gauss-Newton preconditioner penalizes the C-norm of Eq. 27, which for a
    bias-free ReLU MLP is (L+1)^2 E||f(x)||^2 = (L+1)^2 E||J_x x||^2 (f is homogeneous of degree L+1
    in its weights and of degree 1 in its input). That is the statement of §5.3, about the full
    Gauss-Newton matrix of the squared loss; exact rows check it there, and the matrices the K-FAC
    runs use instead: the block-diagonal Gauss-Newton gives (L+1) E||J_x x||^2 (each layer alone is
    of degree 1), its Kronecker factors give the same for linear activations (the chapter's remark)
    but not for ReLU (a descriptive row says by how much), and the cross-entropy Fisher, which the
    runs' factors come from, gives (L+1)^2 E[f^T (diag p - p p^T) f], not a Jacobian norm. A measured
    row asks whether K-FAC with decay ends with a smaller input-output Jacobian, which SGD with decay
    does too; the specific prediction is a function-space one: started from two parameterizations of
    the same function (layer 1 times c, layer 2 times 1/c), K-FAC with decay should end at the same
    Jacobian norm and SGD with decay should not.

Angular update: ||w_j/||w_j|| after - w_j/||w_j|| before|| per BN-fed unit, averaged over units, BN-fed
layers and probes (the probes' `angular_update`, stat mean). Every comparison is paired by seed (the
arms share seeds, hence initial functions and batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from normlab.engine import stats as S
from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, EXACT, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.data import load_dataset
from normlab.engine.models import build_model
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, ModelConfig
from normlab.engine.stats import geometric_t, paired_t
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Experiment, Setting, arm_configs
from .common import final_metric, status_note, values_by_seed

_ANG = "angular update of BN-fed units (mean over units, BN-fed layers and probes)"
K16_IMMUNE = Claim(
    "K16-immune",
    MEASURED,
    "K-FAC is (nearly) immune to the implicit learning-rate decay: rescaling a BN network's weights 10x, "
    "which slows SGD's angular updates about 100x, barely moves K-FAC's (Grosse ch. 5, §5.2)",
    f"K-FAC's response to the rescaling as a share of SGD's: mean over seeds of log(scale-10 / scale-1 {_ANG}) "
    "under K-FAC (negligible damping) over the same mean under SGD; BCa interval, seeds resampled jointly",
    Rule("abs<=", "immune_max_share"),
)
K16_FLOOR = Claim(
    "K16-floor",
    DESCRIPTIVE,
    "How K-FAC's response to the rescaling compares with the run's own rounding: the same log ratio between "
    "the scale-1 run and a copy started one float32 ulp larger (the same function)",
    "K-FAC's mean log angle ratio (scale 10 / scale 1) in units of the rounding floor, the rms over seeds of the "
    "one-ulp copy's log ratio; paired t",
    Rule("none"),
)
K16_SGD = Claim(
    "K16-sgd",
    MEASURED,
    "Under SGD the same rescaling shrinks the angular update by about the square of the scale (effective LR "
    "alpha/||w||^2, Grosse ch. 5, Eq. 18)",
    f"geometric mean over seeds of (scale-10 / scale-1 {_ANG}) x scale^2, SGD; paired by seed",
    Rule("in", "sgd_band"),
)
K16_DAMPING = Claim(
    "K16-damping",
    MEASURED,
    "With BN, weight decay acts on K-FAC through the damping: it raises K-FAC's late angular update more "
    "when the damping is substantial than when it is negligible (Grosse ch. 5, §5.2, Eq. 26)",
    "per seed, [late angle with decay / without] at damping 1e-3 divided by the same at damping 1e-9 "
    "(late = last quarter of training); geometric mean, t on the log",
    Rule(">", "damping_effect_min"),
)
K16_JACOBIAN = Claim(
    "K16-jacobian",
    MEASURED,
    "Without BN, weight decay under K-FAC regularizes the function: the trained network's input-output "
    "Jacobian is smaller with decay than without (Grosse ch. 5, §5.3)",
    "geometric mean over seeds of E||d logits/d x||_F^2 (test examples) with decay / without, K-FAC, no BN; "
    "paired by seed",
    Rule("<", "jacobian_max_ratio"),
)
K16_JACOBIAN_SGD = Claim(
    "K16-jacobian-sgd",
    DESCRIPTIVE,
    "For comparison: the same ratio under SGD with the same per-step shrink lr x lambda",
    "geometric mean over seeds of the Jacobian ratio with decay / without, SGD, no BN; paired by seed",
    Rule("none"),
)
K16_GNNORM = Claim(
    "K16-gnnorm",
    EXACT,
    "For a bias-free ReLU MLP with L hidden layers, the Gauss-Newton norm of the weights that decay penalizes "
    "under a Gauss-Newton preconditioner equals (L+1)^2 E||J_x x||^2, a norm of the input-output Jacobian "
    "(Grosse ch. 5, §5.3, Eq. 27)",
    "max over depths and seeds of |theta^T G theta - (L+1)^2 E||J_x x||^2| / theta^T G theta (G: the full "
    "Gauss-Newton matrix of the squared loss, the one §5.3's statement is about; float64, MNIST-1D test inputs)",
    Rule("<", "gn_rel_tol"),
)
K16_REPARAM = Claim(
    "K16-reparam",
    MEASURED,
    "Decay under K-FAC penalizes a norm of the function, not of the parameters: from two parameterizations of "
    "the same network (layer 1 times c, layer 2 times 1/c), K-FAC with decay ends at the same input-output "
    "Jacobian norm (Grosse ch. 5, §5.3, and the affine invariance of K-FAC)",
    "geometric mean over seeds of E||d logits/d x||_F^2 at the end, reparameterized start / plain start, "
    "K-FAC with decay, no BN; paired by seed",
    Rule("in", "reparam_band"),
)
K16_REPARAM_SGD = Claim(
    "K16-reparam-sgd",
    DESCRIPTIVE,
    "For comparison: the same ratio under SGD with decay, whose L2 penalty depends on the parameterization",
    "geometric mean over seeds of the Jacobian ratio, reparameterized / plain start, SGD with decay, no BN",
    Rule("none"),
)
K16_GNNORM_BLOCKS = Claim(
    "K16-gnnorm-blocks",
    EXACT,
    "The matrices K-FAC uses instead of the full Gauss-Newton: its block diagonal gives (L+1) E||J_x x||^2 for "
    "a bias-free ReLU MLP, and so do its Kronecker factors when the activations are linear (Grosse ch. 5, §5.3)",
    "max over depths and seeds of the relative errors of sum_l theta_l^T G_ll theta_l = (L+1) E||J_x x||^2 "
    "(ReLU) and sum_l tr(S_l W_l A_l W_l^T) = (L+1) E||J_x x||^2 (identity activation), float64",
    Rule("<", "gn_rel_tol"),
)
K16_KFACNORM = Claim(
    "K16-kfacnorm",
    DESCRIPTIVE,
    "What K-FAC's own C-norm is for ReLU: its Kronecker-factored block norm against the exact block norm, and "
    "the cross-entropy Fisher's norm, (L+1)^2 E[f^T (diag p - p p^T) f], against (L+1)^2 E||J_x x||^2",
    "median over depths and seeds of sum_l tr(S_l W_l A_l W_l^T) / sum_l theta_l^T G_ll theta_l (ReLU, "
    "squared-loss factors); the Fisher's ratio and identity error in the detail",
    Rule("none"),
)
_GROWTH = (
    "per seed, the last probe's mean ||w_j||^2 over the first's, geometric mean over the BN-fed layers, arm {arm}; "
    "geometric mean over seeds, t on the log"
)
K16_GROWTH = Claim(
    "K16-growth",
    MEASURED,
    "Without weight decay the BN-fed weights grow under K-FAC too (damping 1e-3), as under SGD (Grosse ch. 5, §5.2)",
    _GROWTH.format(arm="kfac_damped"),
    Rule(">", "growth_min"),
)
K16_GROWTH_WD = Claim(
    "K16-growth-wd", DESCRIPTIVE, "The same with decay", _GROWTH.format(arm="kfac_damped_wd"), Rule("none")
)
_COS = "the mean over the BN-fed layers and the probes of {part} of cos(step, -gradient) (probes.step_grad_cos)"
K16_DRIFT = Claim(
    "K16-drift",
    MEASURED,
    "Without decay the damping takes over as the weights grow, and K-FAC's steps turn toward the gradient's "
    "direction, a first-order method's; decay prevents it: late in training K-FAC's steps lie closer to the "
    "gradient without decay than with it, at damping 1e-3 (Grosse ch. 5, §5.2)",
    "paired by seed: " + _COS.format(part="the last quarter") + ", kfac_damped minus kfac_damped_wd; t interval",
    Rule(">", "drift_min"),
)
K16_DRIFT_RISE = Claim(
    "K16-drift-rise",
    DESCRIPTIVE,
    "Whether the drift builds over training: without decay, late against early",
    "paired by seed: " + _COS.format(part="the last quarter") + " minus the same over the first quarter, "
    "kfac_damped; t interval",
    Rule("none"),
)
K16_DRIFT_FLOOR = Claim(
    "K16-drift-floor",
    DESCRIPTIVE,
    "The same angle where the damping is negligible (1e-9), without decay: no damping to take over",
    "per seed, " + _COS.format(part="the last quarter") + ", kfac_scale1; mean, t interval",
    Rule("none"),
)
K16_COUPLED = Claim(
    "K16-coupled",
    MEASURED,
    "For K-FAC too, applying the decay directly works better than adding it to the gradient (Grosse ch. 5, §5, Zhang "
    "et al.): with BN and damping 1e-3, decoupled decay (kfac's lambda) ends with a higher test accuracy than L2 in "
    "K-FAC's gradient at its own best lambda of a pilot seed",
    "final test accuracy, decoupled (kfac_damped_wd) minus coupled L2 (kfac_damped_wd_l2), paired by seed, t interval",
    Rule(">", "coupled_min"),
)

CLAIMS = (
    K16_IMMUNE,
    K16_FLOOR,
    K16_SGD,
    K16_DAMPING,
    K16_JACOBIAN,
    K16_JACOBIAN_SGD,
    K16_REPARAM,
    K16_REPARAM_SGD,
    K16_GNNORM,
    K16_GNNORM_BLOCKS,
    K16_KFACNORM,
    K16_GROWTH,
    K16_GROWTH_WD,
    K16_DRIFT,
    K16_DRIFT_RISE,
    K16_DRIFT_FLOOR,
    K16_COUPLED,
)


@dataclass
class KFACAnalysis(Analysis):
    immune_max_share: float = param(
        0.1,
        min=0.0,
        help="K16-immune: the CI of K-FAC's log response to the rescaling, as a share of SGD's, must lie within "
        "+- this",
    )
    sgd_band: list[float] = param(
        default_factory=lambda: [0.5, 2.0], help="K16-sgd: the CI of SGD's ratio x scale^2 must lie in this band"
    )
    damping_effect_min: float = param(1.0, help="K16-damping: the CI of the ratio of decay effects must exceed this")
    jacobian_max_ratio: float = param(
        0.8, min=0.0, help="K16-jacobian: the CI of the Jacobian ratio (decay / none) must lie below this"
    )
    gn_rel_tol: float = param(1e-10, min=0.0, help="K16-gnnorm(-blocks): tolerance of the identities' relative error")
    reparam_band: list[float] = param(
        default_factory=lambda: [0.9, 1.11],
        help="K16-reparam: the CI of K-FAC's Jacobian ratio (reparameterized / plain start) must lie in this band",
    )
    late_fraction: float = param(0.25, min=0.0, max=1.0, help="K16-damping: the last fraction of steps compared")
    growth_min: float = param(1.0, min=0.0, help="K16-growth: the CI of the norm growth without decay exceeds this")
    drift_min: float = param(
        0.0, help="K16-drift: the CI of late cos(step, -grad), no decay minus decay, must exceed this"
    )
    coupled_min: float = param(
        0.0, help="K16-coupled: the CI of decoupled's test accuracy minus coupled's must exceed this"
    )
    gn_depths: list[int] = param(default_factory=lambda: [1, 2, 3], help="K16-gnnorm: hidden layers L checked")
    gn_examples: int = param(500, min=1, help="K16-gnnorm: MNIST-1D test inputs in the expectation")


@dataclass
class KFACExperimentConfig(ExperimentConfig):
    analysis: KFACAnalysis = field(default_factory=KFACAnalysis)


# The arms the analysis reads (configs/kfac.yaml defines them; a missing one makes its rows inconclusive).
ARMS = {
    "immune": ("kfac_scale1", "kfac_scale10"),
    "floor": ("kfac_scale1", "kfac_scale1_ulp"),  # the same function one ulp apart: the rounding floor
    "sgd": ("sgd_scale1", "sgd_scale10"),
    # (no decay, decay) at negligible and at substantial damping
    "negligible": ("kfac_scale1", "kfac_wd"),
    "damped": ("kfac_damped", "kfac_damped_wd"),
    "jacobian": ("nobn_kfac", "nobn_kfac_wd"),
    "jacobian_sgd": ("nobn_sgd", "nobn_sgd_wd"),
    # (plain start, the same function reparameterized), both with decay
    "reparam": ("nobn_kfac_wd", "nobn_kfac_wd_reparam"),
    "reparam_sgd": ("nobn_sgd_wd", "nobn_sgd_wd_reparam"),
    # (decoupled decay, L2 in the gradient), each at its own lambda, damping 1e-3
    "coupled": ("kfac_damped_wd", "kfac_damped_wd_l2"),
}


def angle_per_run(tables: Tables, start_fraction: float = 0.0) -> pd.DataFrame:
    """Per run: the mean angular update of BN-fed layers over the probes at or after
    `start_fraction` of training (NaN for runs that did not finish)."""
    sel = tables.series(M.ANGULAR_UPDATE, "mean")
    bn_fed = {
        arm: {wl for wl in sel[sel["arm"] == arm]["layer"].unique() if wl != "out"} for arm in sel["arm"].unique()
    }
    runs = tables.runs
    out = []
    for r in runs.to_dict("records"):
        d = sel[(sel["run_id"] == r["run_id"]) & sel["layer"].isin(bn_fed.get(r["arm"], set()))]
        total = float(r["train.steps"]) if pd.notna(r.get("train.steps")) else float(d["step"].max())
        d = d[d["step"] >= start_fraction * total]
        value = float(d["value"].mean()) if (r["status"] == "ok" and len(d)) else float("nan")
        out.append({"run_id": r["run_id"], "arm": r["arm"], "seed": r["seed"], "value": value})
    return pd.DataFrame(out)


def _pair(by_seed: dict[str, dict[int, float]], a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    seeds = sorted(set(by_seed.get(a, {})) & set(by_seed.get(b, {})))
    return np.array([by_seed[a][s] for s in seeds]), np.array([by_seed[b][s] for s in seeds])


def _mlp(weights: list[torch.Tensor], x: torch.Tensor, act) -> torch.Tensor:
    """A bias-free MLP from its weight matrices (layer l computes z_l = W_l a_{l-1}, a_l = act(z_l))."""
    h = x
    for w in weights[:-1]:
        h = act(h @ w.T)
    return h @ weights[-1].T


def kronecker_block_norm(weights: list[torch.Tensor], x: torch.Tensor, act) -> float:
    """sum_l tr(S_l W_l A_l W_l^T): the block norm of the weights under K-FAC's Kronecker factors of the
    squared-loss Gauss-Newton, A_l = E[a_{l-1} a_{l-1}^T] and S_l = E[B_l^T B_l], B_l = d f / d z_l."""
    from torch.func import jacrev, vmap

    total, h = 0.0, x
    for i, w in enumerate(weights):
        z = h @ w.T

        def rest(zi, i=i):  # from one example's z_l to its logits
            if i == len(weights) - 1:
                return zi
            h = act(zi)
            for w_next in weights[i + 1 : -1]:
                h = act(h @ w_next.T)
            return h @ weights[-1].T

        b = vmap(jacrev(rest))(z)  # examples x outputs x units
        a_cov = h.T @ h / len(h)
        s_cov = torch.einsum("nou,nov->uv", b, b) / len(h)
        total += float(torch.trace(s_cov @ w @ a_cov @ w.T))
        h = act(z)
    return total


def gn_norm_identity(depths: list[int], width: int, seeds: list[int], examples: int) -> pd.DataFrame:
    """For fresh bias-free MLPs on MNIST-1D inputs (float64): theta^T G theta for the full squared-loss
    Gauss-Newton G (one Jacobian-vector product along theta), its block diagonal (one along each layer's
    own weights), its Kronecker factors, and the cross-entropy Fisher, each against what homogeneity
    predicts from f and from (L+1)^2 E||J_x x||^2 (one product along x). ReLU networks, and
    identity-activation ones for the Kronecker identity."""
    from torch.func import functional_call, jvp

    from normlab.engine.spec import DataConfig

    data = load_dataset(DataConfig(name="mnist1d"))
    x = data.x_test[:examples].double()
    rows = []
    for depth in depths:
        for seed in seeds:
            row: dict = {"depth": depth, "seed": seed}
            for activation in ("relu", "identity"):
                torch.manual_seed(seed)
                cfg = ModelConfig(width=width, depth=depth, norm="none", bias="false", activation=activation)
                net = build_model(cfg, data.input_shape, data.num_classes).double().eval()
                with torch.no_grad():
                    net.out.bias.zero_()  # the read-out always has a bias; at zero the net is homogeneous
                params = {k: v.detach() for k, v in net.named_parameters()}
                call = lambda p: functional_call(net, p, (x,))  # noqa: E731
                f, along_theta = jvp(call, (params,), (params,))
                _, along_x = jvp(lambda inputs: functional_call(net, params, (inputs,)), (x,), (x,))
                jac = float(along_x.pow(2).sum(1).mean())
                weights = [wl.module.weight.detach() for wl in net.weight_layers]
                act = torch.relu if activation == "relu" else (lambda t: t)
                kron = kronecker_block_norm(weights, x, act)
                if activation == "identity":
                    row["kron_linear_rel_err"] = abs(kron - (depth + 1) * jac) / kron
                    continue
                gn = float(along_theta.pow(2).sum(1).mean())
                block = 0.0
                for wl in net.weight_layers:  # each layer's weights alone, the others held
                    name = next(k for k, v in net.named_parameters() if v is wl.module.weight)
                    tangent = {k: (v if k == name else torch.zeros_like(v)) for k, v in params.items()}
                    block += float(jvp(call, (params,), (tangent,))[1].pow(2).sum(1).mean())
                p = torch.softmax(f, 1)
                quad = lambda v: ((p * v * v).sum(1) - (p * v).sum(1) ** 2).mean()  # noqa: E731  v^T (diag p - pp^T) v
                fisher, fisher_pred = float(quad(along_theta)), float((depth + 1) ** 2 * quad(f))
                row.update(
                    {
                        "gn_norm_sq": gn,
                        "jacobian_term": jac,
                        "rel_err": abs(gn - (depth + 1) ** 2 * jac) / gn,
                        "block_norm_sq": block,
                        "block_rel_err": abs(block - (depth + 1) * jac) / block,
                        "kron_norm_sq": kron,
                        "kron_over_block": kron / block,
                        "fisher_norm_sq": fisher,
                        "fisher_rel_err": abs(fisher - fisher_pred) / fisher,
                        "fisher_over_gn": fisher / gn,
                    }
                )
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class KFACSetting(Setting):
    """What every K16 estimator reads: the arms, and each run's mean angular update (whole run and late)."""

    @cached_property
    def arms(self) -> dict:
        return arm_configs(self.cfg)

    @cached_property
    def present(self) -> set[str]:
        return set(self.tables.runs["arm"])

    @cached_property
    def whole(self) -> dict[str, dict[int, float]]:
        return values_by_seed(angle_per_run(self.tables))

    @cached_property
    def late(self) -> dict[str, dict[int, float]]:
        return values_by_seed(angle_per_run(self.tables, 1.0 - self.a.late_fraction))

    @cached_property
    def jacobians(self) -> dict[str, dict[int, float]]:
        """arm -> seed -> the final E||d logits/d x||_F^2 (the arms without BN)."""
        return values_by_seed(final_metric(self.tables, M.JACOBIAN_FRO_SQ))

    def jacobian_ratio(self, base: str, other: str):
        """(x_base, x_other, ratio other / base, CI, n): the final Jacobian norms paired by seed."""
        x0, x1 = _pair(self.jacobians, base, other)
        return (x0, x1) + paired_t(x1, x0, log_ratio=True)

    def absent(self, *names: str) -> str:
        gone = [n for n in names if n not in self.present]
        return f"needs arm(s) {', '.join(gone)}" if gone else ""

    def rescaled(self, pair: tuple[str, str]):
        """(scale, angles at scale 1, at the larger scale, their paired ratio, CI, n)."""
        small, large = pair
        x1, x10 = _pair(self.whole, small, large)
        scale = self.arms[large].model.norm_init_scale / self.arms[small].model.norm_init_scale
        return (scale, x1, x10) + paired_t(x10, x1, log_ratio=True)

    @cached_property
    def sgd(self):
        """SGD's (scale, x1, x10, ratio, CI, n) between the two scales, or None without its arms:
        the contrast K16-sgd judges and K16-immune's precondition reads."""
        return None if self.absent(*ARMS["sgd"]) else self.rescaled(ARMS["sgd"])


def k16_sgd(s: KFACSetting) -> Estimate:
    """SGD's angle ratio between the two scales, times scale^2 (1 when SGD feels the rescaling fully)."""
    if s.sgd is None:
        return Estimate.missing(s.absent(*ARMS["sgd"]))
    scale, _, _, ratio, ci, n = s.sgd
    return Estimate(
        ratio * scale**2,
        type(ci)(ci.low * scale**2, ci.high * scale**2, ci.method),
        n,
        detail=f"scale {scale:g}: SGD's angle ratio {ratio:.4g} (CI {ci.low:.4g}-{ci.high:.4g}), "
        f"1/scale^2 = {1 / scale**2:.4g}. " + status_note(s.tables, list(ARMS["sgd"])),
    )


def k16_immune(s: KFACSetting) -> Estimate:
    """K-FAC's log response to the rescaling as a share of SGD's, seeds resampled jointly (BCa): the two
    optimizers' runs share seeds, and the share is a ratio of means, not a mean of per-seed ratios."""
    need = ARMS["immune"] + ARMS["sgd"]
    if s.absent(*need):
        return Estimate.missing(s.absent(*need))
    scale, _, _, k_ratio, _, _ = s.rescaled(ARMS["immune"])
    _, _, _, g_ratio, g_ci, _ = s.rescaled(ARMS["sgd"])
    seeds = sorted(set(s.whole[ARMS["immune"][0]]) & set(s.whole[ARMS["sgd"][0]]))
    logs = [
        np.log([s.whole[large][sd] / s.whole[small][sd] for sd in seeds])
        for small, large in (ARMS["immune"], ARMS["sgd"])
    ]
    share = lambda k, g: float(k.mean() / g.mean())  # noqa: E731
    keep = np.isfinite(logs[0]) & np.isfinite(logs[1])
    k_log, g_log = logs[0][keep], logs[1][keep]
    check = Check(
        "the rescaling changes SGD",
        bool(g_ci.high < 1.0 / scale),
        f"SGD's angle ratio between the two scales must have its CI below 1/scale ({1 / scale:.3g}); it is "
        f"{g_ratio:.3g}",
    )
    detail = (
        f"scale {scale:g}: K-FAC's angle ratio {k_ratio:.4g} ({(k_ratio - 1) * 100:+.2f}%), SGD's {g_ratio:.4g} "
        f"(x{1 / g_ratio:.3g} slower); K-FAC damping {s.arms[ARMS['immune'][0]].kfac.damping:g}. "
        + status_note(s.tables, list(need))
    )
    value = share(k_log, g_log) if keep.any() else float("nan")
    return Estimate(value, S.bca([k_log, g_log], share), int(keep.sum()), [check], detail.strip())


def k16_floor(s: KFACSetting) -> Estimate:
    """K-FAC's log angle ratio between the two scales in units of the run's rounding floor (descriptive:
    five one-ulp pairs estimate the floor loosely; it moved from 0.0086 to 0.0129 between reruns)."""
    need = ARMS["immune"] + ARMS["floor"][1:]
    if s.absent(*need):
        return Estimate.missing(s.absent(*need))
    k1 = ARMS["immune"][0]
    scale, x1, x10, ratio, ci, n = s.rescaled(ARMS["immune"])
    f0, f1 = _pair(s.whole, *ARMS["floor"])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(f1 / f0)
    logs = logs[np.isfinite(logs)]
    floor = float(np.sqrt(np.mean(logs**2))) if len(logs) else float("nan")
    measurable = Check("a rounding floor above zero", bool(floor > 0), "the one-ulp copy repeated the run exactly")
    damping = s.arms[k1].kfac.damping
    detail = (
        f"K-FAC damping {damping:g}, lr {s.arms[k1].optim.lr:g}; mean angle {S.nanmean(x1):.4g} (scale 1) vs "
        f"{S.nanmean(x10):.4g} (scale {scale:g}): ratio {ratio:.4g} (CI {ci.low:.4g}-{ci.high:.4g}); rounding "
        f"floor (rms log ratio of the one-ulp copy) {floor:.3g}, i.e. ratios within x{np.exp(floor):.5f}. "
        + status_note(s.tables, list(need))
    )
    to_floors = lambda v: float(np.log(v) / floor) if floor > 0 else float("nan")  # noqa: E731
    return Estimate(
        to_floors(ratio),
        type(ci)(to_floors(ci.low), to_floors(ci.high), f"{ci.method}, in rounding floors"),
        n,
        [measurable],
        detail.strip(),
    )


def k16_damping(s: KFACSetting) -> Estimate:
    """Decay's effect on the late angle, with and without damping that matters."""
    need = ARMS["negligible"] + ARMS["damped"]
    if s.absent(*need):
        return Estimate.missing(s.absent(*need))
    late, arms = s.late, s.arms
    seeds = sorted(set.intersection(*(set(late.get(arm, {})) for arm in need)))
    eff = lambda off, on: np.array([late[on][seed] / late[off][seed] for seed in seeds])  # noqa: E731
    e_neg, e_damp = eff(*ARMS["negligible"]), eff(*ARMS["damped"])
    value, ci, n = geometric_t(e_damp / e_neg, method="t on log ratio (paired by seed)")
    g_neg, ci_neg, _ = geometric_t(e_neg)
    g_damp, ci_damp, _ = geometric_t(e_damp)
    lam = arms[ARMS["damped"][1]].optim.weight_decay
    detail = (
        f"decay lambda {lam:g} ({arms[ARMS['damped'][1]].optim.wd_mode}): late angle x{g_damp:.3g} "
        f"(CI {ci_damp.low:.3g}-{ci_damp.high:.3g}) at damping {arms[ARMS['damped'][0]].kfac.damping:g}, "
        f"x{g_neg:.3g} (CI {ci_neg.low:.3g}-{ci_neg.high:.3g}) at damping "
        f"{arms[ARMS['negligible'][0]].kfac.damping:g}. " + status_note(s.tables, list(need))
    )
    return Estimate(value, ci, n, detail=detail.strip())


def _jacobian(s: KFACSetting, key: str) -> Estimate:
    """The input-output Jacobian norm without BN, with decay over without, paired by seed."""
    off, on = ARMS[key]
    if s.absent(off, on):
        return Estimate.missing(s.absent(off, on))
    x0, x1, ratio, ci, n = s.jacobian_ratio(off, on)
    o = s.arms[on].optim
    detail = (
        f"{o.name}, lambda {o.weight_decay:g} ({o.wd_mode}), lr x lambda = {o.lr * o.weight_decay:.3g}; "
        f"E||J||_F^2 {S.nanmean(x0):.4g} without, {S.nanmean(x1):.4g} with. " + status_note(s.tables, [off, on])
    )
    return Estimate(ratio, ci, n, detail=detail.strip())


def k16_jacobian(s: KFACSetting) -> Estimate:
    return _jacobian(s, "jacobian")


def k16_jacobian_sgd(s: KFACSetting) -> Estimate:
    return _jacobian(s, "jacobian_sgd")


def _reparam(s: KFACSetting, key: str) -> tuple:
    """(ratio, CI, n, c, detail) of the final Jacobian norm, reparameterized start / plain start."""
    plain, rep = ARMS[key]
    x0, x1, ratio, ci, n = s.jacobian_ratio(plain, rep)
    c = s.arms[rep].model.reparam_scale / s.arms[plain].model.reparam_scale
    o = s.arms[rep].optim
    detail = (
        f"{o.name} with decay {o.weight_decay:g} ({o.wd_mode}), start reparameterized by c = {c:g}: E||J||_F^2 "
        f"{S.nanmean(x0):.4g} (plain start), {S.nanmean(x1):.4g} (reparameterized); ratio {ratio:.3g} "
        f"(CI {ci.low:.3g}-{ci.high:.3g})"
    )
    return ratio, ci, n, c, detail


def k16_reparam(s: KFACSetting) -> Estimate:
    """K-FAC with decay from two parameterizations of one function, where the choice changes SGD's end."""
    need = ARMS["reparam"] + ARMS["reparam_sgd"]
    if s.absent(*need):
        return Estimate.missing(s.absent(*need))
    ratio, ci, n, _, detail = _reparam(s, "reparam")
    sgd_ratio, sgd_ci, _, _, sgd_detail = _reparam(s, "reparam_sgd")
    lo, hi = s.a.reparam_band
    matters = Check(
        "the reparameterization changes SGD's end",
        sgd_ci.high < lo or sgd_ci.low > hi,
        f"SGD's Jacobian ratio must have its CI outside [{lo:g}, {hi:g}]; it is {sgd_ratio:.3g} "
        f"({sgd_ci.low:.3g}-{sgd_ci.high:.3g})",
    )
    return Estimate(ratio, ci, n, [matters], f"{detail}. SGD: {sgd_detail}. " + status_note(s.tables, list(need)))


def k16_reparam_sgd(s: KFACSetting) -> Estimate:
    if s.absent(*ARMS["reparam_sgd"]):
        return Estimate.missing(s.absent(*ARMS["reparam_sgd"]))
    ratio, ci, n, _, detail = _reparam(s, "reparam_sgd")
    return Estimate(ratio, ci, n, detail=detail)


def k16_gnnorm(s: KFACSetting) -> Estimate:
    """The exact identity behind K16-jacobian, on fresh networks (derived table gn_norm)."""
    gn = s.tables.read("gn_norm")
    err = float(gn["rel_err"].max()) if len(gn) else float("nan")
    detail = (
        f"{len(gn)} networks (hidden layers {sorted(gn['depth'].unique().tolist())}), float64; the full "
        "Gauss-Newton of the squared loss"
    )
    return Estimate(err, n=len(gn), detail=detail)


def k16_gnnorm_blocks(s: KFACSetting) -> Estimate:
    gn = s.tables.read("gn_norm")
    if gn.empty or "block_rel_err" not in gn:
        return Estimate.missing("gn_norm.csv lacks the block-diagonal columns")
    err = float(max(gn["block_rel_err"].max(), gn["kron_linear_rel_err"].max()))
    detail = (
        f"block diagonal (ReLU): largest error {gn['block_rel_err'].max():.2g}; Kronecker factors (identity "
        f"activation): {gn['kron_linear_rel_err'].max():.2g}; {len(gn)} networks per activation, float64"
    )
    return Estimate(err, n=len(gn), detail=detail)


def k16_kfacnorm(s: KFACSetting) -> Estimate:
    gn = s.tables.read("gn_norm")
    if gn.empty or "kron_over_block" not in gn:
        return Estimate.missing("gn_norm.csv lacks the Kronecker columns")
    by_depth = gn.groupby("depth")[["kron_over_block", "fisher_over_gn"]].median()
    detail = (
        "Kronecker / exact block norm (ReLU) by hidden layers: "
        + ", ".join(f"L={d}: {r['kron_over_block']:.3g}" for d, r in by_depth.iterrows())
        + "; cross-entropy Fisher norm / squared-loss Gauss-Newton norm: "
        + ", ".join(f"L={d}: {r['fisher_over_gn']:.3g}" for d, r in by_depth.iterrows())
        + f"; the Fisher's identity (L+1)^2 E[f^T (diag p - p p^T) f] holds to {gn['fisher_rel_err'].max():.2g}"
    )
    return Estimate(float(gn["kron_over_block"].median()), n=len(gn), detail=detail)


def _bn_fed_series(s: KFACSetting, metric: str, stat: str | None, arm: str) -> pd.DataFrame:
    """One arm's rows of `metric` on its BN-fed layers (every weight layer but the read-out)."""
    if not s.tables.has(metric):
        return pd.DataFrame(columns=["run_id", "arm", "seed", "step", "layer", "value"])
    d = s.tables.series(metric, stat)
    return d[(d["arm"] == arm) & (d["layer"] != "out")]


def norm_growth_by_seed(s: KFACSetting, arm: str) -> dict[int, float]:
    """seed -> last over first probe's mean ||w_j||^2 (bn_paths' norm_growth), geometric mean over the BN-fed
    layers, finished runs only."""
    from .bn_paths import norm_growth

    ok = set(s.tables.runs[s.tables.runs["status"] == "ok"]["run_id"])
    g = norm_growth(s.tables, "mean")
    g = g[(g["arm"] == arm) & g["run_id"].isin(ok)]
    return {int(x): float(np.exp(np.log(v["value"]).mean())) for x, v in g.groupby("seed")}


def step_cos_by_seed(s: KFACSetting, arm: str, start: float, stop: float) -> dict[int, float]:
    """seed -> mean cos(step, -grad) over the BN-fed layers and the probes in [start, stop) of training."""
    d = _bn_fed_series(s, M.STEP_GRAD_COS, None, arm)
    ok = s.tables.runs[(s.tables.runs["status"] == "ok") & (s.tables.runs["arm"] == arm)]
    out = {}
    for r in ok.to_dict("records"):
        total = float(r["train.steps"]) if pd.notna(r.get("train.steps")) else float(d["step"].max())
        v = d[(d["run_id"] == r["run_id"]) & (d["step"] >= start * total) & (d["step"] < stop * total)]["value"]
        if len(v):
            out[int(r["seed"])] = float(v.mean())
    return out


def k16_growth(s: KFACSetting, arm: str) -> Estimate:
    g = norm_growth_by_seed(s, arm)
    if not g:
        return Estimate.missing(f"no weight norms of arm {arm!r} (probes.weights on, summary mean)")
    value, ci, n = geometric_t(list(g.values()), method="t on log")
    detail = "per seed: " + ", ".join(f"{v:.3g}" for _, v in sorted(g.items()))
    return Estimate(value, ci, n, detail=detail)


def k16_drift(s: KFACSetting) -> Estimate:
    off, on = ARMS["damped"]
    late = 1.0 - s.a.late_fraction
    a, b = step_cos_by_seed(s, off, late, 1.01), step_cos_by_seed(s, on, late, 1.01)
    if not a or not b:
        return Estimate.missing(f"no step angles of {off!r} and {on!r} (set probes.step_grad_cos on both)")
    value, ci, n = paired_t(list(a.values()), [b.get(x, np.nan) for x in a])
    detail = (
        f"late cos(step, -grad): without decay {np.mean(list(a.values())):.3g}, with decay "
        f"{np.mean(list(b.values())):.3g} (damping {s.arms[off].kfac.damping:g}); without decay early "
        f"{np.mean(list(step_cos_by_seed(s, off, 0.0, s.a.late_fraction).values()) or [np.nan]):.3g}"
    )
    return Estimate(value, ci, n, detail=detail)


def k16_drift_rise(s: KFACSetting) -> Estimate:
    off = ARMS["damped"][0]
    late = step_cos_by_seed(s, off, 1.0 - s.a.late_fraction, 1.01)
    early = step_cos_by_seed(s, off, 0.0, s.a.late_fraction)
    if not late:
        return Estimate.missing(f"no step angles of {off!r} (set probes.step_grad_cos)")
    value, ci, n = paired_t(list(late.values()), [early.get(x, np.nan) for x in late])
    return Estimate(
        value, ci, n, detail=f"early {np.mean(list(early.values())):.3g}, late {np.mean(list(late.values())):.3g}"
    )


def k16_drift_floor(s: KFACSetting) -> Estimate:
    arm = ARMS["negligible"][0]
    v = list(step_cos_by_seed(s, arm, 1.0 - s.a.late_fraction, 1.01).values())
    if not v:
        return Estimate.missing(f"no step angles of {arm!r} (set probes.step_grad_cos)")
    return Estimate(float(np.mean(v)), S.t_interval(v), len(v), detail=f"damping {s.arms[arm].kfac.damping:g}")


def k16_coupled(s: KFACSetting) -> Estimate:
    dec, cou = ARMS["coupled"]
    why = s.absent(dec, cou)
    if why:
        return Estimate.missing(why)
    acc = values_by_seed(final_metric(s.tables, M.TEST_ACC))
    x, y = _pair(acc, dec, cou)
    value, ci, n = paired_t(x, y)
    lam = {a: s.arms[a].optim.weight_decay for a in (dec, cou)}
    note = status_note(s.tables, [dec, cou])
    return Estimate(
        value,
        ci,
        n,
        detail=f"test accuracy: decoupled (lambda {lam[dec]:g}) {np.mean(x):.3f}, L2 in the gradient (lambda "
        f"{lam[cou]:g}) {np.mean(y):.3f}" + (f"; {note}" if note else ""),
    )


class KFACExperiment(Experiment):
    name = "kfac"
    title = "K16: weight decay under K-FAC: implicit decay, damping, Jacobian norm"
    short_names = {"K16": "weight decay under K-FAC"}
    claims = CLAIMS
    config_class = KFACExperimentConfig
    estimators = {
        K16_IMMUNE: k16_immune,
        K16_FLOOR: k16_floor,
        K16_SGD: k16_sgd,
        K16_DAMPING: k16_damping,
        K16_JACOBIAN: k16_jacobian,
        K16_JACOBIAN_SGD: k16_jacobian_sgd,
        K16_REPARAM: k16_reparam,
        K16_REPARAM_SGD: k16_reparam_sgd,
        K16_GNNORM: k16_gnnorm,
        K16_GNNORM_BLOCKS: k16_gnnorm_blocks,
        K16_KFACNORM: k16_kfacnorm,
        K16_GROWTH: lambda s: k16_growth(s, ARMS["damped"][0]),
        K16_GROWTH_WD: lambda s: k16_growth(s, ARMS["damped"][1]),
        K16_DRIFT: k16_drift,
        K16_DRIFT_RISE: k16_drift_rise,
        K16_DRIFT_FLOOR: k16_drift_floor,
        K16_COUPLED: k16_coupled,
    }

    def derived(self, cfg: KFACExperimentConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        a = cfg.analysis
        return {"gn_norm": gn_norm_identity(a.gn_depths, cfg.run.model.width, cfg.seed_list, a.gn_examples)}

    setting_class = KFACSetting

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        ang = tables.series(M.ANGULAR_UPDATE, "mean")
        ang = ang[ang["layer"] != "out"].groupby(["arm", "seed", "step"])["value"].mean().reset_index()
        norm = tables.series(M.WEIGHT_NORM_SQ, "mean")
        norm = norm[norm["layer"] != "out"]
        norm = norm.groupby(["arm", "seed", "step"])["value"].mean().reset_index()
        present = set(tables.runs["arm"])
        paths = []
        fig, axes = P.figure(ncols=3, width=4.0)
        groups = (
            (axes[0, 0], ARMS["immune"] + ARMS["sgd"], "(a) same function, weight scale 1 vs 10"),
            (axes[0, 1], ARMS["negligible"] + ARMS["damped"], "(b) decay x damping: angular update"),
            (axes[0, 2], ARMS["negligible"] + ARMS["damped"], "(b) decay x damping: weight norm"),
        )
        for i, (ax, names, title) in enumerate(groups):
            names = [n for n in dict.fromkeys(names) if n in present]
            col = P.colors(names)
            src = norm if i == 2 else ang
            for arm in names:
                d = src[(src["arm"] == arm) & (src["step"] > 0)]
                P.mean_band(ax, d, arm, col[arm])
            ax.set(
                yscale="log",
                xlabel="step",
                ylabel="mean ||w_j||^2 of BN-fed units" if i == 2 else "angular update per step (rad)",
                title=title,
            )
            P.legend(ax, fontsize=7)
        paths.append(P.save(fig, out / "kfac_angles.png"))

        jac = final_metric(tables, M.JACOBIAN_FRO_SQ)
        order = ARMS["jacobian"] + ARMS["reparam"][1:] + ARMS["jacobian_sgd"] + ARMS["reparam_sgd"][1:]
        arms = [a for a in order if a in present]
        if arms and jac["value"].notna().any():
            fig, axes = P.figure(width=6.5)
            ax = axes[0, 0]
            col = P.colors(arms)
            for i, arm in enumerate(arms):
                v = jac[jac["arm"] == arm]["value"].dropna()
                ax.scatter(np.full(len(v), i), v, color=col[arm], s=14, zorder=3)
                ax.bar(i, v.mean() if len(v) else np.nan, color=col[arm], alpha=0.35)
            ax.set_xticks(range(len(arms)), arms, rotation=20, ha="right")
            ax.set(
                yscale="log",
                ylabel="E ||d logits / d x||_F^2 (test)",
                title="(c) no BN: Jacobian norm at the end\n(_reparam: the same start function, layer 1 x c, "
                "layer 2 / c)",
            )
            paths.append(P.save(fig, out / "kfac_jacobian.png"))
        return paths
