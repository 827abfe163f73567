"""K15's machinery: a converged fit is balanced and pays the L_{2/K} penalty; depth sparsifies."""

import numpy as np
import pytest

from normlab.experiments import deep_linear as D


@pytest.fixture(scope="module")
def problem():
    p = D.SparseProblem(n=30, d=40, nonzeros=3, max_iter=2000)
    return p, D.sparse_data(p, 0)


@pytest.mark.parametrize("depth", [2, 3])
def test_a_converged_fit_is_balanced_and_pays_the_predicted_penalty(problem, depth):
    p, (X, y, _) = problem
    r = D.fit(X, y, depth, 0.01, p, seed=0)
    assert r["grad_max"] < 1e-8
    assert r["imbalance"] < 1e-6
    assert r["penalty"] == pytest.approx(r["predicted_penalty"], rel=1e-6)


def test_depth_one_is_ridge_regression(problem):
    p, (X, y, _) = problem
    lam = 0.05
    r = D.fit(X, y, 1, lam, p, seed=0)
    # independent reference: the ridge normal equations of (1/2n)||X b - y||^2 + lam ||b||^2
    Xn, yn = X.numpy(), y.numpy()
    ridge = np.linalg.solve(Xn.T @ Xn / len(yn) + 2 * lam * np.eye(Xn.shape[1]), Xn.T @ yn / len(yn))
    assert r["beta_max"] == pytest.approx(np.abs(ridge).max(), rel=1e-6)
    assert r["train_mse"] == pytest.approx(float(((Xn @ ridge - yn) ** 2).mean()), rel=1e-6)


def test_power_law_truth_has_the_stated_magnitudes():
    p = D.SparseProblem(n=10, d=30, truth="power_law", decay=1.5)
    _, _, beta = D.sparse_data(p, 3)
    mags = np.sort(np.abs(beta.numpy()))[::-1]
    np.testing.assert_allclose(mags, np.arange(1, 31) ** -1.5, rtol=1e-15)
    assert (beta > 0).any() and (beta < 0).any()


def test_orthogonal_design_and_soft_threshold_satisfy_the_lasso_conditions():
    """X^T X / n = I, and soft_threshold meets the lasso's optimality conditions on it (independent of
    its formula): z_i - beta_i = 2 lam sign(beta_i) where beta_i != 0, |z_i| <= 2 lam where it is 0."""
    p = D.SparseProblem(n=30, d=40, orthogonal_d=12)
    X, y = D.orthogonal_data(p, 0)
    np.testing.assert_allclose(X.T @ X / p.n, np.eye(12), atol=1e-12)
    lam = 0.2
    b = D.soft_threshold(X, y, lam)
    z = (X.T @ y).numpy() / p.n
    on = b != 0
    assert on.any() and (~on).any()
    np.testing.assert_allclose(z[on] - b[on], 2 * lam * np.sign(b[on]), atol=1e-12)
    assert (np.abs(z[~on]) <= 2 * lam).all()


def test_depth_two_on_the_orthogonal_design_reaches_soft_thresholding():
    p = D.SparseProblem(n=30, d=40, orthogonal_d=12, max_iter=2000)
    X, y = D.orthogonal_data(p, 0)
    r = D.fit(X, y, 2, 0.2, p, seed=0)
    assert D.relative_error(r["beta"], D.soft_threshold(X, y, 0.2)) < 1e-6


def test_fit_rows_keeps_the_lowest_objective_of_its_starts():
    p = D.SparseProblem(n=30, d=40, max_iter=500, starts=3)
    fits, weights, closed = D.fit_rows((p, 0, 3, 0.05))
    assert [f["start"] for f in fits] == [0, 1, 2] and sum(f["best"] for f in fits) == 1
    best = min(fits, key=lambda f: f["objective"])
    assert best["best"] and len(weights) == 40 and closed == []
    assert max(w["beta_abs"] for w in weights) == pytest.approx(best["beta_max"], rel=1e-12)
