"""Measurements taken every `probes.every` steps on the current training batch (the per-unit
mathematics lives in engine/instruments.py, shared with the public lens).

All rows are `(step, metric, layer, stat, unit, value)`; the run adds run_id/arm/seed when it
writes them. Per-unit quantities are computed for all units at once (one tensor per layer), then
reduced to summaries over units (`stat` = mean/median/q25/q75/min/max; quantiles are nearest
rank). Per-unit rows (`stat` = "unit", `unit` = j) are written only when `per_unit` is on.

What is measured, per weight layer (unit j = one output unit / channel; w_j its incoming weights,
g_j = dJ/dw_j on this batch, alpha = the current learning rate):
  weight_norm_sq     ||w_j||^2
  grad_norm          ||g_j||
  w_dot_grad         w_j . g_j      (0 for scale-invariant units: Eq. 16 with k = 0)
  w_grad_cos         w_j . g_j / (||w_j|| ||g_j||)
  normalized_grad_norm  ||w_j|| ||g_j||   (= ||grad J(w_j / ||w_j||)||, by Eq. 18)
  eff_lr             alpha / ||w_j||^2 (only where the loss is invariant to the scale of w_j)
  eff_step           alpha ||g_j|| / ||w_j|| = eff_lr * normalized_grad_norm: the angle an SGD
                     step turns w_j by, to first order (same units as angular_update)
  angular_update     ||w_j/||w_j|| after the step - w_j/||w_j|| before||, measured across the
                     real optimizer step (any optimizer; call `after_step`)
  step_grad_cos      (probes.step_grad_cos) cos(W after - W before, -grad) over the layer's whole
                     weight matrix, across the same step
  input_mean_sq_norm ||m||^2, m = per-feature batch mean of the layer's input
  input_var_mean     mean over features of the input's batch variance
With `probes.unit_window` > 0, the probes in the last fraction of training also accumulate, per
scale-invariant unit, the means of u_j = ||w_j||^2, g_j^2 = (||w_j|| ||grad_j||)^2 and the squared
angular update; `unit_rows` writes them once at the end (stat "unit"): unit_u_mean, unit_g2_mean,
unit_ang2_mean, and u_j at the first and last probe of the window (unit_u_first, unit_u_last),
all with the step of the end of training. These let an analysis predict each unit's equilibrium
before reducing over units.
With `probes.fixed_batch` = N, the input and pre-activation statistics come from a side pass on
the first N training examples (the same examples at every probe), so their drift measures the
network changing, not batch sampling.
and per hidden block, at the input of its activation (after any normalizer and noise):
  preact_mean, preact_var   per-unit batch mean and variance (summaries over units)
  preact_mean_drift, preact_var_drift   mean over units of |change since the previous probe|
  dead_fraction             (probes.dead_units) share of units <= 0 on every probed example: dead ReLUs
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .instruments import directions, summarize, turned, weight_metrics
from .models import Net
from . import metrics as M
from .runs import Row
from .spec import ProbeConfig


def input_jacobian_sq_norm(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean over the examples of ||d logits / d x||_F^2 (eval mode; one backward pass per class).
    Grosse ch. 5, §5.3: with a Gauss-Newton preconditioner and no normalization, weight decay
    penalizes this norm rather than the weights' own."""
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        total = 0.0
        for c in range(logits.shape[1]):  # examples are independent in eval mode: one pass per output
            (g,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c + 1 < logits.shape[1])
            total += g.pow(2).sum().item()
    model.train(was_training)
    return total / x.shape[0]


def _feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and variance over the batch (and positions, for conv inputs)."""
    x = x.detach()
    if x.ndim > 2:
        x = x.transpose(0, 1).reshape(x.shape[1], -1).T
    var, mean = torch.var_mean(x, dim=0, correction=0)
    return mean, var


def dead_fraction(z: torch.Tensor, members: bool = False) -> torch.Tensor:
    """The share of units whose value is <= 0 at every example (and position) of z: ReLUs that pass
    nothing on this batch. z is (N, units, *positions), or an ensemble's (M, N, *positions, units), whose
    answer is one share per member."""
    z = z.detach()
    if members:
        return (z.flatten(1, -2).amax(1) <= 0).float().mean(-1)
    return (z.movedim(1, -1).reshape(-1, z.shape[1]).amax(0) <= 0).float().mean()


def step_grad_cos(step: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """cos(step, -grad) over a whole weight tensor: (units, fan-in) -> scalar, or an ensemble's (M, units,
    fan-in) -> (M,). 1 for a plain gradient step; NaN where the step or the gradient is 0."""
    d, g = step.flatten(-2), grad.flatten(-2)
    return -(d * g).sum(-1) / (d.norm(dim=-1) * g.norm(dim=-1))


class UnitWindow:
    """The per-unit running means of probes.unit_window (see the module docstring): sums of u_j, g_j^2
    and the squared angular update from `window_start` on, and u_j at the window's first and last
    probe. Values are per unit, (units,), or per member and unit, (members, units)."""

    def __init__(self) -> None:
        self.window_start = float("inf")  # set by the loop when unit_window > 0
        self._unit_sums: dict[tuple[str, str], torch.Tensor] = {}
        self._unit_counts: dict[tuple[str, str], int] = {}
        self._unit_first: dict[str, torch.Tensor] = {}
        self._unit_last: dict[str, torch.Tensor] = {}

    def _accumulate(self, metric: str, layer: str, values: torch.Tensor) -> None:
        if metric == M.UNIT_U_MEAN:  # also the first and last value in the window
            self._unit_first.setdefault(layer, values.detach().double().clone())
            self._unit_last[layer] = values.detach().double().clone()
        key = (metric, layer)
        self._unit_sums[key] = self._unit_sums.get(key, 0) + values.detach().double()
        self._unit_counts[key] = self._unit_counts.get(key, 0) + 1

    def unit_tables(self) -> list[tuple[str, str, torch.Tensor]]:
        """(metric, layer, values) in the order the rows are written."""
        out = [(metric, layer, total / self._unit_counts[(metric, layer)])
               for (metric, layer), total in self._unit_sums.items()]  # fmt: skip
        out += [(M.UNIT_U_FIRST, layer, v) for layer, v in self._unit_first.items()]
        return out + [(M.UNIT_U_LAST, layer, v) for layer, v in self._unit_last.items()]


class Probes(UnitWindow):
    def __init__(self, cfg: ProbeConfig, model: Net):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.stats = list(cfg.summaries)
        self._inputs: dict[str, torch.Tensor] = {}
        self._taps: dict[str, torch.Tensor] = {}
        self._prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._directions: dict[str, torch.Tensor] = {}  # unit directions before the step
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (W, grad) before the step: step_grad_cos

    def unit_rows(self, step: int) -> list[Row]:
        """The per-unit window means, one row per unit and metric (empty when the window is off)."""
        out = []
        for metric, layer, vec in self.unit_tables():
            out.extend(Row(step, metric, layer, "unit", j, v) for j, v in enumerate(vec.tolist()))
        return out

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Capture input/pre-activation statistics on a fixed batch in a side pass (train mode, as
        the next layer sees it) that leaves training unchanged: the RNG is forked and every buffer
        (BN running statistics, a noise module's drifting centers) is restored afterwards."""
        saved = [(b, b.clone()) for b in self.model.buffers()]
        devices = [x.device.index or 0] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices), self.capture():
            self.model(x)
        for b, copy in saved:
            b.copy_(copy)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Keep references to the tensors probes need during one forward pass."""
        handles = []
        if self.cfg.inputs:
            for wl in self.model.weight_layers:
                handles.append(
                    wl.module.register_forward_pre_hook(
                        lambda _m, args, name=wl.name: self._inputs.__setitem__(name, args[0])
                    )
                )
        if self.cfg.preacts:
            for name, tap in self.model.taps():
                tap.tapped = True
                handles.append(
                    tap.register_forward_hook(lambda _m, _a, out, name=name: self._taps.__setitem__(name, out))
                )
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for _, tap in self.model.taps():
                tap.tapped = False

    def _summaries(self, m: torch.Tensor) -> torch.Tensor:
        """m: (k metrics, n units) -> (k, len(stats)) summaries over units."""
        return summarize(m, self.stats)

    @torch.no_grad()
    def record(self, step: int, lr: float) -> list[Row]:
        """Call after backward() and before the optimizer step."""
        keys: list[tuple] = []
        values: list[torch.Tensor] = []
        per_unit: list[tuple[str, str, torch.Tensor]] = []

        def add_matrix(names: list[str], layer: str, mat: torch.Tensor) -> None:
            summ = self._summaries(mat)
            keys.extend((name, layer, s, None) for name in names for s in self.stats)
            values.append(summ.flatten())
            if self.cfg.per_unit:
                per_unit.extend((name, layer, mat[i]) for i, name in enumerate(names))

        def add_scalars(names: list[str], layer: str, vec: torch.Tensor) -> None:
            keys.extend((name, layer, "value", None) for name in names)
            values.append(vec.flatten())

        for wl in self.model.weight_layers:
            if self.cfg.weights and wl.module.weight.grad is not None:
                w = wl.module.weight.flatten(1)
                g = wl.module.weight.grad.flatten(1)
                rows, wn2, wn, gn = weight_metrics(w, g)
                if self.cfg.step_grad_cos:
                    self._before[wl.name] = (w.clone(), g.clone())
                names = list(M.WEIGHT_METRICS)
                if wl.invariance == "unit":
                    rows += [lr / wn2, lr * gn / wn]
                    names += [M.EFF_LR, M.EFF_STEP]
                    if step >= self.window_start:
                        self._accumulate(M.UNIT_U_MEAN, wl.name, wn2)
                        self._accumulate(M.UNIT_G2_MEAN, wl.name, (wn * gn) ** 2)
                if wl.invariance:
                    self._directions[wl.name] = directions(w, wn)
                add_matrix(names, wl.name, torch.stack(rows))
                if wl.invariance == "layer":  # only the whole matrix's scale drops out
                    total = wn2.sum()
                    add_scalars(
                        [M.EFF_LR, M.NORMALIZED_GRAD_NORM_LAYER],
                        wl.name,
                        torch.stack([lr / total, total.sqrt() * g.norm()]),
                    )
            if wl.name in self._inputs:
                mean, var = _feature_stats(self._inputs[wl.name])
                add_scalars(
                    [M.INPUT_MEAN_SQ_NORM, M.INPUT_VAR_MEAN], wl.name, torch.stack([(mean * mean).sum(), var.mean()])
                )
        if self._taps:
            for name, out in self._taps.items():
                mean, var = _feature_stats(out)
                add_matrix([M.PREACT_MEAN, M.PREACT_VAR], name, torch.stack([mean, var]))
                if name in self._prev:
                    pm, pv = self._prev[name]
                    add_scalars(
                        [M.PREACT_MEAN_DRIFT, M.PREACT_VAR_DRIFT],
                        name,
                        torch.stack([(mean - pm).abs().mean(), (var - pv).abs().mean()]),
                    )
                self._prev[name] = (mean, var)
                if self.cfg.dead_units:
                    add_scalars([M.DEAD_FRACTION], name, dead_fraction(out).reshape(1))
        self._inputs.clear()
        self._taps.clear()

        return self._rows(step, keys, values, per_unit)

    @torch.no_grad()
    def after_step(self, step: int) -> list[Row]:
        """Angular update of every scale-invariant unit across the optimizer step just taken."""
        keys: list[tuple] = []
        values: list[torch.Tensor] = []
        per_unit: list[tuple[str, str, torch.Tensor]] = []
        for wl in self.model.weight_layers:
            before = self._directions.pop(wl.name, None)
            if before is None:
                continue
            w = wl.module.weight.flatten(1)
            turn = turned(before, w).unsqueeze(0)
            if step >= self.window_start and wl.invariance == "unit":
                self._accumulate(M.UNIT_ANG2_MEAN, wl.name, turn[0] ** 2)
            keys.extend((M.ANGULAR_UPDATE, wl.name, s, None) for s in self.stats)
            values.append(self._summaries(turn).flatten())
            if self.cfg.per_unit:
                per_unit.append((M.ANGULAR_UPDATE, wl.name, turn[0]))
        for wl in self.model.weight_layers:
            if wl.name in self._before:
                w0, g = self._before.pop(wl.name)
                keys.append((M.STEP_GRAD_COS, wl.name, "value", None))
                values.append(step_grad_cos(wl.module.weight.flatten(1) - w0, g).reshape(1))
        return self._rows(step, keys, values, per_unit)

    @staticmethod
    def _rows(
        step: int, keys: list[tuple], values: list[torch.Tensor], per_unit: list[tuple[str, str, torch.Tensor]]
    ) -> list[Row]:
        flat = torch.cat(values).tolist() if values else []  # one device->host copy per probe
        out = [Row(step, m, layer, s, u, v) for (m, layer, s, u), v in zip(keys, flat)]
        for name, layer, vec in per_unit:
            out.extend(Row(step, name, layer, "unit", j, v) for j, v in enumerate(vec.tolist()))
        return out
