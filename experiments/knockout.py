"""knockout (K1): does batch norm help optimization by removing internal covariate shift?

Grosse ch. 5, §4.2, after Santurkar et al. (2018): put the shift back after every BN layer with
a random per-unit affine map a_j <- gamma_j * a_j + m_j, drawn afresh at every step from
distributions that themselves drift over training. If BN helped *because* it removed the shift,
the noisy network should train like the network without BN. The chapter reports that it trains
almost like plain BN.

Arms: `plain` (no normalization), `bn` (BN before ReLU, no affine), `bn_noise` (BN, then noise).
The verdict uses the training loss the optimizer minimized (noise included for `bn_noise`)
averaged over the last part of training, and requires the manipulation check: the noisy layer's
per-unit means and variances must move at least as much between probes as the plain network's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import INCONCLUSIVE, ClaimRow, bootstrap_ci_fn, judge, mean_std

from .base import Experiment
from .common import by_arm, final_metric, final_train_loss, status_note


@dataclass
class NoiseConfig:
    mean_halfwidth: float = param(1.0, min=0.0, help="m_j = c_j + U(-h, h): h, per step")
    scale_max: float = param(3.0, min=1.0, help="gamma_j = exp(s_j) * U(1, scale_max), per step")
    mean_walk: float = param(0.02, min=0.0, help="std of the per-step random walk of the centers c_j")
    log_scale_walk: float = param(0.01, min=0.0, help="std of the per-step random walk of s_j")
    arms: list[str] = param(default_factory=lambda: ["bn_noise"], help="arms that get the noise")


@dataclass
class KnockoutAnalysis(Analysis):
    final_fraction: float = param(0.1, min=0.01, max=1.0, help="average the training loss over this last fraction of steps")
    max_gap_ratio: float = param(0.25, min=0.0, help="supported if gap(bn, bn_noise) < this * gap(bn, plain)")
    noisy_layer: str = param("layer3", help="layer whose statistics the figure shows")
    min_seeds: int = param(3, min=1)


@dataclass
class KnockoutConfig(ExperimentConfig):
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    analysis: KnockoutAnalysis = field(default_factory=KnockoutAnalysis)


class AffineNoise(nn.Module):
    """Per-unit random affine map, re-drawn every training step around drifting centers.

    In eval mode it applies its expected map (E[gamma_j] a_j + c_j): deterministic, no noise.
    Randomness comes from torch's global RNG, which the engine seeds per run.
    """

    def __init__(self, features: int, cfg: NoiseConfig):
        super().__init__()
        self.cfg = cfg
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
        m = self.center + c.mean_halfwidth * (2.0 * torch.rand(n, device=x.device) - 1.0)
        gamma = self.log_scale.exp() * (1.0 + (c.scale_max - 1.0) * torch.rand(n, device=x.device))
        return x * gamma.view(shape) + m.view(shape)


class NoiseFactory:
    """Picklable factory the engine calls once per normalized block (index, features)."""

    def __init__(self, cfg: NoiseConfig):
        self.cfg = cfg

    def __call__(self, index: int, features: int) -> nn.Module:
        return AffineNoise(features, self.cfg)


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


class Knockout(Experiment):
    name = "knockout"
    title = "K1: the knockout of internal covariate shift (Santurkar et al. 2018)"
    claims = ("K1",)
    config_class = KnockoutConfig

    def after_norm(self, cfg: KnockoutConfig, arm: str):
        return NoiseFactory(cfg.noise) if arm in cfg.noise.arms else None

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        cfg = self.typed_config(tables)
        a = cfg.analysis
        loss = by_arm(final_train_loss(tables, a.final_fraction))
        test = by_arm(final_metric(tables, "test_acc"))
        need = ("plain", "bn", "bn_noise")
        if any(arm not in loss for arm in need):
            return []
        gap_ratio = lambda plain, bn, noisy: (noisy - bn) / (plain - bn)  # noqa: E731
        drift = {arm: relative_drift(tables, arm) for arm in ("plain", "bn_noise")}
        mean_ratio = np.mean(drift["bn_noise"][0]) / np.mean(drift["plain"][0])
        var_ratio = np.mean(drift["bn_noise"][1]) / np.mean(drift["plain"][1])
        manip_ok = bool(mean_ratio >= 1.0 and var_ratio >= 1.0)
        notes = []
        if not manip_ok:
            notes.append("manipulation check failed: the noise moved the statistics less than training "
                         "without BN does, so the knockout did not knock out")
        accs = {arm: 100 * mean_std(test[arm])[0] for arm in need}
        manip = (f"manipulation check: relative drift of per-unit means x{mean_ratio:.2f}, of variances "
                 f"x{var_ratio:.2f} the plain network's ({'passed' if manip_ok else 'failed'})")
        extra = "; ".join(filter(None, notes + [status_note(tables, list(need))]))

        def row(claim_id: str, what: str, values: dict[str, list[float]]) -> ClaimRow:
            mu = {arm: mean_std(values[arm])[0] for arm in need}
            value = gap_ratio(mu["plain"], mu["bn"], mu["bn_noise"])
            ci = bootstrap_ci_fn([values["plain"], values["bn"], values["bn_noise"]], gap_ratio)
            n = min(int(np.isfinite(values[arm]).sum()) for arm in need)
            verdict = judge(value, ci, lambda r: r < a.max_gap_ratio, n, a.min_seeds)
            helps = mu["plain"] > mu["bn"]
            if not (manip_ok and helps):
                verdict = INCONCLUSIVE
            detail = ("" if helps else "BN did not beat the plain network on this measure, so there "
                      "is no gap to explain; ") + (f"{what}: plain {mu['plain']:.4g}, bn {mu['bn']:.4g}, bn_noise {mu['bn_noise']:.4g}; "
                      f"test acc plain {accs['plain']:.1f}%, bn {accs['bn']:.1f}%, bn_noise "
                      f"{accs['bn_noise']:.1f}%; {manip}")
            return ClaimRow(
                claim_id=claim_id,
                statement="Re-introducing a random, drifting per-unit shift after every BN layer barely "
                          "slows training: BN+noise trains about as fast as BN, and both beat no BN "
                          "(Grosse ch. 5, §4.2)",
                statistic=f"(L_bn_noise - L_bn) / (L_plain - L_bn), {what}",
                value=value, threshold=f"< {a.max_gap_ratio:g}, manipulation check passed",
                ci_low=ci[0], ci_high=ci[1], n=n, verdict=verdict,
                detail=detail + (f"; {extra}" if extra else ""))

        rows = [row("K1", f"training loss in train mode, noise on, mean over the last "
                          f"{a.final_fraction:.0%} of steps", loss),
                row("K1-eval", "final loss on the whole training set in eval mode (noise replaced "
                               "by its expected map)", by_arm(final_metric(tables, "train_loss")))]
        return rows

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        arms = [a for a in ("plain", "bn", "bn_noise") if a in set(tables.runs["arm"])]
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
