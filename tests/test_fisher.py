"""K12's near-theta* machinery against direct computations from the residuals."""

import numpy as np
import pytest

from normlab.experiments import fisher as F


@pytest.fixture(scope="module")
def reg():
    return F.Regression.draw(F.FisherProblem(n=400), 3)


def test_moment_expansion_gives_the_direct_angle(reg):
    """NearTheta's EF (a quadratic in theta - theta* from precomputed moments) and its gradient
    (F delta) give the same angle as the field computed from the residuals at each point."""
    near = F.NearTheta(reg)
    delta = np.array([[0.3, -0.2], [1.5, 0.4], [-0.01, 0.02], [2.0, 2.0]])
    direct = F._angles(reg, reg.theta_star + delta)
    np.testing.assert_allclose(near.angles(delta), direct, rtol=1e-7, atol=1e-7)


def test_the_angle_tends_to_its_limit_at_theta_star(reg):
    near = F.NearTheta(reg)
    d = F.circle(36)
    limit = near.limit_angles(d)
    gaps = [np.abs(near.angles(d * r) - limit).max() for r in (1e-3, 1e-4, 1e-5)]
    np.testing.assert_allclose(gaps[1:], [gaps[0] / 10, gaps[0] / 100], rtol=0.05)  # first order in the distance
    assert gaps[2] < 1e-2
    assert limit.max() > 1.0  # N = 400 with heavy-tailed inputs: the limit itself is far from 0


def test_points_at_a_prediction_change_have_that_rms_change(reg):
    near = F.NearTheta(reg)
    delta = near.at_prediction_change(0.37, F.circle(8))
    rms = np.sqrt(((reg.x @ delta.T) ** 2).mean(0))
    np.testing.assert_allclose(rms, 0.37, rtol=1e-12)


def test_with_noise_independent_of_gaussian_inputs_the_limit_vanishes_with_n():
    """Light tails and many examples: EF(theta*) -> Fisher, so the limiting angle falls toward 0."""
    p = F.FisherProblem(lognormal_sigma=0.25, near_sizes=[100, 10000], near_distances=[0.1])
    lim, curve = F.near_tables(p, 0)
    assert lim["n"].tolist() == [100, 10000]
    assert lim["limit_max"].iloc[1] < lim["limit_max"].iloc[0] / 3
    assert len(curve) == 2 and (curve["angle_max"] >= 0).all()
