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


@pytest.mark.parametrize("name,momentum,lam", [("rmsprop", 0.0, 0.0), ("rmsprop", 0.9, 0.01), ("adagrad", 0.0, 0.01)])
def test_eps_inside_the_root_follows_the_chapters_rule_step_by_step(name, momentum, lam):
    """Three steps against the rule written out (Grosse ch. 5, §2): s accumulates g^2 (RMSprop's moving
    average with beta2, Adagrad's sum), w <- w - lr g / sqrt(s + eps), heavy-ball momentum on that ratio,
    coupled L2 added to g first. eps = 1e-2 is of the size of s here, where inside and outside differ."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=6, depth=1), (5,), 3).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    cfg = OptimConfig(name=name, lr=0.05, eps=1e-2, eps_inside=True, momentum=momentum, beta2=0.9,
                      weight_decay=lam, wd_params="all")  # fmt: skip
    opt = Optimizer(cfg, model, total_steps=10)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    s = {n: torch.zeros_like(v) for n, v in w.items()}
    buf = {n: torch.zeros_like(v) for n, v in w.items()}
    for k in range(3):
        opt.set_step(k)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = {n: p.grad.detach() + lam * w[n] for n, p in model.named_parameters()}
        opt.step()
        for n, g in grads.items():
            s[n] = 0.9 * s[n] + 0.1 * g * g if name == "rmsprop" else s[n] + g * g
            buf[n] = momentum * buf[n] + g / torch.sqrt(s[n] + 1e-2)
            w[n] = w[n] - 0.05 * buf[n]
        for n, p in model.named_parameters():
            assert torch.allclose(p.detach(), w[n], atol=1e-13), (k, n)
    outside = dict(cfg.__dict__, eps_inside=False)
    torch.manual_seed(0)
    other = build_model(ModelConfig(width=6, depth=1), (5,), 3).double()
    o = Optimizer(OptimConfig(**outside), other, total_steps=10)
    o.set_step(0)
    F.cross_entropy(other(x), y).backward()
    o.step()
    assert (other.out.weight - model.out.weight).abs().max() > 1e-3  # torch's eps outside moves it elsewhere


def test_eps_inside_is_refused_where_it_would_change_nothing_the_chapter_says():
    from normlab.engine.config import ConfigError, from_dict
    from normlab.engine.spec import RunConfig

    with pytest.raises(ConfigError, match="optim.eps_inside: puts epsilon inside RMSprop's and Adagrad's square root"):
        from_dict(RunConfig, {"optim": {"name": "adam", "eps_inside": True}})


def test_inv_sqrt_schedule_is_adagrads_decay_made_explicit():
    """lr / sqrt(k + 1) after k updates past warmup: on a constant gradient RMSprop's step settles at about
    lr (its s tends to g^2), so with this schedule it shrinks like Adagrad's, whose s is k g^2."""
    c = OptimConfig(lr=1.0, schedule="inv_sqrt")
    assert [lr_at(c, k, 100) for k in (0, 3, 99)] == [1.0, 0.5, 0.1]
    w = OptimConfig(lr=1.0, schedule="inv_sqrt", warmup_steps=4)
    assert [lr_at(w, k, 100) for k in (0, 3, 4, 7)] == [0.25, 1.0, 1.0, 0.5]


def _moments_case(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=6, depth=2), (5,), 3).double()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    return model, x, y


def _loop_squares(model, x, y):
    """The mean over examples of each example's squared gradient, one backward pass per example."""
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for n, p in model.named_parameters():
            out[n] += p.grad.detach() ** 2 / len(x)
    model.zero_grad()
    return out


def test_per_example_squares_are_the_mean_of_each_examples_squared_gradient():
    from normlab.engine.optim import ExampleSquares

    model, x, y = _moments_case()
    got = ExampleSquares(model, "per_example", seed=0)(x, y)
    want = _loop_squares(model, x, y)
    for n, p in model.named_parameters():
        assert torch.allclose(got[p], want[n], rtol=1e-10, atol=1e-14), n


def test_fisher_squares_use_labels_drawn_from_the_model_by_the_runs_generator():
    from normlab.engine.optim import ExampleSquares

    model, x, y = _moments_case()
    got = ExampleSquares(model, "fisher", seed=3)(x, y)
    gen = torch.Generator().manual_seed(1_000_003 * 3 + 7)
    with torch.no_grad():
        drawn = torch.multinomial(torch.softmax(model(x).float(), 1), 1, generator=gen).squeeze(1)
    want = _loop_squares(model, x, drawn)
    for n, p in model.named_parameters():
        assert torch.allclose(got[p], want[n], rtol=1e-10, atol=1e-14), n
    other = _loop_squares(model, x, y)  # the data's labels give another estimate (the empirical Fisher's)
    assert any(not torch.allclose(got[p], other[n]) for n, p in model.named_parameters())


def test_adam_with_per_example_moments_is_adam_at_batch_size_one():
    """One example per batch: its squared gradient is the batch gradient squared, so the steps are torch's Adam's."""
    ref, x, y = _moments_case(1)
    mine, _, _ = _moments_case(1)
    a = Optimizer(OptimConfig(name="adam", lr=0.01), ref, total_steps=5)
    b = Optimizer(OptimConfig(name="adam", lr=0.01, second_moment="per_example"), mine, total_steps=5)
    for k in range(4):
        for model, opt in ((ref, a), (mine, b)):
            opt.set_step(k)
            opt.zero_grad()
            out = model(x[k : k + 1])
            opt.observe(out, x[k : k + 1], y[k : k + 1])
            F.cross_entropy(out, y[k : k + 1]).backward()
            opt.step()
    for p, q in zip(ref.parameters(), mine.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_adam_with_per_example_moments_differs_from_adam_on_a_batch():
    ref, x, y = _moments_case(2)
    mine, _, _ = _moments_case(2)
    plain, per = OptimConfig(name="adam", lr=0.01), OptimConfig(name="adam", lr=0.01, second_moment="per_example")
    for model, cfg in ((ref, plain), (mine, per)):
        opt = Optimizer(cfg, model, total_steps=5)
        opt.set_step(0)
        out = model(x)
        opt.observe(out, x, y)
        F.cross_entropy(out, y).backward()
        opt.step()
    # the mean of squares exceeds the square of the mean: the per-example step is shorter
    assert (mine.out.weight - ref.out.weight).abs().max() > 1e-4


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"optim.name": "sgd"}, "use adam or adamw"),
        ({"optim.name": "adam", "model.norm": "batch"}, "batch norm couples the examples"),
    ],
)
def test_second_moments_are_refused_where_they_are_not_defined(overrides, named):
    from normlab.engine.config import ConfigError, apply_overrides, from_dict, to_dict
    from normlab.engine.spec import RunConfig

    raw = apply_overrides(to_dict(RunConfig()), {"optim.second_moment": "per_example", **overrides})
    with pytest.raises(ConfigError, match=named):
        from_dict(RunConfig, raw).check()
