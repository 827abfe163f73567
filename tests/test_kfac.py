"""K-FAC (engine/kfac.py) against independent computations: a dense natural gradient, curvlinops'
Kronecker factors, the scale invariance of §5.2, and both forms of weight decay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from normlab.engine.kfac import KFAC
from normlab.engine.models import build_model
from normlab.engine.optim import Optimizer
from normlab.engine.spec import KFACConfig, ModelConfig, OptimConfig


def _one_step(model, x, loss_fn, **kw) -> KFAC:
    opt = KFAC(model.parameters(), [m for m in model.modules() if isinstance(m, nn.Linear)], **kw)
    out = model(x)
    opt.zero_grad()
    opt.observe(out)
    loss_fn(out).backward()
    opt.step()
    return opt


@pytest.mark.parametrize("damping", [0.0, 1e-3, 0.5])
def test_single_linear_layer_gaussian_step_is_the_dense_natural_gradient(damping):
    # For z = W x + b under a unit-variance Gaussian likelihood, F = E[x x^T] (x) I exactly, so
    # K-FAC's damped step must equal -(F + eta I)^-1 grad, with F built densely from Jacobians.
    torch.manual_seed(0)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 4, dtype=torch.float64)
    layer = nn.Linear(6, 4).double()
    params = {k: v.detach().clone().requires_grad_() for k, v in layer.named_parameters()}
    names = list(params)

    def f(p, xi):
        return functional_call(layer, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # per example: dz/dW (4,4,6), dz/db (4,4)
    J = torch.cat([jac[n].reshape(64, 4, -1) for n in names], dim=2)  # (B, C, P)
    fisher = torch.einsum("bcp,bcq->pq", J, J) / 64
    loss = lambda z: 0.5 * ((z - y) ** 2).sum(1).mean()  # noqa: E731
    grad = torch.autograd.grad(loss(functional_call(layer, params, (x,))), list(params.values()))
    g = torch.cat([t.reshape(-1) for t in grad])
    expected = -torch.linalg.solve(fisher + damping * torch.eye(len(g), dtype=torch.float64), g)

    if damping == 0.0:  # A is full rank here, so the undamped system is well posed too
        assert torch.linalg.matrix_rank(fisher) == len(g)
    _one_step(layer, x, loss, lr=1.0, damping=damping, likelihood="gaussian", fisher="exact")
    got = torch.cat([(layer.weight - params["weight"]).reshape(-1), layer.bias - params["bias"]])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_factors_match_curvlinops_kfac_type2():
    # curvlinops' KFACLinearOperator (an independent implementation) with the exact ("type-2")
    # Fisher: its dense matrix must equal kron(S, A) block by block for every linear layer.
    from curvlinops import KFACLinearOperator

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    opt = KFAC(model.parameters(), [model[0], model[2]], fisher="exact")
    out = model(x)
    opt.observe(out)
    params = [p for p in model.parameters()]
    ref = KFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="type-2", separate_weight_and_bias=False
    )
    dense = ref @ torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    start = 0
    for m in (model[0], model[2]):
        size = m.weight.numel() + m.bias.numel()
        # our vector per layer: [W | b] row-major, i.e. index (i, j) of the (out, in + 1) matrix
        block = dense[start : start + size, start : start + size]
        out_dim, in_dim = m.weight.shape
        w_idx = torch.arange(out_dim * in_dim).reshape(out_dim, in_dim)
        b_idx = out_dim * in_dim + torch.arange(out_dim)[:, None]
        perm = torch.cat([w_idx, b_idx], dim=1).reshape(-1)
        mine = torch.kron(opt.S[m], opt.A[m])
        torch.testing.assert_close(mine, block[perm][:, perm], rtol=1e-10, atol=1e-12)
        start += size


def _bn_net(scale: float) -> torch.nn.Module:
    torch.manual_seed(3)
    cfg = ModelConfig(width=16, depth=2, norm="batch", norm_init_scale=scale)
    return build_model(cfg, (10,), 4).double()


@pytest.mark.parametrize("name", ["kfac", "sgd"])
def test_angular_update_under_rescaling(name):
    # §5.2: the same BN network at weight scale 1 and 10 computes the same function. K-FAC (without
    # damping) turns every BN-fed weight by the same angle in both; SGD's angle shrinks by 10^2.
    torch.manual_seed(4)
    x, y = torch.randn(256, 10, dtype=torch.float64), torch.randint(0, 4, (256,))
    angles = {}
    for scale in (1.0, 10.0):
        model = _bn_net(scale)
        opt = Optimizer(OptimConfig(name=name, lr=0.05), model, 1, KFACConfig(damping=0.0, fisher="exact"))
        before = [wl.module.weight.detach().clone() for wl in model.weight_layers if wl.invariance]
        out = model(x)
        opt.zero_grad()
        opt.observe(out)
        F.cross_entropy(out, y).backward()
        opt.step()
        after = [wl.module.weight.detach() for wl in model.weight_layers if wl.invariance]
        angles[scale] = torch.stack(
            [(a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)).norm() for a, b in zip(after, before)]
        )
    ratio = angles[10.0] / angles[1.0]
    expected = 1.0 if name == "kfac" else 0.01
    torch.testing.assert_close(ratio, torch.full_like(ratio, expected), rtol=1e-4 if name == "kfac" else 2e-2, atol=0)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_coupled_and_decoupled(mode):
    # l2: lambda w joins the gradient before preconditioning; decoupled: w shrinks by lr * lambda and
    # the preconditioned gradient step is the same as without decay (Grosse ch. 5, Eq. 27).
    torch.manual_seed(5)
    x = torch.randn(32, 6, dtype=torch.float64)
    lam, lr = 0.1, 0.5

    def run(wd: float):
        torch.manual_seed(6)
        model = build_model(ModelConfig(width=8, depth=1), (6,), 3).double()
        w0 = model.out.weight.detach().clone()
        opt = Optimizer(
            OptimConfig(name="kfac", lr=lr, weight_decay=wd, wd_mode=mode), model, 1, KFACConfig(fisher="exact")
        )
        out = model(x)
        opt.zero_grad()
        opt.observe(out)
        out.square().mean().backward()
        grad = model.out.weight.grad.clone()
        opt.step()
        return w0, grad, model.out.weight.detach(), opt.opt

    w0, grad, plain, _ = run(0.0)
    _, _, decayed, kfac = run(lam)
    if mode == "decoupled":
        torch.testing.assert_close(decayed, plain - lr * lam * w0, rtol=1e-12, atol=1e-14)
    else:
        m = kfac.layers[-1]
        G = torch.cat([grad + lam * w0, m.bias.grad.unsqueeze(1)], dim=1)  # the bias is not decayed
        step = kfac._precondition(m, G)[:, :-1]
        torch.testing.assert_close(decayed, w0 - lr * step, rtol=1e-12, atol=1e-14)
        assert not torch.allclose(decayed, plain - lr * lam * w0)


def _tiny_relu_net(depth=2, width=6, activation="relu"):
    from normlab.engine.models import build_model
    from normlab.engine.spec import ModelConfig

    torch.manual_seed(3)
    net = build_model(ModelConfig(width=width, depth=depth, norm="none", bias="false", activation=activation), (5,), 3)
    net = net.double().eval()
    with torch.no_grad():
        net.out.bias.zero_()
    return net, [wl.module.weight.detach() for wl in net.weight_layers]


def test_the_bias_free_mlp_of_the_norm_identities_is_the_models_function():
    from normlab.experiments.kfac import _mlp

    net, weights = _tiny_relu_net()
    x = torch.randn(9, 5, dtype=torch.float64)
    torch.testing.assert_close(_mlp(weights, x, torch.relu), net(x))


def test_kronecker_block_norm_against_per_example_jacobians():
    """sum_l tr(S_l W_l A_l W_l^T) with S_l = E[B_l^T B_l], B_l = d f / d z_l, each B_l from
    torch.autograd.functional.jacobian one example at a time."""
    from normlab.experiments.kfac import kronecker_block_norm

    net, weights = _tiny_relu_net()
    x = torch.randn(7, 5, dtype=torch.float64)
    expected, h = 0.0, x
    for i, w in enumerate(weights):
        z = h @ w.T

        def rest(zi, i=i):
            out = zi
            for j, w2 in enumerate(weights[i + 1 :]):
                out = torch.relu(out) @ w2.T
            return out

        bs = torch.stack([torch.autograd.functional.jacobian(rest, z[n]) for n in range(len(x))])
        a_cov = h.T @ h / len(x)
        s_cov = sum(b.T @ b for b in bs) / len(x)
        expected += float(torch.trace(s_cov @ w @ a_cov @ w.T))
        h = torch.relu(z)
    assert kronecker_block_norm(weights, x, torch.relu) == pytest.approx(expected, rel=1e-12)


def test_gauss_newton_block_and_fisher_norms_follow_homogeneity():
    from normlab.experiments.kfac import gn_norm_identity

    rows = gn_norm_identity([1, 2], width=12, seeds=[0], examples=40)
    for col in ("rel_err", "block_rel_err", "kron_linear_rel_err", "fisher_rel_err"):
        assert (rows[col] < 1e-12).all(), col
    np.testing.assert_allclose(rows["block_norm_sq"] * (rows["depth"] + 1), rows["gn_norm_sq"], rtol=1e-12)
    assert (rows["fisher_over_gn"] < 1).all()  # the softmax weights the logits' spread down
