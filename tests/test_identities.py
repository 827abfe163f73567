"""Exact identities of Grosse ch. 5, checked through the engine's own models, and the probes
against an independent hand computation. Float64 throughout, so tolerances are tight."""

import torch
import torch.nn.functional as F

from normlab.engine.models import build_model
from normlab.engine.probes import Probes
from normlab.engine.spec import ModelConfig, ProbeConfig


def _bn_model(norm_eps=1e-12, **kw):
    # Eq. 11 has no epsilon (torch needs one > 0); its default 1e-5 makes the invariance approximate
    torch.manual_seed(0)
    cfg = ModelConfig(norm="batch", depth=2, width=12, norm_eps=norm_eps, **kw)
    return build_model(cfg, (6,), 4).double().train()


def _loss(model, x, y):
    return F.cross_entropy(model(x), y)


def test_scale_invariance_w_dot_grad_is_zero_and_grad_scales_inversely():
    """K6, Eqs. 16-18: for a unit feeding BN, w . grad J(w) = 0 and grad J(g w) = grad J(w) / g."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    for position in ("before", "after"):
        model = _bn_model(norm_position=position, bias="false")
        layer = model.blocks[0].weight_layer
        assert model.weight_layers[0].invariance == "unit"
        w0 = layer.weight.detach().clone()
        grad0 = torch.autograd.grad(_loss(model, x, y), layer.weight)[0]
        per_unit = (w0 * grad0).sum(1)
        assert per_unit.abs().max() < 1e-10 * max(1.0, grad0.abs().max().item())
        gamma = torch.tensor([0.5, 3.0] * 6, dtype=torch.float64).unsqueeze(1)  # a different scale per unit
        with torch.no_grad():
            layer.weight.mul_(gamma)
        grad_scaled = torch.autograd.grad(_loss(model, x, y), layer.weight)[0]
        assert torch.allclose(grad_scaled, grad0 / gamma, rtol=1e-8, atol=1e-13)


def test_batchnorm_epsilon_makes_the_invariance_approximate():
    torch.manual_seed(1)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    dots = {}
    for eps in (1e-12, 1e-5):
        model = _bn_model(norm_eps=eps)
        layer = model.blocks[0].weight_layer
        grad = torch.autograd.grad(_loss(model, x, y), layer.weight)[0]
        dots[eps] = (layer.weight.detach() * grad).sum(1).abs().max().item()
    assert dots[1e-12] < 1e-10 < 1e-8 < dots[1e-5]


def test_the_output_layer_is_not_scale_invariant():
    torch.manual_seed(1)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    model = _bn_model()
    out = model.out
    grad = torch.autograd.grad(_loss(model, x, y), out.weight)[0]
    assert (out.weight.detach() * grad).sum(1).abs().max() > 1e-6


def test_batch_centering_gradient_equals_gradient_from_centered_activations():
    """K7, Eqs. 13-14: with BC in the next layer, dJ/dW = S_bar^T (A - 1 m^T)."""
    torch.manual_seed(2)
    a = torch.relu(torch.randn(16, 5, dtype=torch.float64)) + 0.5  # uncentered activations
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(16, 3, dtype=torch.float64)
    model = build_model(ModelConfig(norm="center", depth=1, width=3, activation="identity"), (5,), 2).double()
    bc = model.blocks[0].norm
    s = bc(a @ w.T)
    loss = ((s - target) ** 2).sum() / 2
    grad_w = torch.autograd.grad(loss, w)[0]
    # independent computation: S_bar from the loss, centered A, no statistics path
    s_bar = (s - target).detach()
    a_centered = a - a.mean(0, keepdim=True)
    assert torch.allclose(grad_w, s_bar.T @ a_centered, rtol=1e-10, atol=1e-12)
    # and it differs from the uncentered product, so the check has teeth
    assert not torch.allclose(grad_w, s_bar.T @ a, rtol=1e-3)


def test_probes_match_a_hand_computation():
    torch.manual_seed(3)
    model = _bn_model()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 4, (20,))
    probes = Probes(ProbeConfig(per_unit=True, summaries=["mean", "median", "min", "max"]), model)
    with probes.capture():
        loss = _loss(model, x, y)
    loss.backward()
    lr = 0.3
    rows = probes.record(step=7, lr=lr)
    got = {(m, layer, s, u): v for (step, m, layer, s, u, v) in rows}
    assert all(r[0] == 7 for r in rows)

    w1, g1 = model.blocks[0].weight_layer.weight.detach(), model.blocks[0].weight_layer.weight.grad
    wn2 = (w1**2).sum(1)
    for j in range(12):
        assert abs(got[("weight_norm_sq", "layer1", "unit", j)] - wn2[j].item()) < 1e-12
        assert abs(got[("eff_lr", "layer1", "unit", j)] - lr / wn2[j].item()) < 1e-9
        assert abs(got[("grad_norm", "layer1", "unit", j)] - g1[j].norm().item()) < 1e-12
        nrm = wn2[j].sqrt().item() * g1[j].norm().item()
        assert abs(got[("normalized_grad_norm", "layer1", "unit", j)] - nrm) < 1e-12
    assert abs(got[("weight_norm_sq", "layer1", "mean", None)] - wn2.mean().item()) < 1e-12
    assert got[("weight_norm_sq", "layer1", "min", None)] == wn2.min().item()
    assert got[("weight_norm_sq", "layer1", "max", None)] == wn2.max().item()
    assert ("eff_lr", "out", "mean", None) not in got  # the read-out is not scale invariant

    # activations entering layer 2, recomputed by hand: ReLU(BN(x W1^T))
    r = x @ w1.T
    a1 = torch.relu((r - r.mean(0)) / torch.sqrt(r.var(0, unbiased=False) + 1e-12))
    m = a1.mean(0)
    assert abs(got[("input_mean_sq_norm", "layer2", "value", None)] - (m**2).sum().item()) < 1e-9
    assert abs(got[("input_var_mean", "layer2", "value", None)] - a1.var(0, unbiased=False).mean().item()) < 1e-9
    # pre-activation of block 1 is BN(x W1^T): per-unit mean 0, variance ~1
    pre_means = [got[("preact_mean", "layer1", "unit", j)] for j in range(12)]
    assert max(abs(v) for v in pre_means) < 1e-9
    # a second probe reports drift against the first
    with probes.capture():
        _loss(model, x * 2, y).backward()
    rows2 = {(m_, layer, s): v for (_, m_, layer, s, u, v) in probes.record(step=8, lr=lr)}
    assert ("preact_mean_drift", "layer1", "value") in rows2


def test_angular_update_of_an_sgd_step_matches_its_first_order_prediction():
    """For SGD on a scale-invariant unit, the direction turns by ~ alpha ||g|| / ||w|| (eff_step)."""
    from normlab.engine.optim import Optimizer
    from normlab.engine.spec import OptimConfig

    torch.manual_seed(4)
    model = _bn_model()
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randint(0, 4, (64,))
    probes = Probes(ProbeConfig(per_unit=True), model)
    opt = Optimizer(OptimConfig(name="sgd", lr=1e-3), model, total_steps=1)
    with probes.capture():
        loss = _loss(model, x, y)
    loss.backward()
    before = {(m, u): v for (_, m, layer, s, u, v) in probes.record(0, 1e-3) if layer == "layer1" and s == "unit"}
    w_old = model.blocks[0].weight_layer.weight.detach().clone()
    opt.step()
    after = {(m, u): v for (_, m, layer, s, u, v) in probes.after_step(0) if layer == "layer1" and s == "unit"}
    w_new = model.blocks[0].weight_layer.weight.detach()
    for j in range(12):
        exact = (w_new[j] / w_new[j].norm() - w_old[j] / w_old[j].norm()).norm().item()
        assert abs(after[("angular_update", j)] - exact) < 1e-12
        assert abs(after[("angular_update", j)] / before[("eff_step", j)] - 1) < 1e-3
