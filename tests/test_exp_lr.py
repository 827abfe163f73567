"""K14's machinery: the growth root, the overflow step, and a short float64 run of both trajectories."""

import math

import pytest

from normlab.engine import config as C
from normlab.experiments import exp_lr as E


@pytest.mark.parametrize("lr,wd,gamma", [(0.1, 0.01, 0.0), (0.1, 0.01, 0.9), (0.5, 0.1, 0.5)])
def test_growth_root_solves_the_quadratic(lr, wd, gamma):
    a = E.growth_root(lr, wd, gamma)
    if gamma == 0:
        assert a == pytest.approx(1 - lr * wd)
    else:
        assert a * a - (1 + gamma - lr * wd) * a + gamma == pytest.approx(0, abs=1e-12) and 0 < a < 1


def test_overflow_step_is_where_the_learning_rate_passes_the_largest_float():
    t = E.overflow_step(0.1, 0.999)

    def log_lr(step):
        return math.log(0.1) + (-2 * step - 1) * math.log(0.999)

    top = math.log(1.7976931348623157e308)
    assert log_lr(math.floor(t)) < top < log_lr(math.ceil(t))


def _short(norm_eps: float) -> E.ExpLRConfig:
    """30 steps of a small network on synthetic data."""
    return C.from_dict(
        E.ExpLRConfig,
        {"experiment": "exp_lr", "run": {"data": {"name": "synthetic", "num_samples": 300, "input_shape": [8]}},
         "problem": {"steps": 30, "log_every": 10, "width": 12, "batch_size": 32, "probe_examples": 64,
                     "norm_eps": norm_eps}},
    )  # fmt: skip


def test_both_trajectories_compute_the_same_function_and_fail_when_the_schedule_is_wrong():
    """Against the rounding floor (the weight-decay run and its copy moved one ulp per update): the
    twins stay within it; the schedule with its exponent off by one, eta alpha^(-2t), does not."""
    cfg = _short(1e-30)
    factor = E.ExpLRAnalysis().floor_factor
    for gamma in (0.0, 0.9):
        t = E.compare_runs(cfg, 0, gamma)
        assert list(t["step"]) == [0, 10, 20, 30]
        assert E.floor_ratio(t).max() < factor
        assert (t[["floor_output_rel_diff", "floor_direction_diff"]].iloc[1:] > 0).all().all()  # the nudges act
        assert t["weight_norm_growing"].iloc[-1] > t["weight_norm_growing"].iloc[0]
        wrong = E.compare_runs(cfg, 0, gamma, exponent_offset=0)  # the negative control
        assert E.floor_ratio(wrong).max() > 1e3 * factor


def test_a_batchnorm_epsilon_breaks_the_identity_far_above_rounding():
    """With a BN epsilon the network is not exactly scale invariant and the twins part by more than
    rounding (1e-3 here over 30 steps; the earlier default, 1e-12, did so over 2000 steps)."""
    cfg = _short(1e-3)
    assert E.floor_ratio(E.compare_runs(cfg, 0, 0.0)).max() > 10 * E.ExpLRAnalysis().floor_factor
