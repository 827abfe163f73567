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
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import metrics as M
from .lanczos import top_eigenpairs_lockstep
from .models import BatchCenter, CenteredLinear, Net
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
            elif isinstance(child, (BatchCenter, CenteredLinear)):
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


class LayerProducts:
    """Products with the GGN or the Hessian of the mean cross-entropy on (x, y) with respect to one
    weight layer's weight, for M models of one architecture at once (measurement copies: fixed
    functions of the batch), each member's products in one autograd pass over all of them.

    The layer's output z is linear in its weight W (nn.Linear, Conv1d, Conv2d), so with the layer's
    inputs a held fixed, J_W v = z(a; V) (no bias) and J_W^T g = d<z(a; W), g>/dW, and the curvature
    in W is that in z pulled back: G_W = J_W^T G_z J_W, H_W = J_W^T H_z J_W (d^2 z / dW^2 = 0). Only
    the layers above z are differentiated, through a graph built once per operator: G_z s from the
    double-backward identity J_z s = d<J_z^T u, s>/du, H_z s as the derivative of <grad_z L, s>.
    They agree with curvlinops' GGN and Hessian operators to float rounding (tests/test_curvature.py)
    at a fraction of their cost per product (about 1.2 ms against 15 ms for K8's 10^4-dimensional
    layer, one thread)."""

    KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d)

    def __init__(self, models: list[Net], layer: str, x: torch.Tensor, y: torch.Tensor, matrix: str):
        if matrix not in OPERATORS:
            raise ValueError(f"matrix must be one of {list(OPERATORS)}, not {matrix!r}")
        self.matrix, self.n = matrix, x.shape[0]
        self.modules, self.inputs, self.z, self.outs, self.u, self.first, self.probs = [], [], [], [], [], [], []
        for model in models:
            module = next(wl.module for wl in model.weight_layers if wl.name == layer)
            if type(module) not in self.KINDS:
                raise TypeError(f"LayerProducts needs a layer linear in its weight, not {type(module).__name__}")
            seen: dict = {}

            def hook(_m, inputs, output, seen=seen):
                seen["a"], seen["z"] = inputs[0].detach(), output.detach().requires_grad_(True)
                return seen["z"]  # the layers above see a leaf: only they are differentiated

            handle = module.register_forward_hook(hook)
            try:
                with torch.enable_grad():
                    out = model(x.to(module.weight.dtype))
            finally:
                handle.remove()
            self.modules.append(module)
            self.inputs.append(seen["a"])
            self.z.append(seen["z"])
            self.outs.append(out)
            with torch.enable_grad():
                if matrix == "ggn":  # J_z^T u, kept as a graph that is linear in u
                    u = torch.zeros_like(out, requires_grad=True)
                    (first,) = torch.autograd.grad(out, seen["z"], u, create_graph=True)
                    self.u.append(u)
                else:  # grad_z of the loss, kept as a graph
                    (first,) = torch.autograd.grad(F.cross_entropy(out, y), seen["z"], create_graph=True)
            self.first.append(first)
            self.probs.append(F.softmax(out.detach(), dim=1))
        self.shape = tuple(self.modules[0].weight.shape)
        self.dim = int(np.prod(self.shape))
        self.dtype = self.modules[0].weight.dtype

    def _forward_weight(self, m: int, w: torch.Tensor) -> torch.Tensor:
        """z(a; w) without the bias: J_W w for member m."""
        module, a = self.modules[m], self.inputs[m]
        if isinstance(module, nn.Linear):
            return F.linear(a, w)
        return module._conv_forward(a, w, None)

    def _pull_back(self, m: int, g: torch.Tensor) -> torch.Tensor:
        """J_W^T g for member m: d<z(a; W), g>/dW."""
        module, a = self.modules[m], self.inputs[m]
        if isinstance(module, nn.Linear):
            return g.reshape(-1, g.shape[-1]).T @ a.reshape(-1, a.shape[-1])
        w = module.weight.detach().requires_grad_(True)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(module._conv_forward(a, w, None), w, g)
        return out

    @torch.no_grad()
    def __call__(self, vectors: list[torch.Tensor], members: list[int] | None = None) -> list[torch.Tensor]:
        """Flat vectors (one per member in `members`, default all) -> their flat products."""
        members = list(range(len(self.modules))) if members is None else members
        s = [self._forward_weight(m, v.to(self.dtype).view(self.shape)) for m, v in zip(members, vectors)]
        with torch.enable_grad():
            if self.matrix == "ggn":
                jv = torch.autograd.grad([self.first[m] for m in members], [self.u[m] for m in members], s,
                                         retain_graph=True)  # fmt: skip
                r = []
                for m, j in zip(members, jv):  # the loss Hessian in the logits: (diag p - p p^T) / N
                    p = self.probs[m]
                    r.append((p * j - p * (p * j).sum(1, keepdim=True)) / self.n)
                gz = torch.autograd.grad([self.outs[m] for m in members], [self.z[m] for m in members], r,
                                         retain_graph=True)  # fmt: skip
            else:
                gz = torch.autograd.grad([self.first[m] for m in members], [self.z[m] for m in members], s,
                                         retain_graph=True)  # fmt: skip
        return [self._pull_back(m, g).reshape(-1) for m, g in zip(members, gz)]


class _DensityOperator:
    """Member m of LayerProducts as the torch operator curvlinops' density quadrature calls (A @ v)."""

    def __init__(self, products: LayerProducts, member: int = 0):
        self.products, self.member = products, member
        self.shape = (products.dim, products.dim)
        self.dtype, self.device = products.dtype, products.inputs[member].device

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.products([v], [self.member])[0]

    def to_scipy(self) -> LinearOperator:
        """As a scipy operator (float64), for the quadrature's boundary estimates."""

        def matvec(v):
            return (self @ torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1))).double().numpy()

        return LinearOperator(self.shape, matvec=matvec, dtype=np.float64)


def fast_products_apply(model: Net, layer: str) -> bool:
    """Whether LayerProducts covers `layer` of `model` (a layer linear in its weight); else curvlinops."""
    module = next((wl.module for wl in model.weight_layers if wl.name == layer), None)
    return type(module) in LayerProducts.KINDS


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


def eigenpairs_many(
    models: list[Net], layer: str, x, y, matrix: str, k: int, tol: float, seeds: list[int], products=None
):
    """`top_eigenpairs` of one matrix for each measurement copy in `models` (one start seed each):
    their products in one pass (LayerProducts, or the `products` given for these models) and the
    lockstep Lanczos (engine/lanczos.py) where the layer is linear in its weight, else curvlinops and
    ARPACK one model after another."""
    if not fast_products_apply(models[0], layer):
        return [top_eigenpairs(operator(m, layer, x, y, matrix), k, tol, s) for m, s in zip(models, seeds)]
    products = products or LayerProducts(models, layer, x, y, matrix)
    if k >= products.dim - 1:  # as top_eigenpairs: a tiny layer is decomposed densely
        return [top_eigenpairs(operator(m, layer, x, y, matrix), k, tol, s) for m, s in zip(models, seeds)]
    return top_eigenpairs_lockstep(products, products.dim, k, tol, seeds)


def density_operator(model: Net, layer: str, x, y):
    """The GGN operator the density quadrature multiplies with (LayerProducts where it applies)."""
    if not fast_products_apply(model, layer):
        return operator(model, layer, x, y, "ggn")
    return _DensityOperator(LayerProducts([model], layer, x, y, "ggn"))


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


def ones_shares(
    vectors: np.ndarray, weight_shape: tuple[int, ...], mean: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Per eigenvector (columns), as `mean_shares`: ||V^T 1_hat||^2, its share on the subspace {1_hat (x) x}
    whose unit-side factor is the all-ones direction of the layer's outputs (the one direction layer norm's
    centering projects out: 0 for a layer that feeds layer norm), and (1_hat^T V m_hat)^2, its share along
    the single direction 1_hat (x) m_hat."""
    nan = np.full(vectors.shape[1], np.nan)
    if len(weight_shape) != 2:
        return nan, nan
    v = vectors.T.reshape(vectors.shape[1], *weight_shape)  # k x out x in
    total = np.einsum("koi,koi->k", v, v)
    ones = np.full(weight_shape[0], 1.0 / np.sqrt(weight_shape[0]))
    along_ones = np.einsum("koi,o->ki", v, ones)
    m = mean.double().cpu().numpy()
    norm = np.linalg.norm(m)
    both = (along_ones @ (m / norm)) ** 2 / total if norm > 0 else nan
    return (along_ones**2).sum(1) / total, both


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
    return measure_many([model], cfg, x, y, step, [seed])[0]


def measure_many(
    models: list[Net], cfg: CurvatureConfig, x: torch.Tensor, y: torch.Tensor, step: int, seeds: list[int]
) -> list[list[Row]]:
    """`measure` for several runs' models at one checkpoint (a stacked ensemble's members, each with
    its run's seed): the eigenproblems of all of them in lockstep, each member's rows as its run
    alone would give them (the same seeded draws, the same start vectors, the same order)."""
    wanted = [m for m, steps in (("ggn", cfg.steps), ("hessian", cfg.hessian_steps)) if step in steps]
    density = step in cfg.density_steps
    dtype = getattr(torch, cfg.dtype)
    rows: list[list[Row]] = [[] for _ in models]
    copies, rng_after_copy = [], []
    for model, seed in zip(models, seeds):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + step)  # the frozen draw and the quadrature's start vectors
            copies.append(measurement_copy(model, dtype))
            rng_after_copy.append(torch.get_rng_state())
    base = [seed * 1_000_003 + step * 7 for seed in seeds]  # each eigenproblem's start-vector seed, + its index
    ggn_top: list[float | None] = [None] * len(models)
    means: list[torch.Tensor | None] = [None] * len(models)
    weight_shape = tuple(weight_of(copies[0], cfg.layer).shape)
    if "ggn" in wanted or step in cfg.eq9_steps:
        for k, m in enumerate(copies):
            a = layer_inputs(m, cfg.layer, x)
            means[k] = a.mean(0)
            rows[k].append(Row(step, M.INPUT_MEAN_SQ, cfg.layer, "value", None,
                               float(means[k].pow(2).sum() / a.pow(2).sum(1).mean())))  # fmt: skip
    fast = fast_products_apply(copies[0], cfg.layer)
    ggn = None  # the GGN's products, built once and used by its eigensolve and its density alike
    for i, matrix in enumerate(wanted):
        products = LayerProducts(copies, cfg.layer, x, y, matrix) if fast else None
        ggn = products if matrix == "ggn" else ggn
        found = eigenpairs_many(copies, cfg.layer, x, y, matrix, cfg.top_k, cfg.tol, [b + i for b in base], products)
        for k, (vals, vecs, products) in enumerate(found):
            rows[k] += [Row(step, M.eig(matrix), cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(vals)]
            rows[k].append(Row(step, M.products(matrix), cfg.layer, "value", None, float(products)))
            if matrix == "ggn":
                shares = mean_shares(vecs, weight_shape, means[k])
                rows[k] += [
                    Row(step, M.GGN_MEAN_SHARE, cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(shares)
                ]
                for metric, values in zip((M.GGN_ONES_SHARE, M.GGN_ONES_MEAN_SHARE),
                                          ones_shares(vecs, weight_shape, means[k])):  # fmt: skip
                    rows[k] += [Row(step, metric, cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(values)]
                ggn_top[k] = float(vals[0])
    if step in cfg.eq9_steps:
        centered = [centered_copy(m, cfg.layer, mean) for m, mean in zip(copies, means)]
        found = eigenpairs_many(centered, cfg.layer, x, y, "ggn", cfg.top_k, cfg.tol, [b + 3 for b in base])
        for k, (vals, vecs, products) in enumerate(found):
            rows[k] += [Row(step, M.eig(M.GGN_EQ9), cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(vals)]
            rows[k].append(Row(step, M.products(M.GGN_EQ9), cfg.layer, "value", None, float(products)))
            shares = mean_shares(vecs, weight_shape, means[k])  # along the original mean's direction
            rows[k] += [
                Row(step, M.GGN_EQ9_MEAN_SHARE, cfg.layer, "rank", r + 1, float(v)) for r, v in enumerate(shares)
            ]
    if density:
        missing = [k for k in range(len(models)) if ggn_top[k] is None]
        if missing:  # the density's support needs the top eigenvalue
            found = eigenpairs_many([copies[k] for k in missing], cfg.layer, x, y, "ggn", 1, cfg.tol,
                                    [base[k] + 5 for k in missing])  # fmt: skip
            for k, (vals, _, products) in zip(missing, found):
                ggn_top[k] = float(vals[0])
                rows[k].append(Row(step, M.GGN_TOP_PRODUCTS, cfg.layer, "value", None, float(products)))
        for k, m in enumerate(copies):
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(rng_after_copy[k])  # where this member's own measurement left its stream
                op = _DensityOperator(ggn, k) if ggn is not None else density_operator(m, cfg.layer, x, y)
                grid, dens = spectral_density(op, max(ggn_top[k], 1e-12), cfg)
            rows[k] += [Row(step, M.GGN_DENSITY_AT, cfg.layer, "grid", j, float(g)) for j, g in enumerate(grid)]
            rows[k] += [Row(step, M.GGN_DENSITY, cfg.layer, "grid", j, float(d)) for j, d in enumerate(dens)]
            n_products = cfg.density_repeats * cfg.density_vectors
            rows[k].append(Row(step, M.GGN_DENSITY_PRODUCTS, cfg.layer, "value", None, float(n_products)))
    return rows
