"""The knockout's drifting per-unit affine noise (Grosse ch. 5, §4.2, after Santurkar et al., 2018),
shared by the experiments that insert it after the normalizers: knockout (does training survive
it?) and curvature (does it bring the outlier eigenvalues back?).

`NoiseFactory` is what an experiment hands the engine (a picklable factory of one module per
normalized block); `AffineNoise` is that module on the single-run path, `StackedAffineNoise` the
same draws for every member of a batched ensemble, and `FixedAffine` one draw held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from normlab.engine.config import param
from normlab.engine.ensemble import StackedModule


@dataclass
class NoiseConfig:
    """The noise at strength 1; a level s multiplies its half-width, gain spread and walks."""

    mean_halfwidth: float = param(1.0, min=0.0, help="m_j = c_j + U(-h, h): h, per step")
    scale_max: float = param(3.0, min=1.0, help="gamma_j = exp(s_j) * U(1, scale_max), per step")
    mean_walk: float = param(0.02, min=0.0, help="std of the per-step random walk of the centers c_j")
    log_scale_walk: float = param(0.01, min=0.0, help="std of the per-step random walk of s_j")

    def scaled(self, level: float) -> "NoiseConfig":
        return NoiseConfig(
            self.mean_halfwidth * level,
            1.0 + (self.scale_max - 1.0) * level,
            self.mean_walk * level,
            self.log_scale_walk * level,
        )


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
        m, gamma = self._draw(x.device)
        return x * gamma.view(shape) + m.view(shape)

    def _draw(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = self.center.shape[0], self.cfg
        m = self.center + c.mean_halfwidth * (2.0 * torch.rand(n, device=device) - 1.0)
        gamma = self.log_scale.exp() * (1.0 + (c.scale_max - 1.0) * torch.rand(n, device=device))
        return m, gamma

    @staticmethod
    def stack(modules: list["AffineNoise"], generators: list[torch.Generator]) -> "StackedAffineNoise":
        return StackedAffineNoise(modules, generators)

    def frozen(self) -> nn.Module:
        """One per-unit draw of the map, held fixed: the noisy network as one deterministic function
        (what a curvature measurement needs). The centers do not move."""
        with torch.no_grad():
            m, gamma = self._draw(self.center.device)
        return FixedAffine(gamma, m)


class StackedAffineNoise(StackedModule):
    """Every member's AffineNoise at once, for batched training (engine.ensemble): per-member settings
    and drifting centers, and for each member the same draws in the same order as its own run makes
    them, from a generator that carries that run's RNG stream. The arithmetic repeats AffineNoise's
    operation by operation, so a member's noise equals its run's to the last bit."""

    def __init__(self, modules: list[AffineNoise], generators: list[torch.Generator]):
        self.generators = generators
        self.iid = modules[0].iid
        self.center = torch.stack([m.center for m in modules]).clone()  # (M, n)
        self.log_scale = torch.stack([m.log_scale for m in modules]).clone()

        def column(value) -> torch.Tensor:  # each member's Python float, cast as a scalar operand would be
            return torch.tensor([value(m.cfg) for m in modules], dtype=self.center.dtype).unsqueeze(1)

        self.halfwidth = column(lambda c: c.mean_halfwidth)
        self.spread = column(lambda c: c.scale_max - 1.0)
        self.eval_gain = column(lambda c: 1.0 + c.scale_max)
        self.mean_walk = column(lambda c: c.mean_walk)
        self.log_scale_walk = column(lambda c: c.log_scale_walk)

    def _draw(self, fn, shape) -> torch.Tensor:
        return torch.stack([fn(shape, generator=g, device=g.device) for g in self.generators])

    def __call__(self, h: torch.Tensor, training: bool) -> torch.Tensor:
        lead = [h.shape[0]] + [1] * (h.ndim - 2)  # members first, units last: (M, 1.., n)

        def units(t: torch.Tensor) -> torch.Tensor:
            return t.view(*lead, -1)

        if not training:
            gain = self.log_scale.exp() * self.eval_gain / 2.0
            return h * units(gain) + units(self.center)
        n = self.center.shape[1]
        with torch.no_grad():
            self.center.add_(self.mean_walk * self._draw(torch.randn, (n,)))
            self.log_scale.add_(self.log_scale_walk * self._draw(torch.randn, (n,)))
        if self.iid:
            shape, cols = tuple(h.shape[1:]), lambda t: t.view(*lead, 1)  # noqa: E731
            m = units(self.center) + cols(self.halfwidth) * (2.0 * self._draw(torch.rand, shape) - 1.0)
            gamma = units(self.log_scale).exp() * (1.0 + cols(self.spread) * self._draw(torch.rand, shape))
            return h * gamma + m
        m = self.center + self.halfwidth * (2.0 * self._draw(torch.rand, (n,)) - 1.0)
        gamma = self.log_scale.exp() * (1.0 + self.spread * self._draw(torch.rand, (n,)))
        return h * units(gamma) + units(m)

    def save(self):
        return self.center.clone(), self.log_scale.clone(), [g.get_state() for g in self.generators]

    def load(self, state) -> None:
        center, log_scale, gens = state
        self.center.copy_(center)
        self.log_scale.copy_(log_scale)
        for g, st in zip(self.generators, gens):
            g.set_state(st)

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        return {"center": self.center[k], "log_scale": self.log_scale[k]}

    def to(self, device) -> None:
        for name in ("center", "log_scale", "halfwidth", "spread", "eval_gain", "mean_walk", "log_scale_walk"):
            setattr(self, name, getattr(self, name).to(device))


class FixedAffine(nn.Module):
    """x -> gain * x + shift per unit (channel), with fixed gain and shift."""

    def __init__(self, gain: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("gain", gain.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.ndim - 2)
        return x * self.gain.view(shape) + self.shift.view(shape)


class NoiseFactory:
    """Picklable factory the engine calls once per block (index, features); also inserted where a
    normalizer would sit in a network without one (the `plain_noise` arm)."""

    also_without_norm = True

    def __init__(self, cfg: NoiseConfig, iid: bool = False, level: float = 1.0):
        self.cfg = cfg.scaled(level)
        self.iid = iid

    @property
    def stack_key(self) -> str:
        """Runs whose noise has this key can train as one ensemble (levels may differ per member)."""
        return f"AffineNoise(iid={self.iid})"

    def __call__(self, index: int, features: int) -> nn.Module:
        return AffineNoise(features, self.cfg, self.iid)
