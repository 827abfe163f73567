"""adaptive_gotchas' building blocks against hand computations."""

import numpy as np

from normlab.experiments.adaptive_gotchas import GotchasConfigPart, _eps_table, _stream_steps


def test_adagrad_step_on_a_constant_gradient_is_lr_over_sqrt_t():
    p = GotchasConfigPart(stream_steps=400, coords=3, grad_mean=2.0, grad_std=0.0, lr=0.1)
    st = _stream_steps("adagrad", p, seed=0)
    t = st["step"].to_numpy()
    # sum of squares after t steps = 4t, so the step is lr * 2 / sqrt(4t) = lr / sqrt(t)
    assert np.allclose(st["median_abs_step"], 0.1 / np.sqrt(t), rtol=1e-6)


def test_rmsprop_step_on_a_constant_gradient_tends_to_lr():
    p = GotchasConfigPart(stream_steps=2000, coords=3, grad_mean=2.0, grad_std=0.0, lr=0.1, rmsprop_alpha=0.99)
    st = _stream_steps("rmsprop", p, seed=0)
    assert abs(st["median_abs_step"].iloc[-1] - 0.1) < 1e-6


def test_eps_table_torch_adam_puts_eps_outside_the_root():
    table = _eps_table(GotchasConfigPart(eps_values=[1e-8]))
    assert np.allclose(table["torch_adam"], table["outside"], atol=1e-12)
    row = table.iloc[(table["grad"] - 1e-4).abs().argmin()]
    assert row["outside"] > 0.99 and row["inside"] < 0.75  # |g| = 1e-4 = sqrt(eps): damped only inside
