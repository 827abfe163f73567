"""Optimizer wrapper: weight decay modes against hand-written update rules, schedules, renorm."""

import math

import pytest
import torch
import torch.nn.functional as F

from normlab.engine.models import build_model
from normlab.engine.optim import Optimizer, lr_at
from normlab.engine.spec import ModelConfig, OptimConfig


def _one_step(opt_cfg: OptimConfig, norm="none"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=1, norm=norm), (5,), 3).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = Optimizer(opt_cfg, model, total_steps=10)
    opt.set_step(0)
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    return before, grads, after


def test_sgd_l2_weight_decay_adds_lambda_w_to_the_gradient_of_weights_only():
    lr, lam = 0.1, 0.01
    before, grads, after = _one_step(OptimConfig(name="sgd", lr=lr, weight_decay=lam, wd_mode="l2"))
    w = "blocks.0.weight_layer.weight"
    assert torch.allclose(after[w], before[w] - lr * (grads[w] + lam * before[w]), atol=1e-15)
    b = "blocks.0.weight_layer.bias"  # wd_params: weights -> biases are not decayed
    assert torch.allclose(after[b], before[b] - lr * grads[b], atol=1e-15)


def test_sgd_decoupled_weight_decay_shrinks_then_steps():
    lr, lam = 0.1, 0.05
    before, grads, after = _one_step(OptimConfig(name="sgd", lr=lr, weight_decay=lam, wd_mode="decoupled"))
    w = "out.weight"
    assert torch.allclose(after[w], before[w] * (1 - lr * lam) - lr * grads[w], atol=1e-15)


def test_adamw_matches_torch_adamw():
    lr, lam = 0.01, 0.1
    before, grads, after = _one_step(OptimConfig(name="adamw", lr=lr, weight_decay=lam, wd_params="all"))
    for name, w0 in before.items():
        ref = w0.clone().requires_grad_(True)
        ref.grad = grads[name]
        torch.optim.AdamW([ref], lr=lr, weight_decay=lam).step()
        assert torch.allclose(after[name], ref.detach(), atol=1e-15)


def test_schedules():
    c = OptimConfig(lr=1.0, schedule="cosine")
    assert (
        lr_at(c, 0, 100) == 1.0 and lr_at(c, 50, 100) == pytest.approx(0.5) and lr_at(c, 100, 100) == pytest.approx(0.0)
    )
    s = OptimConfig(lr=1.0, schedule="step", step_every=10, step_gamma=0.5)
    assert [lr_at(s, k, 100) for k in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    w = OptimConfig(lr=1.0, schedule="linear", warmup_steps=4)
    assert [lr_at(w, k, 104) for k in (0, 3)] == [0.25, 1.0]
    assert lr_at(w, 54, 104) == pytest.approx(0.5)


def test_renormalize_keeps_scale_invariant_units_on_the_sphere():
    _, _, after = _one_step(OptimConfig(name="sgd", lr=0.5, renormalize=True), norm="batch")
    norms = after["blocks.0.weight_layer.weight"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12)
    assert not math.isclose(after["out.weight"].norm(dim=1)[0].item(), 1.0, abs_tol=1e-6)


def test_grafting_takes_m_s_step_length_and_d_s_direction_per_tensor():
    """Adam#SGD and SGD#Adam against a hand computation over two steps (Agarwal et al. 2020)."""
    from normlab.engine.optim import Optimizer
    from normlab.engine.spec import OptimConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=6, depth=1), (4,), 3).double()
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(2)]
    lr, mom, b1, b2, eps = 0.05, 0.9, 0.9, 0.999, 1e-8
    for name in ("adam#sgd", "sgd#adam"):
        w = [p.detach().clone() for p in model.parameters()]
        params = list(model.parameters())
        opt = Optimizer(OptimConfig(name=name, lr=lr, momentum=mom, beta1=b1, beta2=b2, eps=eps), model, 10)
        state = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), buf=None) for p in params]
        for t, gs in enumerate(grads, start=1):
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()
            for i, g in enumerate(gs):  # the two steps by hand, from the same point
                s = state[i]
                s["m"] = b1 * s["m"] + (1 - b1) * g
                s["v"] = b2 * s["v"] + (1 - b2) * g * g
                adam = -lr * (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps)
                s["buf"] = g.clone() if s["buf"] is None else mom * s["buf"] + g
                sgd = -lr * s["buf"]
                length, direction = (adam, sgd) if name == "adam#sgd" else (sgd, adam)
                w[i] = w[i] + direction * (length.norm() / direction.norm())
            for p, expected in zip(params, w):
                assert torch.allclose(p.detach(), expected, rtol=1e-10, atol=1e-12), (name, t)
