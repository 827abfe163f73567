"""The exact recurrences against their closed forms and fixed points."""

import numpy as np

from normlab.experiments import theory as T


def test_recurrence_without_decay_follows_the_closed_form():
    alpha = np.array([0.1, 1.0])
    rec = np.array([0, 10, 1000, 100000])
    u = T.iterate(alpha, 0.0, 1.0, horizon=100000, record=rec)
    assert np.allclose(u[0], 1.0)
    # one step by hand: u1 = u0 + alpha^2 / u0
    assert np.allclose(T.iterate(alpha, 0.0, 1.0, 1, np.array([1]))[0], 1.0 + alpha**2)
    closed = T.closed_form_no_decay(alpha[None, :], 1.0, rec[:, None])
    # u_k^2 = u0^2 + 2 a^2 k + a^4 sum 1/u_i^2 >= closed form, and close to it
    assert (u >= closed - 1e-12).all()
    rel = u / closed - 1
    assert (rel < 0.05).all() and (rel[-1] < 1e-3).all()  # the correction fades as k grows
    assert (np.diff(rel[1:], axis=0) < 0).all()


def test_effective_lr_tends_to_one_over_sqrt_2k_past_the_transient():
    alpha = np.array([0.05, 0.3, 1.0])
    k0 = T.transient(alpha, 1.0)
    k = int(100 * k0.max())
    u = T.iterate(alpha, 0.0, 1.0, horizon=k, record=np.array([k]))[0]
    rel = np.abs(alpha / u * np.sqrt(2 * k) - 1)
    assert (rel < 0.01).all()


def test_weight_decay_recurrence_reaches_the_exact_fixed_point_from_any_start():
    alpha, lam = np.array([0.1, 0.1, 0.1, 1.0]), np.array([1e-2, 1e-2, 1e-2, 1e-3])
    u0 = np.array([0.01, 1.0, 100.0, 1.0])
    u = T.iterate(alpha, lam, u0, horizon=20000, record=np.array([20000]))[0]
    star = T.fixed_point(alpha, lam)
    assert np.allclose(u, star, rtol=1e-6)
    # the fixed point solves u = (1 - a l)^2 u + a^2 / u exactly
    assert np.allclose(star, (1 - alpha * lam) ** 2 * star + alpha**2 / star)
    # Eq. 24-25: u* ~ sqrt(alpha / (2 lambda)) and alpha / u* ~ sqrt(2 alpha lambda) for small a*l
    assert np.allclose(star, np.sqrt(alpha / (2 * lam)), rtol=1e-3)
    assert np.allclose(alpha / star, T.equilibrium_step(alpha, lam))
    assert np.allclose(T.equilibrium_step(alpha, lam), np.sqrt(2 * alpha * lam), rtol=1e-3)
