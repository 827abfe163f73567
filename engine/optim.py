"""Optimizers from torch.optim, with explicit weight decay and learning-rate schedules.

Weight decay is either L2-coupled (lambda*w added to the gradient, as in Eq. 22 for SGD) or
decoupled (w shrunk by lr*lambda before the step, as AdamW does). Which parameters get it is a
config choice, never implicit. `renormalize` is the control arm of the implicit-decay
experiment: after each step the incoming weights of every scale-invariant unit are put back on
the unit sphere, so the effective learning rate stays equal to the explicit one.
"""

from __future__ import annotations

import math

import torch

from torch import nn

from .models import Net
from .spec import KFACConfig, OptimConfig


def lr_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Learning rate for the update that follows `step` completed updates."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.step_gamma ** (step // cfg.step_every)
    if cfg.schedule == "inv_sqrt":
        return cfg.lr / math.sqrt(step - cfg.warmup_steps + 1)
    span = max(1, total_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.lr * (1.0 - t)  # linear decay to zero


def _decayed_params(cfg: OptimConfig, model: Net) -> set[int]:
    if cfg.wd_params == "all":
        return {id(p) for p in model.parameters()}
    if cfg.wd_params == "weights":
        return {id(wl.module.weight) for wl in model.weight_layers}
    return {id(wl.module.weight) for wl in model.weight_layers if wl.invariance}


class RootInside(torch.optim.Optimizer):
    """RMSprop (`mode` "rmsprop": s <- beta2 s + (1 - beta2) g^2) or Adagrad ("adagrad": s <- s + g^2) with
    epsilon inside the square root, as Grosse ch. 5, §2 writes them: w <- w - lr g / sqrt(s + eps), with
    RMSprop's heavy-ball momentum on g / sqrt(s + eps) as torch.optim.RMSprop applies it. Coupled weight decay
    (a group's `weight_decay`) is added to the gradient first, as torch's optimizers do."""

    def __init__(self, params, mode: str, lr: float, beta2: float, eps: float, momentum: float):
        super().__init__(params, dict(lr=lr, beta2=beta2, eps=eps, momentum=momentum, weight_decay=0.0))
        self.mode = mode

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["sq"] = torch.zeros_like(p)
                if self.mode == "rmsprop":
                    st["sq"].mul_(group["beta2"]).addcmul_(g, g, value=1 - group["beta2"])
                else:
                    st["sq"].addcmul_(g, g)
                step = g / (st["sq"] + group["eps"]).sqrt()
                if group["momentum"]:
                    buf = st.setdefault("buf", torch.zeros_like(p))
                    step = buf.mul_(group["momentum"]).add_(step)
                p.sub_(step, alpha=group["lr"])


class AdamMoments(torch.optim.Optimizer):
    """Adam whose second moment averages a squared-gradient estimate handed to it before each step
    (`squares`: parameter -> tensor) instead of the batch gradient squared: the mean of the examples' squared
    gradients, or the same with labels sampled from the model (`ExampleSquares`). Everything else is
    torch.optim.Adam's rule: bias-corrected moments, epsilon outside the root, coupled L2 (a group's
    `weight_decay`) added to the gradient of the first moment; the squares come from the loss alone."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0))
        self.squares: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["k"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["k"] += 1
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).add_(self.squares[p], alpha=1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["k"])
                v_hat = st["v"] / (1 - b2 ** st["k"])
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


class ExampleSquares:
    """Per parameter, the mean over a batch's examples of each example's squared loss gradient
    (`per_example`), or of the squared gradient with each example's label drawn from the model's own
    softmax (`fisher`: a one-sample estimate of the Fisher's diagonal), computed with torch.func (the
    examples must not interact: no batch norm, checked by RunConfig). The draws come from a generator
    seeded by the run's seed, so a run repeats exactly."""

    def __init__(self, model: Net, kind: str, seed: int):
        self.model, self.kind = model, kind
        self.named = dict(model.named_parameters())
        self.gen = torch.Generator().manual_seed(1_000_003 * seed + 7)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[torch.Tensor, torch.Tensor]:
        from torch.func import functional_call, grad, vmap
        import torch.nn.functional as F

        model = self.model
        params = {k: v.detach() for k, v in self.named.items()}
        buffers = dict(model.named_buffers())
        if self.kind == "fisher":
            with torch.no_grad():
                probs = torch.softmax(model(x).float(), dim=1).cpu()
            y = torch.multinomial(probs, 1, generator=self.gen).squeeze(1).to(x.device)

        def loss_one(p, xi, yi):
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return F.cross_entropy(out, yi.unsqueeze(0))

        per = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
        return {self.named[k]: (g * g).mean(0) for k, g in per.items()}


def _torch_optimizer(name: str, groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if name in ("adam", "adamw"):  # adamw = adam + decoupled decay, applied by Optimizer.step
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if name in ("rmsprop", "adagrad") and cfg.eps_inside:  # the chapter's rules (RunConfig.check allows only these)
        return RootInside(groups, name, cfg.lr, cfg.beta2, cfg.eps, cfg.momentum if name == "rmsprop" else 0.0)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.beta2, eps=cfg.eps, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)


class Graft:
    """Layerwise grafting M#D (Agarwal et al. 2020): for every parameter tensor, the step has the
    length of optimizer M's step and the direction of optimizer D's,
        w <- w + ||step_M|| / (||step_D|| + eps) * step_D.
    Both optimizers see every gradient and keep their own state. The schedule sets M's learning
    rate (`param_groups` are M's); D's only scales a vector whose length is discarded."""

    def __init__(self, magnitude: torch.optim.Optimizer, direction: torch.optim.Optimizer, eps: float = 1e-16):
        self.magnitude, self.direction, self.eps = magnitude, direction, eps
        self.param_groups = magnitude.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.magnitude.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        start = [p.detach().clone() for p in params]
        self.magnitude.step()
        lengths = [(p - w0).norm() for p, w0 in zip(params, start)]
        for p, w0 in zip(params, start):
            p.copy_(w0)
        self.direction.step()
        for p, w0, length in zip(params, start, lengths):
            d = p - w0
            p.copy_(w0 + d * (length / (d.norm() + self.eps)))


class Optimizer:
    """A torch optimizer plus the schedule, decoupled decay and renormalization around it."""

    def __init__(self, cfg: OptimConfig, model: Net, total_steps: int, kfac: KFACConfig | None = None, seed: int = 0):
        self.cfg, self.total_steps = cfg, total_steps
        decayed_ids = _decayed_params(cfg, model)
        decay = [p for p in model.parameters() if id(p) in decayed_ids]
        rest = [p for p in model.parameters() if id(p) not in decayed_ids]
        self.decoupled = cfg.name == "adamw" or cfg.wd_mode == "decoupled"
        coupled_wd = 0.0 if self.decoupled else cfg.weight_decay
        if cfg.weight_decay:
            groups = [{"params": decay, "weight_decay": coupled_wd}, {"params": rest, "weight_decay": 0.0}]
            groups = [g for g in groups if g["params"]]
        else:  # one group: fewer foreach launches per step
            groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
        self.decay_params = decay
        from .plugins import PLUGIN_OPTIMIZERS

        if cfg.name in PLUGIN_OPTIMIZERS:  # a plugin's optimizer; schedule, decoupled decay and renorm still apply
            self.opt = PLUGIN_OPTIMIZERS[cfg.name](groups, cfg)
        elif "#" in cfg.name:  # grafting M#D: M's step length, D's direction
            magnitude, direction = cfg.name.split("#")
            # Both get the same group dicts (torch keeps the dicts it is given, and the two optimizers'
            # keys do not clash): the schedule's lr reaches both, and D's direction does not depend on it.
            # Separate copies give the same steps up to rounding, but not the committed bytes.
            self.opt = Graft(_torch_optimizer(magnitude, groups, cfg), _torch_optimizer(direction, groups, cfg))
        elif cfg.name == "kfac":  # the linear weight layers preconditioned, everything else plain SGD
            from .kfac import KFAC

            k = kfac or KFACConfig()
            layers = [wl.module for wl in model.weight_layers if type(wl.module) is nn.Linear]
            self.opt = KFAC(
                groups, layers, cfg.lr, k.damping, k.ema, k.cov_every, k.inverse_every, cfg.momentum, fisher=k.fisher
            )
        elif cfg.second_moment != "batch":  # Adam with another second moment (RunConfig allows adam/adamw only)
            self.opt = AdamMoments(groups, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps)
        else:
            self.opt = _torch_optimizer(cfg.name, groups, cfg)
        self.squares = ExampleSquares(model, cfg.second_moment, seed) if cfg.second_moment != "batch" else None
        self.renorm = [
            (wl.module.weight, wl.invariance) for wl in model.weight_layers if cfg.renormalize and wl.invariance
        ]
        self.lr = cfg.lr

    def set_step(self, step: int) -> float:
        lr = lr_at(self.cfg, step, self.total_steps)
        if lr != self.lr:
            self.lr = lr
            for group in self.opt.param_groups:
                group["lr"] = lr
        return lr

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def observe(self, outputs: torch.Tensor, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        """Before the backward pass: optimizers that read curvature from the forward pass (K-FAC) do so here, and
        Adam with per-example or model-sampled second moments takes its squares from the batch (x, y)."""
        if self.cfg.name == "kfac":
            self.opt.observe(outputs)
        if self.squares is not None:
            self.opt.squares = self.squares(x, y)

    def step(self) -> None:
        if self.decoupled and self.cfg.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(self.decay_params, 1.0 - self.lr * self.cfg.weight_decay)
        self.opt.step()
        if self.renorm:
            with torch.no_grad():
                for w, kind in self.renorm:
                    if kind == "unit":
                        w.div_(w.flatten(1).norm(dim=1).view(-1, *([1] * (w.ndim - 1))))
                    else:
                        w.div_(w.norm())
