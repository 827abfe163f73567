"""adaptive_gotchas' building blocks against hand computations."""

import numpy as np
import pytest

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


def test_factored_per_example_gradients_match_torch_func():
    # LinearGradients never forms the N x d matrix of per-example gradients; its batch means and
    # second moments must equal those of the vmap(grad) matrix it replaced.
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from normlab.engine.models import build_model
    from normlab.engine.spec import ModelConfig
    from normlab.experiments.adaptive_gotchas import LinearGradients

    torch.manual_seed(0)
    x, y = torch.randn(300, 12, dtype=torch.float64), torch.randint(0, 5, (300,))
    model = build_model(ModelConfig(width=16, depth=2), (12,), 5).double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(prm, xi, yi):
        return F.cross_entropy(functional_call(model, prm, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    per_ex = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    G = torch.cat([v.flatten(1) for v in per_ex.values()], dim=1)
    fact = LinearGradients(model, x, y)
    torch.testing.assert_close(fact.mean(), G.mean(0), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fact.mean_square(), (G * G).mean(0), rtol=1e-10, atol=1e-16)
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:37]
    torch.testing.assert_close(fact.mean(idx), G[idx].mean(0), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="every parameter inside an nn.Linear"):
        LinearGradients(
            build_model(ModelConfig(width=8, depth=1, norm="batch", norm_affine=True), (12,), 5), x.float(), y
        )
