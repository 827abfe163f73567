"""Curvature of one weight layer: its largest eigenvalues (Lanczos) and its spectral density.

The curvature-vector products come from curvlinops (maintained scipy LinearOperators for the
generalized Gauss-Newton matrix and the Hessian, built on torch.func); scipy's `eigsh` (ARPACK's
implicitly restarted Lanczos) finds the top-k eigenvalues, and curvlinops' stochastic Lanczos
quadrature (Papyan 2020, Alg. 2) the density. Both are restricted to one layer's weight tensor.

A measurement never changes training: it runs on a copy (float64 by default) of the network whose
normalizers use the batch statistics of the measured examples without touching running buffers,
and whose random modules (anything with a `frozen()` method, such as the knockout's noise) are
replaced by one fixed draw, so the operator is a fixed, symmetric matrix. Its random numbers
(the Lanczos start vectors, that draw) come from a generator seeded by the run's seed and step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import metrics as M
from .models import BatchCenter, Net
from .runs import Row
from .spec import CurvatureConfig

from curvlinops import GGNLinearOperator, HessianLinearOperator, lanczos_approximate_spectrum

OPERATORS = {"ggn": GGNLinearOperator, "hessian": HessianLinearOperator}


def measurement_copy(model: Net, dtype: torch.dtype = torch.float64) -> Net:
    """A copy of `model` in `dtype` that computes one fixed function of its input batch."""
    m = copy.deepcopy(model).to(dtype).train()
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, "frozen"):
                setattr(parent, name, child.frozen())
            elif isinstance(child, _BatchNorm):
                child.track_running_stats, child.running_mean, child.running_var = False, None, None
            elif isinstance(child, BatchCenter):
                child.update_running = False
    return m


def weight_of(model: Net, layer: str) -> nn.Parameter:
    layers = {wl.name: wl.module.weight for wl in model.weight_layers}
    if layer not in layers:
        from .errors import ConfigError

        raise ConfigError(
            f"curvature.layer: {layer!r} is not a weight layer of this model; choose one of {list(layers)}"
        )
    return layers[layer]


class _Counted(LinearOperator):
    """A scipy operator that counts its products (the cost of Lanczos, in curvature-vector products)."""

    def __init__(self, op: LinearOperator):
        super().__init__(np.float64, op.shape)
        self.op, self.products = op, 0

    def _matvec(self, v):
        self.products += 1
        return self.op @ v

    def _matmat(self, V):
        self.products += V.shape[1]
        return self.op @ V


def operator(model: Net, layer: str, x: torch.Tensor, y: torch.Tensor, matrix: str):
    """The `matrix` ("ggn" or "hessian") of the mean cross-entropy on (x, y), w.r.t. `layer`'s weight."""
    return OPERATORS[matrix](
        model,
        nn.CrossEntropyLoss(),
        [weight_of(model, layer)],
        [(x.to(next(model.parameters()).dtype), y)],
        check_deterministic=False,  # measurement_copy makes it deterministic; the check costs two passes
    )


def top_eigenvalues(op, k: int, tol: float, seed: int) -> tuple[np.ndarray, int]:
    """The k largest eigenvalues (descending) of a symmetric curvlinops operator, and the number of
    curvature-vector products Lanczos needed. The start vector is seeded, so results repeat."""
    vals, _, products = top_eigenpairs(op, k, tol, seed)
    return vals, products


def top_eigenpairs(op, k: int, tol: float, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The k largest eigenvalues (descending), their unit eigenvectors (columns, same order; ARPACK
    returns them at no extra products) and the number of curvature-vector products."""
    counted = _Counted(op.to_scipy())
    n = counted.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(n)
    if k >= n - 1:  # ARPACK needs k < n; a tiny layer is cheaper to decompose densely anyway
        dense = counted @ np.eye(n)
        vals, vecs = np.linalg.eigh((dense + dense.T) / 2)
    else:
        vals, vecs = eigsh(counted, k=k, which="LA", tol=tol, v0=v0)
    order = np.argsort(vals)[::-1][:k]
    return vals[order], vecs[:, order], counted.products


def layer_inputs(model: Net, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The inputs of `layer`'s module on the batch x (N x in), from one forward pass with a hook."""
    module = next(wl.module for wl in model.weight_layers if wl.name == layer)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x.to(next(model.parameters()).dtype))
    finally:
        handle.remove()
    return seen[0].flatten(1)


def mean_shares(vectors: np.ndarray, weight_shape: tuple[int, ...], mean: torch.Tensor) -> np.ndarray:
    """Per eigenvector (columns): ||V m_hat||^2, V the unit vector as an (out x in) weight matrix and
    m_hat the unit input mean; 1 for an eigenvector of the form u (x) m_hat, about 1/in for a random one."""
    m = mean.double().cpu().numpy()
    norm = np.linalg.norm(m)
    if len(weight_shape) != 2 or norm == 0:
        return np.full(vectors.shape[1], np.nan)
    v = vectors.T.reshape(vectors.shape[1], *weight_shape)  # k x out x in
    return np.einsum("koi,i->ko", v, m / norm).__pow__(2).sum(1) / np.einsum("koi,koi->k", v, v)


def centered_copy(model: Net, layer: str, mean: torch.Tensor) -> Net:
    """The same function reparameterized as in Grosse ch. 5, Eq. 9 with Sigma = I: `layer` sees its
    inputs minus their mean m, and its bias absorbs W m (b~ = b + W m), so z = W (a - m) + b~ = W a + b
    at the current weights; the curvature with respect to W is then that of centered inputs."""
    from .errors import ConfigError

    m = copy.deepcopy(model)
    module = next(wl.module for wl in m.weight_layers if wl.name == layer)
    if getattr(module, "bias", None) is None:
        raise ConfigError(
            f"curvature.eq9_steps: {layer} has no bias to absorb W m (a normalizer follows it, which already makes "
            "the loss ignore a shift of its inputs); measure Eq. 9 on a network without one"
        )
    mu = mean.to(module.weight.dtype)
    with torch.no_grad():
        module.bias.add_(module.weight @ mu)
    module.register_forward_pre_hook(lambda _m, args: (args[0] - mu.reshape(1, *args[0].shape[1:]),))
    return m


def spectral_density(op, top: float, cfg: CurvatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Grid and density of a positive semi-definite operator's spectrum on [0, top] (plus a margin)."""
    grid, density = lanczos_approximate_spectrum(
        op, cfg.density_vectors, num_points=cfg.density_points, num_repeats=cfg.density_repeats, boundaries=(0.0, top)
    )
    return grid.cpu().numpy(), density.cpu().numpy()


def measure(model: Net, cfg: CurvatureConfig, x: torch.Tensor, y: torch.Tensor, step: int, seed: int) -> list[Row]:
    """Every curvature row of one checkpoint: top-k eigenvalues of each matrix asked for at this step
    (stat "rank", unit = rank from 1), the curvature-vector products each took, and the GGN's density."""
    wanted = [m for m, steps in (("ggn", cfg.steps), ("hessian", cfg.hessian_steps)) if step in steps]
    density = step in cfg.density_steps
    rows: list[Row] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + step)  # the frozen draw and the quadrature's start vectors
        m = measurement_copy(model, getattr(torch, cfg.dtype))
        ggn_top = None
        mean = None
        weight_shape = tuple(weight_of(m, cfg.layer).shape)
        if "ggn" in wanted or step in cfg.eq9_steps:
            a = layer_inputs(m, cfg.layer, x)
            mean = a.mean(0)
            rows.append(Row(step, M.INPUT_MEAN_SQ, cfg.layer, "value", None,
                            float(mean.pow(2).sum() / a.pow(2).sum(1).mean())))  # fmt: skip
        for i, matrix in enumerate(wanted):
            op = operator(m, cfg.layer, x, y, matrix)
            vals, vecs, products = top_eigenpairs(op, cfg.top_k, cfg.tol, seed * 1_000_003 + step * 7 + i)
            rows += [Row(step, M.eig(matrix), cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(vals)]
            rows.append(Row(step, M.products(matrix), cfg.layer, "value", None, float(products)))
            if matrix == "ggn":
                shares = mean_shares(vecs, weight_shape, mean)
                rows += [Row(step, M.GGN_MEAN_SHARE, cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(shares)]
            ggn_top = float(vals[0]) if matrix == "ggn" else ggn_top
        if step in cfg.eq9_steps:
            op = operator(centered_copy(m, cfg.layer, mean), cfg.layer, x, y, "ggn")
            vals, vecs, products = top_eigenpairs(op, cfg.top_k, cfg.tol, seed * 1_000_003 + step * 7 + 3)
            rows += [Row(step, M.eig(M.GGN_EQ9), cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(vals)]
            rows.append(Row(step, M.products(M.GGN_EQ9), cfg.layer, "value", None, float(products)))
            shares = mean_shares(vecs, weight_shape, mean)  # along the original mean's direction
            rows += [Row(step, M.GGN_EQ9_MEAN_SHARE, cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(shares)]
        if density:
            op = operator(m, cfg.layer, x, y, "ggn")
            if ggn_top is None:  # the density's support needs the top eigenvalue
                vals, products = top_eigenvalues(op, 1, cfg.tol, seed * 1_000_003 + step * 7 + 5)
                ggn_top = float(vals[0])
                rows.append(Row(step, M.GGN_TOP_PRODUCTS, cfg.layer, "value", None, float(products)))
            grid, dens = spectral_density(op, max(ggn_top, 1e-12), cfg)
            rows += [Row(step, M.GGN_DENSITY_AT, cfg.layer, "grid", j, float(g)) for j, g in enumerate(grid)]
            rows += [Row(step, M.GGN_DENSITY, cfg.layer, "grid", j, float(d)) for j, d in enumerate(dens)]
            n_products = cfg.density_repeats * cfg.density_vectors
            rows.append(Row(step, M.GGN_DENSITY_PRODUCTS, cfg.layer, "value", None, float(n_products)))
    return rows
