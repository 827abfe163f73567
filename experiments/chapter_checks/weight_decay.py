"""§5, §5.2 and §5.3: weight decay as L2, AdamW, the Schatten penalty, K-FAC's factors and the C-norm."""

from __future__ import annotations

import math

import torch

from .config import ChecksConfig
from .linalg import D64, bn, flat_grad, gen, randn, rel, row, vec


# §5: weight decay.


def check_wd(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 130)
    x, y = randn(g, 40, 5), (torch.rand(40, generator=g) * 3).long()
    w0 = randn(g, 3, 5)
    lr, lam = 0.1, 0.01

    def cost(w):
        return torch.nn.functional.cross_entropy(x @ w.T, y)

    w = w0.clone().requires_grad_()
    opt = torch.optim.SGD([w], lr=lr, weight_decay=lam)
    w.grad = torch.autograd.grad(cost(w), w)[0]
    opt.step()
    v = w0.clone().requires_grad_()
    penalized = torch.autograd.grad(cost(v) + lam / 2 * v.pow(2).sum(), v)[0]
    grad = torch.autograd.grad(cost(v), v)[0]
    eq22 = (1 - lr * lam) * w0 - lr * grad
    err = max(rel(w.detach(), w0 - lr * penalized), rel(w.detach(), eq22))
    rows = [row("wd_is_l2", seed, err, "one SGD step")]
    # Adam: L2 in the gradient against decoupled decay (Eq. 22, then Adam's own step on grad J)
    lr, lam = 0.01, 0.1
    coupled = w0.clone().requires_grad_()
    decoupled = w0.clone().requires_grad_()
    adamw = w0.clone().requires_grad_()
    o1 = torch.optim.Adam([coupled], lr=lr, weight_decay=lam)
    o2 = torch.optim.Adam([decoupled], lr=lr)
    o3 = torch.optim.AdamW([adamw], lr=lr, weight_decay=lam)
    for _ in range(20):
        for p, o in ((coupled, o1), (adamw, o3)):
            p.grad = torch.autograd.grad(cost(p), p)[0]
            o.step()
        decoupled.grad = torch.autograd.grad(cost(decoupled), decoupled)[0]
        with torch.no_grad():
            decoupled.mul_(1 - lr * lam)
        o2.step()
    rows.append(
        row("adam_l2", seed, rel(coupled.detach(), decoupled.detach()), "20 Adam steps",
             adamw_error=rel(adamw.detach(), decoupled.detach()))
    )  # fmt: skip
    return rows


def check_schatten(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 140)
    rows = []
    out_dim, in_dim = 4, 4
    target = randn(g, out_dim, in_dim)
    sv = torch.linalg.svdvals(target)
    for k in cfg.problem.depths:
        closed = float(k * (sv ** (2 / k)).sum())
        # a random factorization of the target; the free maps T between factors keep the product fixed
        factors = [randn(g, in_dim, in_dim) for _ in range(k - 1)]
        last = target @ torch.linalg.inv(torch.linalg.multi_dot(factors[::-1]) if k > 2 else factors[0])
        base = factors + [last]
        logs = [torch.zeros(in_dim, in_dim, dtype=D64, requires_grad=True) for _ in range(k - 1)]

        def penalty():
            mats = [torch.linalg.matrix_exp(q) for q in logs]  # invertible by construction
            ws = [mats[0] @ base[0]]
            for i in range(1, k - 1):
                ws.append(mats[i] @ base[i] @ torch.linalg.inv(mats[i - 1]))
            ws.append(base[-1] @ torch.linalg.inv(mats[-1]))
            return sum(w.pow(2).sum() for w in ws), ws

        start = float(penalty()[0].detach())
        opt = torch.optim.LBFGS(logs, lr=1, max_iter=2000, tolerance_grad=1e-14, tolerance_change=1e-16,
                                history_size=50, line_search_fn="strong_wolfe")  # fmt: skip

        def closure():
            opt.zero_grad()
            value = penalty()[0]
            value.backward()
            return value

        opt.step(closure)
        value, ws = penalty()
        product = torch.linalg.multi_dot(ws[::-1]) if k > 2 else ws[1] @ ws[0]
        err = abs(float(value.detach()) - closed) / closed + rel(product.detach(), target)
        rows.append(row("schatten", seed, err, f"K {k}", start_ratio=start / closed))
    return rows


def _bn_net(g: torch.Generator):
    """x -> BN(W1 x) -> relu -> BN(W2 .) -> relu -> W3 . (no biases before BN, no affine)."""
    return [randn(g, 8, 6) / math.sqrt(6), randn(g, 7, 8) / math.sqrt(8), randn(g, 3, 7) / math.sqrt(7)]


def _bn_forward(ws, x, keep=None):
    s1 = x @ ws[0].T
    h = torch.relu(bn(s1))
    s2 = h @ ws[1].T
    if keep is not None:
        keep.update(a=h, s=s2)
    return torch.relu(bn(s2)) @ ws[2].T


def check_free_rescale(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 150)
    ws = _bn_net(g)
    x = randn(g, 32, 6) + 0.5
    base = _bn_forward(ws, x)
    rows = []
    for gamma in (1e-3, 1e3):
        out = _bn_forward([gamma * ws[0], gamma * ws[1], ws[2]], x)
        rows.append(row("free_rescale", seed, rel(out, base), f"gamma {gamma:g}", penalty_ratio=gamma**2))
    return rows


def _factors(ws, x, y, gamma):
    """K-FAC's A (homogeneous) and S for layer 2 of the BN net, with its weights scaled by gamma."""
    w2 = (gamma * ws[1]).clone().requires_grad_()
    keep: dict = {}
    out = _bn_forward([ws[0], w2, ws[2]], x, keep)
    loss = torch.nn.functional.cross_entropy(out, y)
    gs = torch.autograd.grad(loss, keep["s"])[0] * len(x)
    a = keep["a"].detach()
    return a.T @ a / len(x), gs.T @ gs / len(x), w2


def check_rescaling_metrics(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 160)
    ws = _bn_net(g)
    x = randn(g, 32, 6) + 0.5
    y = (torch.rand(32, generator=g) * 3).long()
    fa, fs, _ = _factors(ws, x, y, 1.0)
    w = ws[1]
    kfac_norm = float(vec(w) @ torch.kron(fa, fs) @ vec(w))
    rows, errs, norm_errs = [], [], []
    for gamma in (0.1, 10.0):
        fa_g, fs_g, _ = _factors(ws, x, y, gamma)
        errs.append(max(rel(fa_g, fa), rel(gamma**2 * fs_g, fs)))
        wg = gamma * w
        norm_errs.append(abs(float(vec(wg) @ torch.kron(fa_g, fs_g) @ vec(wg)) - kfac_norm) / kfac_norm)
    rows.append(row("g_gamma", seed, max(errs), "gamma 0.1 and 10"))
    # the exact Gauss-Newton block of layer 2: G = J^T H_out J (softmax Hessian), by autograd Jacobians
    w2 = w.clone().requires_grad_()
    out = _bn_forward([ws[0], w2, ws[2]], x)
    probs = out.softmax(1).detach()
    jac = torch.stack([flat_grad(out.reshape(-1)[j], [w2], retain_graph=True) for j in range(out.numel())])
    jac = jac.reshape(len(x), 3, -1)
    ggn = sum(jac[i].T @ (torch.diag(probs[i]) - torch.outer(probs[i], probs[i])) @ jac[i] for i in range(len(x)))
    ggn = ggn / len(x)
    flat = w.reshape(-1)  # autograd's flattening (row-major), matching jac's columns
    ggn_zero = float(flat @ ggn @ flat / (flat @ flat * torch.linalg.matrix_norm(ggn, 2)))
    rows.append(row("cnorm_kfac", seed, max(max(norm_errs), abs(ggn_zero)), "gamma 0.1 and 10", ggn_norm=ggn_zero))
    sgd = [float((gamma * w).pow(2).sum()) for gamma in (0.1, 10.0)]
    rows.append(row("cnorm_sgd", seed, math.log(sgd[1] / sgd[0]) / math.log(100.0), "C = I"))
    return rows


def check_eq27(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 170)
    x, y = randn(g, 40, 4), (torch.rand(40, generator=g) * 3).long()
    w0 = randn(g, 12)
    q = randn(g, 12, 12)
    c = q @ q.T / 12 + 0.5 * torch.eye(12, dtype=D64)
    lr, lam = 0.1, 0.05

    def cost(w):
        return torch.nn.functional.cross_entropy(x @ w.reshape(3, 4).T, y)

    w = w0.clone().requires_grad_()
    grad = torch.autograd.grad(cost(w), w)[0]
    lhs = (1 - lr * lam) * w0 - lr * torch.linalg.solve(c, grad)
    pen = torch.autograd.grad(cost(w) + lam / 2 * w @ c @ w, w)[0]
    rhs = w0 - lr * torch.linalg.solve(c, pen)
    return [row("eq27", seed, rel(lhs, rhs.detach()), "random SPD C")]
