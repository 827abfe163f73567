"""Top eigenpairs of several symmetric operators at once: Lanczos in lockstep.

Each member (a run's curvature matrix, say) has its own Krylov space, started from its own seeded
vector; every iteration asks for one product per member still running, all in one call, so a
product function that handles many members in one pass (engine.curvature.LayerProducts) pays its
per-call cost once per iteration rather than once per member. The basis is kept in float64 and
fully reorthogonalized (classical Gram-Schmidt, twice), so no ghost copies of converged
eigenvalues appear, and no restart is needed at the sizes used here (k = 30 of 10^4 converges in
60-120 products, ARPACK's `eigsh` took 62-78).

A member stops when each of its k largest Ritz values theta_i has a residual ||A y_i - theta_i y_i||
= beta_j |s_ji| <= tol |theta_i| (ARPACK's criterion for `eigsh(tol=...)`), or when its Krylov
space is invariant (beta_j = 0), or after `max_iter` products.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

# products(vectors, members): one float64 vector per member named in `members` -> their products
Products = Callable[[list[torch.Tensor], list[int]], list[torch.Tensor]]


def _ritz(alpha: list[float], beta: list[float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (ascending) of the tridiagonal (alpha, beta[:-1]) and their vectors."""
    j = len(alpha)
    k = min(k, j)
    vals, vecs = eigh_tridiagonal(np.array(alpha), np.array(beta[: j - 1]), select="i", select_range=(j - k, j - 1))
    return vals, vecs


def top_eigenpairs_lockstep(
    products: Products,
    dim: int,
    k: int,
    tol: float,
    seeds: Sequence[int],
    max_iter: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """For each member (one per seed): its k largest eigenvalues (descending), their unit
    eigenvectors (columns, dim x k) and the products it took. `tol` = 0 asks for machine precision
    (residuals <= 1e-12 |theta|). The start vectors are np.random.default_rng(seed) normals, as
    engine.curvature.top_eigenpairs seeds ARPACK."""
    members = len(seeds)
    max_iter = min(dim, max_iter or max(10 * k, 200))
    tol = max(tol, 1e-12)
    cap = min(dim, 2 * k + 2)
    Q = torch.zeros(members, cap + 1, dim, dtype=torch.float64)
    for m, seed in enumerate(seeds):
        v0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(dim))
        Q[m, 0] = v0 / v0.norm()
    alpha: list[list[float]] = [[] for _ in range(members)]
    beta: list[list[float]] = [[] for _ in range(members)]
    done: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    active = list(range(members))
    j = 0
    while active:
        if j + 1 >= Q.shape[1]:  # grow the basis (doubling)
            grown = torch.zeros(members, min(dim, 2 * Q.shape[1]) + 1, dim, dtype=torch.float64)
            grown[:, : Q.shape[1]] = Q
            Q = grown
        every = len(active) == members
        sel = slice(None) if every else torch.tensor(active)  # a view while every member runs
        q = Q[sel, j]  # (A, dim)
        w = torch.stack(products(list(q), active)).to(torch.float64)
        a = (q * w).sum(1)
        basis = Q[sel, : j + 1]  # (A, j + 1, dim)
        for _ in range(2):  # full reorthogonalization against every earlier vector (this one included)
            w = w - (basis.mT @ (basis @ w.unsqueeze(2))).squeeze(2)
        b = w.norm(dim=1)
        still = []
        for i, m in enumerate(active):
            alpha[m].append(float(a[i]))
            beta[m].append(float(b[i]))
            steps = j + 1
            invariant = beta[m][-1] <= 1e-10 * max(abs(x) for x in alpha[m]) if alpha[m] else True
            if steps >= k or invariant or steps >= max_iter:
                vals, vecs = _ritz(alpha[m], beta[m], k)
                residual = beta[m][-1] * np.abs(vecs[-1])
                if invariant or steps >= max_iter or bool(np.all(residual <= tol * np.abs(vals))):
                    done[m] = (vals, vecs)
                    continue
            Q[m, j + 1] = w[i] / b[i]
            still.append(m)
        active = still
        j += 1
    out = []
    for m in range(members):
        vals, vecs = done[m]
        steps = len(alpha[m])
        y = vecs.T @ Q[m, :steps].numpy()  # (k, dim) Ritz vectors
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        order = np.argsort(vals)[::-1]
        out.append((vals[order], y[order].T, steps))
    return out
