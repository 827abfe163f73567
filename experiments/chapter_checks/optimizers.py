"""§2 and §2.1: the optimizers' arithmetic (EMA windows, bias correction, heavy ball against Adam,
the Fisher against Gauss-Newton, the rank and batch dependence of the empirical Fisher)."""

from __future__ import annotations

from itertools import combinations
import math

import torch

from .config import ChecksConfig
from .linalg import D64, flat_grad, gen, mlp_forward, randn, rel, row, tiny_mlp


# §2: the optimizers' arithmetic.


def check_ema_age(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for beta in (0.9, 0.99, 0.999):
        steps = int(60 / (1 - beta))  # beta^steps < 1e-26: the truncated tail is far below the tolerance
        s_age = s_one = 0.0
        for t in range(1, steps + 1):  # the recursion itself, fed each step's age and a constant 1
            age = steps - t + 1
            s_age = beta * s_age + (1 - beta) * age
            s_one = beta * s_one + (1 - beta) * 1.0
        mean_age = s_age / s_one
        window = 1 / (1 - beta)
        rows.append(row("ema_age", seed, abs(mean_age - window) / window, f"beta {beta}", reference=mean_age))
    return rows


def check_bias_correction(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 1)
    grad = randn(g, 20) * torch.logspace(-3, 1, 20, dtype=D64)
    lr, eps, betas = 1e-3, 1e-8, (0.9, 0.999)
    w = torch.zeros(20, dtype=D64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, betas=betas, eps=eps)
    expected = -lr * grad / (grad.abs() + eps)
    worst = 0.0
    for _ in range(50):
        before = w.detach().clone()
        w.grad = grad.clone()
        opt.step()
        worst = max(worst, rel(w.detach() - before, expected))
    # without the corrections the first step would be (1 - b1) g / (sqrt(1 - b2) |g|): 3.16 alpha, not alpha
    first_uncorrected = (1 - betas[0]) / math.sqrt(1 - betas[1])
    return [row("bias_correction", seed, worst, "steps 1-50", uncorrected_first_step_ratio=first_uncorrected)]


def check_terminal_velocity(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 2)
    grad = randn(g, 10)
    lr, beta = 0.01, 0.9
    w = torch.zeros(10, dtype=D64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=lr, momentum=beta)
    v = torch.zeros(10, dtype=D64, requires_grad=True)
    adam = torch.optim.Adam([v], lr=lr, eps=1e-12)
    worst = 0.0
    for k in range(1, 201):
        before, vb = w.detach().clone(), v.detach().clone()
        w.grad, v.grad = grad.clone(), grad.clone()
        opt.step()
        adam.step()
        worst = max(worst, rel(w.detach() - before, -lr * grad * (1 - beta**k) / (1 - beta)))
    ratio = float((w.detach() - before).abs().mean() / (v.detach() - vb).abs().mean())
    return [row("terminal_velocity", seed, worst, "steps 1-200", heavy_over_adam_at_200=ratio)]


def check_fisher_ggn(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 3)
    n, classes = 12, 3
    params = tiny_mlp(g, [4, 5, classes])
    x = randn(g, n, 4)
    logits = mlp_forward(params, x)
    probs = logits.softmax(1).detach()
    fisher = ggn = 0.0
    for i in range(n):
        logp = logits[i].log_softmax(0)
        for c in range(classes):  # the expectation over the model's own labels, exactly
            gc = flat_grad(logp[c], params, retain_graph=True)
            fisher = fisher + probs[i, c] * torch.outer(gc, gc) / n
        jac = torch.stack([flat_grad(logits[i, c], params, retain_graph=True) for c in range(classes)])
        p = probs[i]
        ggn = ggn + jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac / n
    return [row("fisher_ggn", seed, rel(fisher, ggn), f"{n} examples, {classes} classes")]


def check_ema_rank(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 4)
    x, y = randn(g, 30, 6), (torch.rand(30, generator=g) * 3).long()
    w = (0.1 * randn(g, 3, 6)).requires_grad_()
    ema, beta = torch.zeros(18, 18, dtype=D64), 0.9
    ranks = []
    for _ in range(10):
        grad = torch.autograd.grad(torch.nn.functional.cross_entropy(x @ w.T, y), w)[0].reshape(-1)
        ema = beta * ema + (1 - beta) * torch.outer(grad, grad)
        sv = torch.linalg.svdvals(ema)
        ranks.append(int((sv > 1e-10 * sv[0]).sum()))
        with torch.no_grad():
            w -= 0.5 * grad.reshape(3, 6)
    return [row("ema_rank", seed, ranks[-1], "10 steps", rank_after_one=ranks[0])]


def _per_example_grads(params, x, y) -> torch.Tensor:
    logits = mlp_forward(params, x)
    losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    return torch.stack([flat_grad(losses[i], params, retain_graph=True) for i in range(len(x))])


def check_batch_ef(cfg: ChecksConfig, seed: int) -> list[dict]:
    g = gen(seed, 5)
    n, classes = cfg.problem.examples, 3
    params = tiny_mlp(g, [3, 4, classes])
    x = randn(g, n, 3)
    with torch.no_grad():  # labels drawn from the model: the regime where the EF is near the Fisher
        y = torch.multinomial(mlp_forward(params, x).softmax(1), 1, generator=g).squeeze(1)
    per = _per_example_grads(params, x, y)
    mean = per.mean(0)
    cov = (per - mean).T @ (per - mean) / n
    logits = mlp_forward(params, x)
    probs = logits.softmax(1).detach()
    fisher = 0.0
    for i in range(n):
        logp = logits[i].log_softmax(0)
        for c in range(classes):
            gc = flat_grad(logp[c], params, retain_graph=True)
            fisher = fisher + probs[i, c] * torch.outer(gc, gc) / n
    rows, dists = [], []
    for b in range(1, n + 1):
        total, count = 0.0, 0
        for idx in combinations(range(n), b):
            sel = list(idx)
            loss = torch.nn.functional.cross_entropy(mlp_forward(params, x[sel]), y[sel])
            gb = flat_grad(loss, params)
            total, count = total + torch.outer(gb, gb), count + 1
        expected = total / count
        closed = torch.outer(mean, mean) + (n - b) / (b * (n - 1)) * cov
        rows.append(row("batch_ef_formula", seed, rel(closed, expected), f"B {b}"))
        dists.append(rel(expected, fisher))
    increments = [b2 - b1 for b1, b2 in zip(dists, dists[1:])]
    rows.append(row("batch_ef_drift", seed, min(increments), f"B 1-{n}", distance_b1=dists[0], distance_bn=dists[-1]))
    rows.append(row("batch_ef_ends", seed, dists[-1] / dists[0], f"B {n} against B 1"))
    return rows


def check_ef_power(cfg: ChecksConfig, seed: int) -> list[dict]:
    """Eq. 3's preconditioner built from the gradients themselves (full batch: F_emp is the moving average
    of g g^T; its diagonal is what Adam keeps): multiply every gradient by c and the F_emp^-1 step shrinks
    by exactly 1/c, while the F_emp^-1/2 step does not change."""
    g = gen(seed, 6)
    grads = randn(g, 30, 8)  # a stream of gradients; the moving average of their squares, as Adam's s
    beta, worst_inv, worst_sqrt = 0.9, 0.0, 0.0
    for c in (0.01, 100.0):
        s1 = sc = torch.zeros(8, dtype=D64)
        for k in range(30):
            s1 = beta * s1 + (1 - beta) * grads[k] ** 2
            sc = beta * sc + (1 - beta) * (c * grads[k]) ** 2
        inv1, invc = grads[-1] / s1, c * grads[-1] / sc
        sqrt1, sqrtc = grads[-1] / s1.sqrt(), c * grads[-1] / sc.sqrt()
        worst_inv = max(worst_inv, rel(c * invc, inv1))
        worst_sqrt = max(worst_sqrt, rel(sqrtc, sqrt1))
    return [row("ef_power", seed, max(worst_inv, worst_sqrt), "c 0.01 and 100, 8 coordinates")]
