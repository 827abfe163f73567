"""Many MLP runs trained as one model with a leading "member" dimension (a first step of batched
training; not yet used by the executor).

Runs that share an architecture and differ only in seed and in elementwise settings (learning rate,
weight decay, momentum) can be stacked: every weight gets shape (M, out, in), every member its own
minibatch, and one batched matmul (bmm) replaces M small ones, so the per-op overhead that bounds a
small model's speed is paid once per step instead of M times. Batch norm is computed per member
over its own batch; the loss is the sum of the members' mean losses, so each member's gradient is
exactly the one its own run would see.

Each member starts from the weights `build_model` gives its seed and draws the batches the engine's
`Batcher` gives its seed, so member m follows run m's trajectory up to float rounding (tests/
test_ensemble.py checks losses against the single-run engine).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Batcher, Dataset
from .models import build_model
from .spec import ModelConfig


@dataclass
class EnsembleMLP:
    """Stacked weights of M MLPs (ReLU, optional batch norm before each ReLU without affine)."""

    weights: list[torch.Tensor]  # (M, out, in) per layer
    biases: list[torch.Tensor | None]  # (M, out) or None (layers that feed batch norm)
    batch_norm: bool
    eps: float

    @classmethod
    def from_seeds(cls, cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seeds: list[int]):
        """The engine's initial weights for each seed, stacked (the same draws as `train` makes)."""
        if cfg.arch != "mlp" or cfg.norm not in ("none", "batch") or cfg.norm_affine or cfg.residual:
            raise ValueError("EnsembleMLP covers plain MLPs with no normalizer or BN before ReLU, no affine")
        if cfg.norm == "batch" and cfg.norm_position != "before":
            raise ValueError("EnsembleMLP puts batch norm before the ReLU only")
        nets = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                nets.append(build_model(cfg, input_shape, num_classes))
        layers = [[wl.module for wl in net.weight_layers] for net in nets]
        weights = [torch.stack([ls[i].weight.detach() for ls in layers]) for i in range(len(layers[0]))]
        biases = [
            torch.stack([ls[i].bias.detach() for ls in layers]) if layers[0][i].bias is not None else None
            for i in range(len(layers[0]))
        ]
        for t in weights + [b for b in biases if b is not None]:
            t.requires_grad_(True)
        return cls(weights, biases, cfg.norm == "batch", cfg.norm_eps)

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return self.weights + [b for b in self.biases if b is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, B, features) -> logits (M, B, classes)."""
        h = x.flatten(2)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i == last:
                return h
            if self.batch_norm:  # per member and unit, over the member's own batch: as channels of one BN
                m, b, w = h.shape
                flat = h.transpose(0, 1).reshape(b, m * w)
                flat = F.batch_norm(flat, None, None, training=True, eps=self.eps)
                h = flat.view(b, m, w).transpose(0, 1)
            h = F.relu(h)
        return h


class EnsembleSGD:
    """Plain SGD (optionally heavy-ball momentum and coupled L2 decay) with a learning rate, a
    momentum and a decay per member, as torch.optim.SGD does for each run on its own."""

    def __init__(self, params: list[torch.Tensor], lr: torch.Tensor, momentum: float = 0.0, weight_decay=None):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.weight_decay = weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            shape = (-1,) + (1,) * (p.ndim - 1)
            d = p.grad
            if self.weight_decay is not None and p.ndim == 3:  # weights only, like wd_params: weights
                d = d + self.weight_decay.view(shape) * p
            if self.momentum:
                buf = self.buffers[i]
                self.buffers[i] = d = d.clone() if buf is None else buf.mul_(self.momentum).add_(d)
            p.sub_(self.lr.view(shape) * d)
            p.grad = None


def train_ensemble(
    model: EnsembleMLP, data: Dataset, seeds: list[int], lrs: list[float], steps: int, batch_size: int
) -> torch.Tensor:
    """SGD on every member with its own seed's batches; returns the (steps, M) training losses."""
    batchers = [Batcher(data.x_train, data.y_train, batch_size, torch.Generator().manual_seed(s)) for s in seeds]
    opt = EnsembleSGD(model.parameters(), torch.tensor(lrs, dtype=model.weights[0].dtype))
    losses = torch.empty(steps, model.members)
    for step in range(steps):
        idx = torch.stack([b.next_index() for b in batchers])  # (M, B): one gather for every member
        x, y = data.x_train[idx], data.y_train[idx]
        logits = model.forward(x)
        per_member = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(model.members, -1)
        loss = per_member.mean(1)
        loss.sum().backward()
        opt.step()
        losses[step] = loss.detach()
    return losses


def mlp_flops_per_step(sizes: list[int], batch: int) -> float:
    """Multiply-adds x 2 of the matmuls in one forward + backward step (backward = 2x forward)."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * batch
    return 2.0 * macs * 3.0


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This thread's large-matmul speed, the compute limit the bench compares against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9
