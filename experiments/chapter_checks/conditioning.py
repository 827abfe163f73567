"""§3, §3.1 and §3.2: the uncentered outlier, its preconditioners, and invariance to affine maps."""

from __future__ import annotations

import math

import torch

from .config import ChecksConfig
from .linalg import D64, exact_moments, gen, randn, rel, row, uncentered, vec


# §3 and §3.1: the uncentered regression Hessian and its preconditioners.


def _regression_hessian(x: torch.Tensor, homogeneous: bool) -> torch.Tensor:
    """autograd's Hessian of (1/2N) sum (w.x + b - t)^2 in (w, b) (or w alone): independent of any
    closed form for E[phi phi^T]."""
    n, d = x.shape
    t = torch.zeros(n, dtype=D64)

    def loss(theta):
        pred = x @ theta[:d] + (theta[d] if homogeneous else 0.0)
        return 0.5 * (pred - t).pow(2).mean()

    theta = torch.zeros(d + int(homogeneous), dtype=D64)
    return torch.autograd.functional.hessian(loss, theta, vectorize=True)


def _outlier_closed_form(r: float, homogeneous: bool) -> float:
    return (2 + r + math.sqrt(r * r + 4 * r)) / 2 if homogeneous else 1 + r


def check_regression_outlier(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for d in cfg.problem.dims:
        g = gen(seed, 10 + d)
        m, x = uncentered(g, d, cfg.problem.mean_entry)
        r = float(m @ m)
        for homogeneous in (False, True):
            top = float(torch.linalg.eigvalsh(_regression_hessian(x, homogeneous))[-1])
            ref = _outlier_closed_form(r, homogeneous)
            case = f"D {d}, {'with' if homogeneous else 'without'} homogeneous coordinate"
            rows.append(row("regression_outlier", seed, abs(top - ref) / ref, case, dim=d, top=top, reference=ref))
    return rows


def _toeplitz(d: int, rho: float) -> torch.Tensor:
    i = torch.arange(d, dtype=D64)
    return rho ** (i[:, None] - i[None, :]).abs()


def check_standardize(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for d in cfg.problem.dims:
        g = gen(seed, 20 + d)
        corr = _toeplitz(d, cfg.problem.correlation)
        scale = torch.exp(torch.empty(d, dtype=D64).uniform_(math.log(0.1), math.log(10), generator=g))
        cov_sqrt = torch.diag(scale) @ torch.linalg.cholesky(corr)
        m = torch.full((d,), cfg.problem.mean_entry, dtype=D64)
        x = exact_moments(g, 2 * d + 10, m, cov_sqrt)
        raw = torch.linalg.eigvalsh(_regression_hessian(x, True))
        z = (x - x.mean(0)) / x.std(0, unbiased=False)
        std = torch.linalg.eigvalsh(_regression_hessian(z, True))
        # the standardized Hessian is blockdiag(correlation, 1): its spectrum is the correlation's plus a 1
        ref = torch.sort(torch.cat([torch.linalg.eigvalsh(corr), torch.ones(1, dtype=D64)])).values
        rows.append(
            row(
                "standardize", seed, float(std[-1] / std[0]), f"D {d}", dim=d,
                spectrum_error=rel(std, ref), raw_condition=float(raw[-1] / raw[0]),
            )
        )  # fmt: skip
    return rows


def check_kfac_a_outlier(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 30)
    d, outputs = 100, 10
    m, a = uncentered(g, d, cfg.problem.mean_entry, 4 * d)
    a_bar = torch.cat([a, torch.ones(len(a), 1, dtype=D64)], 1)
    factor_a = a_bar.T @ a_bar / len(a)
    ev, evec = torch.linalg.eigh(factor_a)
    nu = _outlier_closed_form(float(m @ m), True)
    count = int((ev > 2).sum())
    err_a = abs(float(ev[-1]) - nu) / nu + abs(count - 1)
    q = randn(g, outputs, outputs)
    factor_s = q @ q.T / outputs + 0.1 * torch.eye(outputs, dtype=D64)
    lam = torch.linalg.eigvalsh(factor_s)
    kron_ev, kron_vec = torch.linalg.eigh(torch.kron(factor_a, factor_s))
    products = torch.sort(torch.outer(ev, lam).reshape(-1)).values
    err_k = rel(kron_ev, products)
    # the top eigenvector of A (x) S is the outlier's (a~ direction) (x) S's top eigenvector
    expected = torch.kron(evec[:, -1], torch.linalg.eigh(factor_s)[1][:, -1])
    err_k = max(err_k, 1 - float((kron_vec[:, -1] @ expected).abs()))
    above = int((ev[-1] * lam > ev[-2] * lam[-1]).sum())
    m_share = float((evec[:d, -1] @ m / m.norm()) ** 2 / (evec[:, -1] @ evec[:, -1]))
    return [
        row("kfac_a_outlier", seed, max(err_a, err_k), f"D {d}, M {outputs}", outliers=count, nu=float(ev[-1]),
             chapter_nu=1 + float(m @ m), m_share_of_top=m_share,
             products_above_the_rest=above)
    ]  # fmt: skip


def check_eq10_step(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 40)
    n, d, k = 64, 6, 3
    var = torch.exp(randn(g, d))
    m = 1.0 + randn(g, d)
    a = randn(g, n, d) * var.sqrt() + m
    y = (torch.rand(n, generator=g) * k).long()
    w, b = randn(g, k, d) / math.sqrt(d), 0.1 * randn(g, k)
    lr = 0.1
    # (a) the step in centered coordinates (Eqs. 7-9), by autograd through the reparameterized forward pass
    w_t = (w * var.sqrt()).requires_grad_()
    b_t = (b + w @ m).requires_grad_()
    a_t = (a - m) / var.sqrt()
    loss = torch.nn.functional.cross_entropy(a_t @ w_t.T + b_t, y)
    gw_t, gb_t = torch.autograd.grad(loss, [w_t, b_t])
    w_new = (w_t - lr * gw_t).detach() / var.sqrt()
    b_new = (b_t - lr * gb_t).detach() - w_new @ m
    centered = torch.cat([vec(w_new), b_new])
    # (b) the step in the original coordinates, preconditioned by R R^T built from Eq. 10's R^-1
    w0, b0 = w.clone().requires_grad_(), b.clone().requires_grad_()
    gw, gb = torch.autograd.grad(torch.nn.functional.cross_entropy(a @ w0.T + b0, y), [w0, b0])
    eye = torch.eye(k, dtype=D64)
    r_inv = torch.zeros(d * k + k, d * k + k, dtype=D64)
    r_inv[: d * k, : d * k] = torch.kron(torch.diag(var.sqrt()), eye)
    r_inv[d * k :, : d * k] = torch.kron(m[None, :], eye)
    r_inv[d * k :, d * k :] = eye
    r = torch.linalg.inv(r_inv)
    rrt = r @ r.T
    pre = torch.cat([vec(w), b]) - lr * rrt @ torch.cat([vec(gw), gb])
    step_err = rel(centered, pre)
    eq10 = torch.zeros_like(rrt)
    eq10[: d * k, : d * k] = torch.kron(torch.diag(var) + torch.outer(m, m), eye)
    eq10[: d * k, d * k :] = torch.kron(m[:, None], eye)
    eq10[d * k :, : d * k] = torch.kron(m[None, :], eye)
    eq10[d * k :, d * k :] = eye
    inv_err = rel(torch.linalg.inv(rrt), eq10)
    # quasi-diagonal: weight W_ij (index j*k + i) may couple only with itself and with its unit's bias b_i
    allowed = torch.eye(d * k + k, dtype=torch.bool)
    for j in range(d):
        for i in range(k):
            allowed[j * k + i, d * k + i] = allowed[d * k + i, j * k + i] = True
    outside = float(rrt[~allowed].abs().max() / rrt.abs().max())
    return [
        row("eq10_step", seed, max(step_err, inv_err, outside), f"D {d}, {k} units", step_error=step_err,
             inverse_error=inv_err, outside_pattern=outside)
    ]  # fmt: skip


def check_preconditioners(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for d in cfg.problem.dims:
        g = gen(seed, 50 + d)
        m, x = uncentered(g, d, cfg.problem.mean_entry)
        h = _regression_hessian(x, True)
        top = float(torch.linalg.eigvalsh(h)[-1])
        dg = torch.diagonal(h).rsqrt()
        diag_pre = torch.linalg.eigvalsh(dg[:, None] * h * dg[None, :])
        r_inv = torch.eye(d + 1, dtype=D64)  # Eq. 10's R^-1 with Sigma = I, the weights first, the bias last
        r_inv[d, :d] = m
        r = torch.linalg.inv(r_inv)
        quasi = torch.linalg.eigvalsh(r.T @ h @ r)
        case = f"D {d}"
        rows.append(
            row("diag_keeps", seed, float(diag_pre[-1]) / top, case, dim=d, top=top, diag_top=float(diag_pre[-1]),
                 diag_entry=float(torch.diagonal(h)[0]), outliers_left=int((diag_pre > 2).sum()))
        )  # fmt: skip
        rows.append(row("quasi_removes", seed, float((quasi - 1).abs().max()), case, dim=d, quasi_top=float(quasi[-1])))
    return rows


# §3.2: invariance to affine reparameterizations.


def _two_layer(params, x, maps=None):
    """s1 = W1 a0 + b1, a1 = tanh(s1), s2 = W2 a1 + b2. With `maps` [(U, c, V, d)] per layer, each layer
    reads U a + c and its output passes through V s + d (Fig. 3's Net 2); returns (output, [s1, s2])."""
    a, pre = x, []
    for layer in range(2):
        w, b = params[2 * layer], params[2 * layer + 1]
        if maps:
            u, c, v, dd = maps[layer]
            s_check = (a @ u.T + c) @ w.T + b
            pre.append(s_check)
            s = s_check @ v.T + dd
        else:
            s = a @ w.T + b
            pre.append(s)
        a = torch.tanh(s) if layer == 0 else s
    return a, pre


def _kfac_step(params, x, t, maps, lr, damping=0.0):
    """One K-FAC step with homogeneous coordinates: A = E[a a^T], S = E[g g^T] from per-example
    pseudo-gradients of the squared error at each layer's own pre-activations, step S^-1 grad A^-1."""
    out, pre = _two_layer(params, x, maps)
    n = len(x)
    loss = 0.5 * (out - t).pow(2).sum(1).mean()
    grads = torch.autograd.grad(loss, params + pre)
    new = []
    a = x
    for layer in range(2):
        if maps:
            u, c, _, _ = maps[layer]
            a_in = a @ u.T + c
        else:
            a_in = a
        a_bar = torch.cat([a_in, torch.ones(n, 1, dtype=D64)], 1).detach()
        gs = grads[4 + layer] * n
        fa = a_bar.T @ a_bar / n + damping * torch.eye(a_bar.shape[1], dtype=D64)
        fs = gs.T @ gs / n + damping * torch.eye(gs.shape[1], dtype=D64)
        grad_bar = torch.cat([grads[2 * layer], grads[2 * layer + 1][:, None]], 1)
        step = torch.linalg.solve(fs, grad_bar) @ torch.linalg.inv(fa)
        new += [(params[2 * layer] - lr * step[:, :-1]).detach(), (params[2 * layer + 1] - lr * step[:, -1]).detach()]
        s_out = pre[layer] if not maps else pre[layer] @ maps[layer][2].T + maps[layer][3]
        a = torch.tanh(s_out).detach() if layer == 0 else None
    return new


def _sgd_step(params, x, t, maps, lr):
    out, _ = _two_layer(params, x, maps)
    grads = torch.autograd.grad(0.5 * (out - t).pow(2).sum(1).mean(), params)
    return [(p - lr * q).detach() for p, q in zip(params, grads)]


def _affine_instance(seed: int):
    g = gen(seed, 60)
    dims, n = [4, 5, 3], 40
    x = randn(g, n, dims[0]) + 1.0
    t = randn(g, n, dims[2])
    params = [randn(g, dims[1], dims[0]) / 2, 0.1 * randn(g, dims[1]), randn(g, dims[2], dims[1]) / 2,
              0.1 * randn(g, dims[2])]  # fmt: skip

    def invertible(k):
        q = torch.linalg.qr(randn(g, k, k))[0]
        return q @ torch.diag(torch.exp(0.5 * randn(g, k)))

    maps = [(invertible(dims[i]), randn(g, dims[i]), invertible(dims[i + 1]), randn(g, dims[i + 1])) for i in range(2)]
    # Net 2's parameters that compute Net 1's function: V (W~ (U a + c) + b~) + d = W a + b
    tilde = []
    for layer, (u, c, v, dd) in enumerate(maps):
        w, b = params[2 * layer], params[2 * layer + 1]
        w_t = torch.linalg.solve(v, w) @ torch.linalg.inv(u)
        tilde += [w_t, torch.linalg.solve(v, b - dd) - w_t @ c]
    return x, t, params, maps, tilde


def _net_function(params, x, maps=None) -> torch.Tensor:
    with torch.no_grad():
        return _two_layer(params, x, maps)[0]


def check_affine(cfg: ChecksConfig, seed: int) -> list[dict]:
    x, t, params, maps, tilde = _affine_instance(seed)
    f0 = _net_function(params, x)
    start = rel(_net_function(tilde, x, maps), f0)  # the two nets agree before the step
    rows = []
    for check, stepper, lr in (("kfac_affine", _kfac_step, 0.1), ("sgd_affine", _sgd_step, 0.1)):
        p1 = stepper([p.clone().requires_grad_() for p in params], x, t, None, lr)
        p2 = stepper([p.clone().requires_grad_() for p in tilde], x, t, maps, lr)
        f1, f2 = _net_function(p1, x), _net_function(p2, x, maps)
        rows.append(row(check, seed, float((f1 - f2).norm() / (f1 - f0).norm()), "2 layers", before_step=start))
    return rows


def _quasi_diagonal_step(a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Ollivier's quasi-diagonal step for one unit: the metric M = E[a~ a~^T] (a~ = (1, a)) keeps its
    diagonal and its bias row and column; each weight's 2x2 system with the bias is solved exactly."""
    n = len(a)
    a_bar = torch.cat([torch.ones(n, 1, dtype=D64), a], 1)
    metric = a_bar.T @ a_bar / n
    m00, m0i, mii = metric[0, 0], metric[0, 1:], torch.diagonal(metric)[1:]
    g0, gi = grad[0], grad[1:]
    di = (gi * m00 - g0 * m0i) / (mii * m00 - m0i**2)
    d0 = (g0 - (m0i * di).sum()) / m00
    return torch.cat([d0[None], di])


def check_quasi_invariant(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 70)
    n, d = 50, 6
    a = randn(g, n, d) * torch.exp(randn(g, d)) + 2 * randn(g, d)
    t = randn(g, n)
    theta = 0.3 * randn(g, d + 1)  # (bias, weights)
    s, c = torch.exp(randn(g, d)), randn(g, d)

    def fn_change(inputs, params, diagonal):
        params = params.clone().requires_grad_()
        pred = params[0] + inputs @ params[1:]
        grad = torch.autograd.grad(0.5 * (pred - t).pow(2).mean(), params)[0]
        if diagonal:
            a_bar = torch.cat([torch.ones(n, 1, dtype=D64), inputs], 1)
            step = grad / a_bar.pow(2).mean(0)
        else:
            step = _quasi_diagonal_step(inputs, grad)
        new = params.detach() - 0.5 * step
        return (new[0] + inputs @ new[1:]) - (params[0] + inputs @ params[1:]).detach()

    mapped = a * s + c
    # the same function on the mapped inputs: w' = w / s, b' = b - w'. c
    theta2 = torch.cat([(theta[0] - (theta[1:] / s) @ c)[None], theta[1:] / s])
    out = {}
    for name, diagonal in (("quasi", False), ("diagonal", True)):
        out[name] = rel(fn_change(mapped, theta2, diagonal), fn_change(a, theta, diagonal))
    return [row("quasi_invariant", seed, out["quasi"], f"D {d}", diagonal_change=out["diagonal"])]
