"""The per-unit measurements behind both the experiments' probes (engine/probes.py, the batched
path in engine/ensemble.py) and the public lens (engine/lens.py): one implementation, so that a
number a user reads off their own training loop is computed exactly as the experiments compute it.

A weight layer's units are the rows of its weight flattened to (units, fan-in) (for a batch of
stacked members, (members, units, fan-in)): unit j's incoming weights w_j, its gradient g_j. Every
function works along the last dimension, so the single-run and the stacked shapes share it.
"""

from __future__ import annotations

import torch


def weight_metrics(
    w: torch.Tensor, g: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per unit: [||w||^2, ||g||, w.g, cos(w, g), ||w|| ||g||] (metrics.WEIGHT_METRICS' order), then
    ||w||^2, ||w|| and ||g||. cos(w, g) is 0 for a scale-invariant unit (Grosse ch. 5, Eq. 16 with
    k = 0); ||w|| ||g|| is the gradient at the unit's direction w / ||w|| (Eq. 18)."""
    wn2 = (w * w).sum(-1)
    wn = wn2.sqrt()
    gn = g.norm(dim=-1)
    wdg = (w * g).sum(-1)
    return [wn2, gn, wdg, wdg / (wn * gn).clamp_min(1e-30), wn * gn], wn2, wn, gn


def directions(w: torch.Tensor, wn: torch.Tensor) -> torch.Tensor:
    """Each unit's direction w_j / ||w_j||, given its norm (kept from before a step)."""
    return w / wn.unsqueeze(-1)


def turned(before: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The angular update of each unit across a step: ||w_j/||w_j|| - before_j||, the chord between
    its directions before and after (2 sin(theta/2), the angle theta in radians to third order)."""
    return (w / w.norm(dim=-1, keepdim=True) - before).norm(dim=-1)


QUANTILES = {"median": 0.5, "q10": 0.1, "q25": 0.25, "q75": 0.75, "q90": 0.9, "min": 0.0, "max": 1.0}  # nearest rank


def summarize(mat: torch.Tensor, stats: list[str]) -> torch.Tensor:
    """(..., k metrics, n units) -> (..., k, len(stats)): each metric summarized over its units
    (`mean`, or a nearest-rank quantile named in QUANTILES)."""
    n = mat.shape[-1]
    quantiles = [s for s in stats if s != "mean"]
    parts = [mat.mean(dim=-1, keepdim=True)] if "mean" in stats else []
    if quantiles:  # every quantile in one gather from one sort (a probe is many small operations)
        srt = mat.sort(dim=-1).values
        parts.append(srt[..., [round(QUANTILES[s] * (n - 1)) for s in quantiles]])
    out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    order = (["mean"] if "mean" in stats else []) + quantiles
    if order != list(stats):  # "mean" not first: put the columns in the order asked for
        out = out[..., [order.index(s) for s in stats]]
    return out


def wd_equilibrium_angle(lr: float, weight_decay: float, momentum: float = 0.0) -> float:
    """The angle a scale-invariant unit turns per SGD step once weight decay and gradient growth
    balance (Grosse ch. 5, Eqs. 23-25): with ||w||^2 at its fixed point sqrt(alpha/(2 lambda)) times
    the normalized gradient norm, the step alpha ||g|| / ||w|| is sqrt(2 alpha lambda) whatever that
    norm is. With heavy-ball momentum beta (torch's SGD: v <- beta v + g, w <- w - alpha v) the same
    balance gives sqrt(2 alpha lambda / (1 + beta)) (Wan et al. 2021, spherical motion dynamics);
    beta = 0 is Eq. 25."""
    return (2.0 * lr * weight_decay / (1.0 + momentum)) ** 0.5
