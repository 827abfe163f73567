"""The chapter's norm recurrences, iterated exactly (float64, no training).

u = ||w_j||^2, g = ||grad J(w_j / ||w_j||)|| (the normalized-gradient norm), alpha the step size,
lambda the weight decay.
  Eq. 19 (no weight decay):  u_{k+1} = u_k + alpha^2 g^2 / u_k
      => u_k^2 ~ u_0^2 + 2 alpha^2 g^2 k, and the effective LR alpha/u_k -> 1/(g sqrt(2k))
         once k >> k0 = u_0^2 / (2 alpha^2 g^2).
  Eq. 23 (weight decay):     u_{k+1} = (1 - alpha lambda)^2 u_k + alpha^2 g^2 / u_k
      => fixed point u* = sqrt(alpha g^2 / (lambda (2 - alpha lambda))) ~ sqrt(alpha/(2 lambda)) g
         (Eq. 24), effective LR alpha/u* ~ sqrt(2 alpha lambda) / g (Eq. 25).
"""

from __future__ import annotations

import numpy as np


def log_steps(horizon: int, per_decade: int = 40) -> np.ndarray:
    """Sorted unique integer steps 0..horizon, log-spaced (where the figures sample)."""
    pts = np.unique(np.round(np.logspace(0, np.log10(horizon), per_decade * int(np.log10(horizon) + 1))))
    return np.concatenate([[0], pts.astype(np.int64)])


def iterate(
    alpha: np.ndarray, lam: np.ndarray | float, u0: np.ndarray | float, horizon: int, record: np.ndarray, g: float = 1.0
) -> np.ndarray:
    """Iterate Eq. 23 (Eq. 19 when lam = 0) for many (alpha, lam, u0) at once.

    Returns u at every step in `record` (shape: len(record) x number of curves).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    shrink = (1.0 - alpha * np.asarray(lam, dtype=np.float64)) ** 2
    push = (alpha * g) ** 2
    u = np.broadcast_to(np.asarray(u0, dtype=np.float64), np.broadcast(alpha, shrink).shape).copy()
    out = np.empty((len(record), u.size))
    want = iter(enumerate(record))
    i, target = next(want)
    for k in range(horizon + 1):
        while target == k:
            out[i] = u
            nxt = next(want, None)
            if nxt is None:
                return out
            i, target = nxt
        u = shrink * u + push / u
    return out


def closed_form_no_decay(alpha: np.ndarray, u0: float, k: np.ndarray, g: float = 1.0) -> np.ndarray:
    return np.sqrt(u0**2 + 2.0 * (alpha * g) ** 2 * k)


def transient(alpha: np.ndarray | float, u0: float, g: float = 1.0):
    """k0 = u0^2 / (2 alpha^2 g^2): the step after which the 1/sqrt(2k) trend takes over."""
    return u0**2 / (2.0 * (np.asarray(alpha) * g) ** 2)


def fixed_point(alpha, lam, g: float = 1.0):
    """Exact fixed point of Eq. 23."""
    alpha, lam = np.asarray(alpha, dtype=float), np.asarray(lam, dtype=float)
    return np.sqrt(alpha * g**2 / (lam * (2.0 - alpha * lam)))


def equilibrium_step(alpha, lam):
    """alpha g / u* (the angle an SGD step turns w by, at equilibrium): independent of g."""
    alpha, lam = np.asarray(alpha, dtype=float), np.asarray(lam, dtype=float)
    return np.sqrt(alpha * lam * (2.0 - alpha * lam))
