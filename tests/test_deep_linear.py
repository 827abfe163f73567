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
