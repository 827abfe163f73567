"""knockout (K1): does batch norm help optimization by removing internal covariate shift?

Grosse ch. 5, §4.2, after Santurkar et al. (2018): put the shift back after every BN layer with
a random per-unit affine map a_j <- gamma_j * a_j + m_j, drawn afresh at every step from
distributions that themselves drift over training. If BN helped *because* it removed the shift,
the noisy network should train like the network without BN. The chapter reports that it trains
almost like plain BN.

Arms: `plain` (no normalization), `bn` (BN before ReLU), `bn_noise` (BN, then the drifting
per-unit noise: one draw per unit and step, as the chapter describes), `bn_iid` (Santurkar et al.'s
own variant: noise drawn i.i.d. per example and unit) and `plain_noise` (the same noise in the
network without BN, a descriptive row).

Primary statistic: the loss on the whole training set in eval mode, where a noise module applies
its expected map, so the noise does not inflate the number by itself. The noise-on training loss
the optimizer saw is a secondary row. Preconditions of every verdict: the manipulation check (on a
fixed probe batch, the noisy layer's per-unit means and variances move at least as much between
probes as the plain network's) and BN helps at all (the paired CI of L_plain - L_bn lies above 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from normlab.engine import plots as P
from normlab.engine.claims import (DESCRIPTIVE, MEASURED, Check, Claim, ClaimRow, Estimate, Rule, judge,
                                   missing)
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import bca, mean_std, paired_t

from .base import Experiment
from .common import by_arm, final_metric, final_train_loss, status_note

_STATEMENT = ("Re-introducing a random, drifting per-unit shift after every BN layer barely slows training: "
              "BN+noise trains about as well as BN, and both beat no BN (Grosse ch. 5, §4.2)")
K1 = Claim("K1", MEASURED, _STATEMENT,
           "(L_bn_noise - L_bn) / (L_plain - L_bn), L = final loss on the whole training set in eval mode "
           "(noise replaced by its expected map); ratio of means over seeds",
           Rule("<", "max_gap_ratio"))
K1_TRAINLOSS = Claim("K1-trainloss", MEASURED, _STATEMENT + "; secondary statistic",
                     "(L_bn_noise - L_bn) / (L_plain - L_bn), L = training loss the optimizer saw (noise on), "
                     "mean over the last final_fraction of steps", Rule("<", "max_gap_ratio"))
K1_IID = Claim("K1-iid", MEASURED, "With noise drawn i.i.d. per example and unit (Santurkar et al.'s variant), "
               "BN+noise still trains about as well as BN (Grosse ch. 5, §4.2)",
               "(L_bn_iid - L_bn) / (L_plain - L_bn), L = final eval-mode loss on the whole training set",
               Rule("<", "max_gap_ratio"))
K1_NOBN = Claim("K1-nobn", DESCRIPTIVE, "The same noise in a network without BN: how much does it cost there?",
                "geometric mean over seeds of L_plain_noise / L_plain (eval-mode training-set loss)", Rule("none"))


@dataclass
class NoiseConfig:
    mean_halfwidth: float = param(1.0, min=0.0, help="m_j = c_j + U(-h, h): h, per step")
    scale_max: float = param(3.0, min=1.0, help="gamma_j = exp(s_j) * U(1, scale_max), per step")
    mean_walk: float = param(0.02, min=0.0, help="std of the per-step random walk of the centers c_j")
    log_scale_walk: float = param(0.01, min=0.0, help="std of the per-step random walk of s_j")
    arms: list[str] = param(default_factory=lambda: ["bn_noise", "plain_noise"],
                            help="arms that get one noise draw per unit and step")
    iid_arms: list[str] = param(default_factory=lambda: ["bn_iid"],
                                help="arms that get noise drawn i.i.d. per example and unit")


@dataclass
class KnockoutAnalysis(Analysis):
    final_fraction: float = param(0.1, min=0.01, max=1.0, help="K1-trainloss: average over this last fraction of steps")
    max_gap_ratio: float = param(0.25, min=0.0, help="supported if the gap ratio and its CI are below this")
    min_drift_ratio: float = param(1.0, min=0.0, help="manipulation check: noisy/plain relative drift at least this")
    noisy_layer: str = param("layer3", help="layer whose statistics the figure shows")


@dataclass
class KnockoutConfig(ExperimentConfig):
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    analysis: KnockoutAnalysis = field(default_factory=KnockoutAnalysis)


class AffineNoise(nn.Module):
    """Per-unit random affine map, re-drawn every training step around drifting centers.

    In eval mode it applies its expected map (E[gamma_j] a_j + c_j): deterministic, no noise.
    Randomness comes from torch's global RNG, which the engine seeds per run.
    """

    def __init__(self, features: int, cfg: NoiseConfig, iid: bool = False):
        super().__init__()
        self.cfg = cfg
        self.iid = iid  # True: a draw per example (and position) and unit, not one per unit
        self.register_buffer("center", torch.zeros(features))
        self.register_buffer("log_scale", torch.zeros(features))

    def _shape(self, x: torch.Tensor) -> list[int]:
        return [1, -1] + [1] * (x.ndim - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, shape = self.cfg, self._shape(x)
        if not self.training:
            gain = self.log_scale.exp() * (1.0 + c.scale_max) / 2.0
            return x * gain.view(shape) + self.center.view(shape)
        n = self.center.shape[0]
        with torch.no_grad():  # the distributions drift: non-stationary shift
            self.center.add_(c.mean_walk * torch.randn(n, device=x.device))
            self.log_scale.add_(c.log_scale_walk * torch.randn(n, device=x.device))
        if self.iid:
            center, log_scale = self.center.view(shape), self.log_scale.view(shape)
            m = center + c.mean_halfwidth * (2.0 * torch.rand_like(x) - 1.0)
            gamma = log_scale.exp() * (1.0 + (c.scale_max - 1.0) * torch.rand_like(x))
            return x * gamma + m
        m = self.center + c.mean_halfwidth * (2.0 * torch.rand(n, device=x.device) - 1.0)
        gamma = self.log_scale.exp() * (1.0 + (c.scale_max - 1.0) * torch.rand(n, device=x.device))
        return x * gamma.view(shape) + m.view(shape)


class NoiseFactory:
    """Picklable factory the engine calls once per block (index, features); also inserted where a
    normalizer would sit in a network without one (the `plain_noise` arm)."""
    also_without_norm = True

    def __init__(self, cfg: NoiseConfig, iid: bool = False):
        self.cfg = cfg
        self.iid = iid

    def __call__(self, index: int, features: int) -> nn.Module:
        return AffineNoise(features, self.cfg, self.iid)


def relative_drift(tables: Tables, arm: str) -> tuple[list[float], list[float]]:
    """Per seed: mean over layers and probes of the scale-free drift of the per-unit statistics
    at the input of each activation: |change of the means| / typical std, and |change of the
    variances| / typical variance (typical = median over units at that probe). Scale-free,
    because BN outputs have unit variance while a plain network's can be 0.02 or 2."""
    m = tables.metrics
    sel = m[(m["arm"] == arm) & (m["step"] > 0)]
    key = ["seed", "layer", "step"]
    var = sel[(sel["metric"] == "preact_var") & (sel["stat"] == "median")].set_index(key)["value"]
    mdrift = sel[sel["metric"] == "preact_mean_drift"].set_index(key)["value"]
    vdrift = sel[sel["metric"] == "preact_var_drift"].set_index(key)["value"]
    rel_mean = (mdrift / np.sqrt(var.reindex(mdrift.index))).groupby(level="seed").mean()
    rel_var = (vdrift / var.reindex(vdrift.index)).groupby(level="seed").mean()
    return rel_mean.sort_index().tolist(), rel_var.sort_index().tolist()


def gap_ratio(plain: float, bn: float, noisy: float) -> float:
    return (noisy - bn) / (plain - bn)


def _aligned(values: dict[str, dict[int, float]], arms: tuple[str, ...]) -> list[list[float]]:
    """Per-seed values of each arm over the seeds every arm has (pairs by seed)."""
    seeds = sorted(set.intersection(*(set(values[a]) for a in arms)))
    return [[values[a][s] for s in seeds] for a in arms]


def gap_estimate(values: dict[str, dict[int, float]], noisy: str, checks: list[Check], what: str) -> Estimate:
    """Gap ratio of the means with a BCa interval that resamples seeds jointly across the arms."""
    plain, bn, nz = _aligned(values, ("plain", "bn", noisy))
    mu = [mean_std(v)[0] for v in (plain, bn, nz)]
    n = len(np.asarray(plain)[np.isfinite(plain) & np.isfinite(bn) & np.isfinite(nz)])
    helps_est, helps_ci, _ = paired_t(plain, bn)
    helps = Check("BN helps", bool(np.isfinite(helps_ci.low) and helps_ci.low > 0),
                  f"L_plain - L_bn = {helps_est:.3g}, {helps_ci.method} CI [{helps_ci.low:.3g}, {helps_ci.high:.3g}] "
                  "does not lie above 0, so there is no gap to explain")
    ci = bca([plain, bn, nz], lambda p, b, z: gap_ratio(p.mean(), b.mean(), z.mean()))
    return Estimate(gap_ratio(*mu), ci, n, checks + [helps],
                    f"{what}: plain {mu[0]:.4g}, bn {mu[1]:.4g}, {noisy} {mu[2]:.4g}")


def _by_seed(df: pd.DataFrame) -> dict[str, dict[int, float]]:
    return {arm: dict(zip(g["seed"].astype(int), g["value"].astype(float))) for arm, g in df.groupby("arm")}


class Knockout(Experiment):
    name = "knockout"
    title = "K1: the knockout of internal covariate shift (Santurkar et al. 2018)"
    claims = (K1, K1_TRAINLOSS, K1_IID, K1_NOBN)
    config_class = KnockoutConfig

    def after_norm(self, cfg: KnockoutConfig, arm: str):
        if arm in cfg.noise.iid_arms:
            return NoiseFactory(cfg.noise, iid=True)
        return NoiseFactory(cfg.noise) if arm in cfg.noise.arms else None

    def manipulation(self, tables: Tables, noisy: str, a: KnockoutAnalysis) -> Check:
        drift = {arm: relative_drift(tables, arm) for arm in ("plain", noisy)}
        if not all(drift[x][0] for x in drift):
            return Check("manipulation check", False, f"no drift probes for plain or {noisy}")
        mean_ratio = np.mean(drift[noisy][0]) / np.mean(drift["plain"][0])
        var_ratio = np.mean(drift[noisy][1]) / np.mean(drift["plain"][1])
        ok = bool(mean_ratio >= a.min_drift_ratio and var_ratio >= a.min_drift_ratio)
        return Check("manipulation check", ok,
                     f"relative drift of per-unit means x{mean_ratio:.2f}, of variances x{var_ratio:.2f} the plain "
                     f"network's (needs >= {a.min_drift_ratio:g}): the noise did not knock the statistics out")

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        a = self.typed_config(tables).analysis
        arms = set(tables.runs["arm"])
        eval_loss = _by_seed(final_metric(tables, "train_loss"))
        train_loss = _by_seed(final_train_loss(tables, a.final_fraction))
        test = by_arm(final_metric(tables, "test_acc"))
        rows = []
        for claim, noisy, values, what in ((K1, "bn_noise", eval_loss, "eval-mode training-set loss"),
                                          (K1_TRAINLOSS, "bn_noise", train_loss, "noise-on training loss"),
                                          (K1_IID, "bn_iid", eval_loss, "eval-mode training-set loss")):
            need = ("plain", "bn", noisy)
            if not all(x in arms for x in need):
                rows.append(missing(claim, a, "needs arms " + ", ".join(need)))
                continue
            man = self.manipulation(tables, noisy, a)
            est = gap_estimate(values, noisy, [man], what)
            acc = ", ".join(f"{x} {100 * mean_std(test[x])[0]:.1f}%" for x in need if x in test)
            note = status_note(tables, list(need))
            est.detail += f"; test acc {acc}; {man.name}: {man.reason.split(':')[0]}" + (f"; {note}" if note else "")
            rows.append(judge(claim, est, a))
        if {"plain", "plain_noise"} <= arms:
            plain, noisy = _aligned(eval_loss, ("plain", "plain_noise"))
            ratio, ci, n = paired_t(noisy, plain, log_ratio=True)
            rows.append(judge(K1_NOBN, Estimate(ratio, ci, n, [], "eval-mode training-set loss, plain_noise vs plain"), a))
        return rows

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        arms = [a for a in ("plain", "bn", "bn_noise", "bn_iid", "plain_noise") if a in set(tables.runs["arm"])]
        col = P.colors(arms)
        fig, axes = P.figure(ncols=2)
        for arm in arms:
            c = tables.curve("batch_loss_avg")
            P.mean_band(axes[0, 0], c[(c["arm"] == arm) & (c["step"] > 0)], arm, col[arm])
            t = tables.curve("test_acc")
            P.mean_band(axes[0, 1], t[t["arm"] == arm].assign(value=lambda d: 100 * d["value"]), arm, col[arm])
        axes[0, 0].set(xlabel="step", ylabel="training loss (train mode, mean per interval)", yscale="log",
                       title="Training loss")
        axes[0, 1].set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy")
        axes[0, 0].legend()
        axes[0, 1].legend(loc="lower right")
        paths = [P.save(fig, out / "knockout_curves.png")]

        layer = cfg.analysis.noisy_layer
        fig, axes = P.figure(ncols=len(arms), nrows=2, width=3.4, height=2.6, sharey="row")
        for j, arm in enumerate(arms):
            for i, metric in enumerate(("preact_mean", "preact_var")):
                ax = axes[i, j]
                for stat, ls in (("q25", ":"), ("median", "-"), ("q75", ":")):
                    c = tables.curve(metric, layer, stat)
                    c = c[c["arm"] == arm]
                    g = c.groupby("step")["value"].mean()
                    ax.plot(g.index, g.values, ls=ls, color=col[arm], label=stat)
                ax.set(title=f"{arm}: {layer} {metric.split('_')[1]}", xlabel="step" if i else "")
                if metric == "preact_var":
                    ax.set_yscale("log")
                if j == 0:
                    ax.set_ylabel(f"per-unit {metric.split('_')[1]} (quartiles over units)")
        axes[0, 0].legend()
        paths.append(P.save(fig, out / "knockout_distributions.png"))
        return paths
