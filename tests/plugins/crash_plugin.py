"""A plugin optimizer that raises on its first step: a run that crashes, as a user's bug would."""

import torch

from normlab.engine.plugins import register_optimizer


class Boom(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("boom: the plugin optimizer failed")


@register_optimizer("boom")
def boom(param_groups, cfg):
    return Boom(param_groups, lr=cfg.lr)
