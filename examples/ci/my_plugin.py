"""An example plugin for the CI recipe: a user's own optimizer, registered under a name that
configs can use (`--set run.plugins=[my_plugin] --set run.optim.name=sign_sgd`)."""

import torch

from normlab.engine.plugins import register_optimizer


class SignSGD(torch.optim.Optimizer):
    """w <- w - lr * sign(grad): a step of the same length in every coordinate."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


@register_optimizer("sign_sgd")
def sign_sgd(param_groups, cfg):
    return SignSGD(param_groups, lr=cfg.lr)
