"""Small float64 tools the exact checks share: seeded instances with exact moments, the chapter's
normalizers without epsilon, relative errors, and a tiny tanh MLP."""

from __future__ import annotations

import math

import torch

D64 = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def gen(seed: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + salt)


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=D64)


def exact_moments(g: torch.Generator, n: int, mean: torch.Tensor, cov_sqrt: torch.Tensor) -> torch.Tensor:
    """n rows whose sample mean is exactly `mean` and whose sample covariance (1/n) is exactly
    cov_sqrt cov_sqrt^T: a Gaussian sample, centered and whitened, then mapped."""
    z = randn(g, n, mean.numel())
    z = z - z.mean(0)
    evals, evecs = torch.linalg.eigh(z.T @ z / n)
    z = z @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    return z @ cov_sqrt.T + mean


def uncentered(g: torch.Generator, d: int, mean_entry: float, n: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.1's instance: the mean m with every entry `mean_entry`, and n rows (2d + 10 by default) whose
    sample mean is exactly m and whose sample covariance is exactly I."""
    m = torch.full((d,), mean_entry, dtype=D64)
    return m, exact_moments(g, n or 2 * d + 10, m, torch.eye(d, dtype=D64))


def bn(x: torch.Tensor) -> torch.Tensor:
    """Eq. 11 without epsilon: columns to zero mean and unit (biased) variance."""
    xc = x - x.mean(0)
    return xc / xc.pow(2).mean(0).sqrt()


def ln(x: torch.Tensor) -> torch.Tensor:
    """Eq. 21 without gain, bias or epsilon: each row to zero mean and unit variance."""
    xc = x - x.mean(1, keepdim=True)
    return xc / xc.pow(2).mean(1, keepdim=True).sqrt()


def row(check: str, seed: int, value: float, case: str = "", **extra) -> dict:
    return {"check": check, "seed": seed, "case": case, "value": float(value), **extra}


def tiny_mlp(g: torch.Generator, dims: list[int]) -> list[torch.Tensor]:
    params = []
    for a, b in zip(dims[:-1], dims[1:]):
        params += [randn(g, b, a) / math.sqrt(a), 0.1 * randn(g, b)]
    return [p.requires_grad_() for p in params]


def mlp_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i].T + params[i + 1]
        if i + 2 < len(params):
            h = torch.tanh(h)
    return h


def flat_grad(out: torch.Tensor, params: list[torch.Tensor], **kw) -> torch.Tensor:
    return torch.cat([q.reshape(-1) for q in torch.autograd.grad(out, params, **kw)])


def vec(w: torch.Tensor) -> torch.Tensor:
    """vec(W): columns stacked, so that vec(W B) = (B^T (x) I) vec(W)."""
    return w.T.reshape(-1)
