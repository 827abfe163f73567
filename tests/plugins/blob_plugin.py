"""A user plugin as a user would write it: a dataset, a model and an optimizer, registered by name."""

import numpy as np
import torch
from torch import nn

from normlab.engine.plugins import register_dataset, register_model, register_optimizer


@register_dataset("blobs")
def blobs(cfg):
    rng = np.random.default_rng(cfg.data_seed)
    centers = rng.normal(0, 3, (3, 6))
    y = rng.integers(0, 3, cfg.num_samples)
    x = centers[y] + rng.normal(0, 1, (cfg.num_samples, 6))
    cut = int(cfg.train_split * cfg.num_samples)
    return x[:cut], y[:cut], x[cut:], y[cut:], 3


@register_model("tiny")
def tiny(cfg, input_shape, num_classes):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(int(np.prod(input_shape)), cfg.width), nn.ReLU(), nn.Linear(cfg.width, num_classes)
    )


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


@register_optimizer("signsgd")
def signsgd(param_groups, cfg):
    return SignSGD(param_groups, lr=cfg.lr)
