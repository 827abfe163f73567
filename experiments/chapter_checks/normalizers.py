"""§4, §4.2 and §4.4: BN's two backward paths, what a BN-fed or LN-fed layer ignores, AlexNet's LRN."""

from __future__ import annotations

import math

import torch

from .config import ChecksConfig
from .linalg import D64, bn, gen, ln, randn, rel, row, uncentered


# §4: BN's paths, what a BN-fed or LN-fed layer ignores, and AlexNet's normalizer.


def check_bn_paths(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 80)
    x = (randn(g, 32, 5) * 3 + 1).requires_grad_()
    upstream = randn(g, 32, 5)
    mu, sigma = x.mean(0), (x - x.mean(0)).pow(2).mean(0).sqrt()
    direct = torch.autograd.grad(((x - mu.detach()) / sigma.detach() * upstream).sum(), x)[0]
    full = torch.autograd.grad((bn(x) * upstream).sum(), x)[0]
    xt = ((x - mu) / sigma).detach()
    eq12 = upstream / sigma.detach()
    stats = -(upstream.mean(0) + xt * (upstream * xt).mean(0)) / sigma.detach()
    return [row("bn_paths", seed, max(rel(direct, eq12), rel(full, eq12 + stats)), "N 32, 5 units")]


def check_bn_layer(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 90)
    a = torch.relu(randn(g, 64, 8)) + 0.5
    w = randn(g, 6, 8)

    def f(inputs):
        return torch.relu(bn(inputs @ w.T))

    base = f(a)
    s, m = float(torch.exp(randn(g, 1))), randn(g, 8)
    unit = torch.exp(torch.empty(8, dtype=D64).uniform_(math.log(0.5), math.log(2), generator=g))
    return [
        row("bn_shift_scale", seed, rel(f(s * a + m), base), f"s {s:.3g}"),
        row("bn_unitwise", seed, rel(f(a * unit), base), "per-unit factors in [0.5, 2]"),
    ]


def check_bn_mean_step(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for d in cfg.problem.dims:
        g = gen(seed, 100 + d)
        m, a = uncentered(g, d, cfg.problem.mean_entry)
        w, v = randn(g, 5, d) / math.sqrt(d), randn(g, 5)
        dw = 0.5 * torch.outer(v, m / m.norm())
        dz = a @ dw.T
        common = dz.mean(0, keepdim=True).expand_as(dz)
        share = float(common.pow(2).sum() / dz.pow(2).sum())
        r = float(m @ m)
        err_share = abs(share - r / (1 + r)) / (r / (1 + r))
        z = a @ w.T
        err_bn = rel(bn(z + dz - common), bn(z + dz))
        rows.append(row("bn_mean_step", seed, max(err_share, err_bn), f"D {d}", dim=d, common_share=share))
    return rows


def check_ln(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 110)
    a = torch.relu(randn(g, 32, 8))
    w = randn(g, 6, 8).requires_grad_()
    t = randn(g, 32, 6)
    base = ln(a @ w.T)
    scaled = ln(a @ (3.7 * w).T)
    unit = torch.exp(torch.empty(6, 1, dtype=D64).uniform_(math.log(0.5), math.log(2), generator=g))
    per_unit = ln(a @ (unit * w).T)
    grad = torch.autograd.grad(0.5 * (ln(a @ w.T) - t).pow(2).sum(), w)[0]
    w = w.detach()
    trace = float((w * grad).sum().abs() / (w.norm() * grad.norm()))
    unit_cos = float(((w * grad).sum(1).abs() / (w.norm(dim=1) * grad.norm(dim=1))).max())
    return [
        row("ln_matrix", seed, max(rel(scaled, base), trace), "gamma 3.7"),
        row("ln_unit", seed, rel(per_unit, base), "per-unit factors", max_unit_cos=unit_cos),
    ]


def check_lrn(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 120)
    a = randn(g, 8, 16, 6, 6)  # (batch, channels, height, width): unit-variance activations
    lrn = torch.nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
    pure = torch.nn.LocalResponseNorm(size=5, alpha=1.0, beta=0.5, k=0.0)  # k = 0, beta = 1/2: invariant
    return [
        row("lrn_scale", seed, rel(lrn(2 * a), lrn(a)), "AlexNet constants, gamma 2",
             k0_change=rel(pure(2 * a), pure(a)))
    ]  # fmt: skip


def check_bn_centering(cfg: ChecksConfig, seed: int) -> list[dict]:
    """Which placement centers the next layer's inputs: BN after the ReLU hands it zero-mean columns;
    BN before it hands it relu of a standardized column, whose mean is positive."""
    g = gen(seed, 180)
    z = randn(g, 64, 8) * torch.exp(randn(g, 8)) + randn(g, 8)
    after = bn(torch.relu(z))
    before = torch.relu(bn(z))
    share = lambda x: (x.mean(0).abs() / x.std(0, unbiased=False)).max()  # noqa: E731
    least = float((before.mean(0) / before.std(0, unbiased=False)).min())
    return [
        row("bn_after_centers", seed, float(share(after)), "BN after the ReLU"),
        row("bn_before_uncentered", seed, least, "BN before the ReLU"),
    ]


def check_ln_batch(cfg: ChecksConfig, seed: int) -> list[dict]:
    """LN normalizes each example by its own statistics: replacing its batch-mates changes nothing.
    BN's statistics are the batch's, so the same replacement changes every output."""
    g = gen(seed, 190)
    x, others = randn(g, 16, 8) + 1, randn(g, 16, 8) * 2 - 1
    mixed = torch.cat([x[:8], others[8:]])
    return [
        row("ln_batch", seed, rel(ln(mixed)[:8], ln(x)[:8]), "8 of 16 examples replaced"),
        row("bn_batch", seed, rel(bn(mixed)[:8], bn(x)[:8]), "8 of 16 examples replaced"),
    ]


def check_ln_shift(cfg: ChecksConfig, seed: int) -> list[dict]:
    """The shift a step along v (x) m gives every example, Z -> Z + 1 v^T: LN subtracts each example's
    mean over units, so it cancels the shift only when v is constant across units."""
    g = gen(seed, 200)
    z = randn(g, 32, 8)
    v = randn(g, 8)
    v_perp = v - v.mean()  # the part of the shift LN's centering cannot see
    return [
        row("ln_shift", seed, rel(ln(z + v_perp), ln(z)), "v orthogonal to 1",
            constant_shift_change=rel(ln(z + v.mean()), ln(z)))
    ]  # fmt: skip


def _bn_net_unit(g: torch.Generator):
    return [randn(g, 8, 6) / math.sqrt(6), randn(g, 3, 8) / math.sqrt(8)]


def _unit_forward(ws, x):
    return torch.relu(bn(x @ ws[0].T)) @ ws[1].T


def check_renorm(cfg: ChecksConfig, seed: int) -> list[dict]:
    """Renormalizing each BN-fed unit's incoming weights to unit norm keeps the function (§4.3's third
    option), and a step at unit norm has effective learning rate alpha / ||w||^2 = alpha."""
    g = gen(seed, 210)
    ws = _bn_net_unit(g)
    x = randn(g, 32, 6) + 0.5
    unit = [ws[0] * torch.exp(randn(g, 8, 1)), ws[1]]  # unequal norms first
    renormed = [unit[0] / unit[0].norm(dim=1, keepdim=True), unit[1]]
    return [row("renorm", seed, rel(_unit_forward(renormed, x), _unit_forward(unit, x)), "8 units")]


def check_exp_lr(cfg: ChecksConfig, seed: int) -> list[dict]:
    """A constant effective learning rate eta needs alpha_k = eta ||w_k||^2, and then Eq. 19 makes
    ||w||^2 grow by the factor 1 + eta^2 ||grad J(w_hat)||^2 at every step: geometrically, so alpha_k
    grows exponentially. Checked step by step on a BN-fed layer trained by SGD with a per-unit rate."""
    g = gen(seed, 220)
    ws = _bn_net_unit(g)
    x, y = randn(g, 32, 6) + 0.5, (torch.rand(32, generator=g) * 3).long()
    eta, worst = 0.3, 0.0
    w = ws[0].clone()
    start = w.pow(2).sum(1)
    for _ in range(20):
        wr = w.clone().requires_grad_()
        grad = torch.autograd.grad(torch.nn.functional.cross_entropy(_unit_forward([wr, ws[1]], x), y), wr)[0]
        sq = w.pow(2).sum(1, keepdim=True)
        g_hat = grad * sq.sqrt()  # the gradient at the unit-norm point (Eq. 18)
        w = w - eta * sq * grad  # alpha_j = eta ||w_j||^2: effective rate eta for every unit
        predicted = sq.squeeze(1) * (1 + eta**2 * g_hat.pow(2).sum(1))
        worst = max(worst, rel(w.pow(2).sum(1), predicted))
    growth = float((w.pow(2).sum(1) / start).min())
    return [row("exp_lr", seed, worst, "20 steps, 8 units", alpha_growth_over_20_steps=growth)]


def _bn_detached(x: torch.Tensor, mean: bool, var: bool) -> torch.Tensor:
    """Eq. 11 with the batch mean and/or the batch standard deviation detached in backprop: the
    forward pass is BN's; the backward pass drops that part of the statistics path."""
    mu = x.mean(0)
    sigma = (x - mu).pow(2).mean(0).sqrt()
    return (x - (mu.detach() if mean else mu)) / (sigma.detach() if var else sigma)


def check_bn_path_radial(cfg: ChecksConfig, seed: int) -> list[dict]:
    """Which path of BN keeps a unit's gradient orthogonal to its weights (the root of the implicit decay).
    With s = X w, y = (s - mu)/sigma and the upstream gradient y_bar, the direct path alone gives w . grad =
    y_bar . y + mu sum(y_bar) / sigma; the mean path adds -mu sum(y_bar) / sigma and the variance path
    -y_bar . y. Each detached arm's radial part is checked against that closed form."""
    g = gen(seed, 230)
    x = randn(g, 48, 7) + 1.5  # uncentered inputs, so that mu != 0
    w0 = randn(g, 7, 5)
    upstream = randn(g, 48, 5)
    s = x @ w0
    mu, sigma = s.mean(0), (s - s.mean(0)).pow(2).mean(0).sqrt()
    y = (s - mu) / sigma
    direct, mean_part = (upstream * y).sum(0), mu * upstream.sum(0) / sigma
    closed = {  # the radial part w_j . grad_j per unit, by the paths each arm keeps
        (False, False): torch.zeros(5, dtype=D64),
        (True, False): mean_part,  # the mean detached: the variance path cancels y_bar . y only
        (False, True): direct,  # sigma detached: the mean path cancels the mu term only
        (True, True): direct + mean_part,  # the direct path alone
    }
    errors, cosines = [], {}
    for (mean, var), expected in closed.items():
        w = w0.clone().requires_grad_()
        grad = torch.autograd.grad((_bn_detached(x @ w, mean, var) * upstream).sum(), w)[0]
        radial = (w0 * grad).sum(0)
        scale = (w0.norm(dim=0) * grad.norm(dim=0)).clamp_min(1e-300)
        errors.append(float(((radial - expected).abs() / scale).max()))
        cosines[(mean, var)] = float((radial.abs() / scale).max())  # the arm's largest: one unit suffices
    return [
        row("bn_path_radial", seed, max(errors), "4 arms, 5 units", full_bn_cos=cosines[(False, False)]),
        row("bn_path_needed", seed, min(v for k, v in cosines.items() if k != (False, False)), "3 detached arms",
            mean_detached_cos=cosines[(True, False)], var_detached_cos=cosines[(False, True)],
            both_detached_cos=cosines[(True, True)]),
    ]  # fmt: skip
