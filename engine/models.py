"""Models built from a ModelConfig: MLP, 1-D CNN (MNIST-1D), small 2-D CNN (VGG-style).

Every hidden layer is a `Block`: weight layer -> normalizer -> activation, or weight layer ->
activation -> normalizer (`norm_position`). Two things are exposed for measurement and
manipulation, without the model knowing who uses them:
  * `model.weight_layers`: every linear/conv layer with a flag saying whether the loss is
    invariant to rescaling each unit's incoming weights ("unit"), the whole matrix ("layer"),
    or neither (None). That flag decides where the effective learning rate means something.
  * `after_norm`: a factory called once per normalized block; the module it returns is inserted
    right after the normalizer (the knockout experiment inserts its noise there).
Each block also has a `tap` (identity) at the input of its activation, where probes read the
pre-activation statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .spec import ModelConfig

AfterNorm = Optional[Callable[[int, int], Optional[nn.Module]]]


class Tap(nn.Identity):
    """A named point in the network where probes read activations (called only when `tapped`)."""

    tapped = False


class BatchCenter(nn.Module):
    """Batch centering (Eq. 13): subtract the per-feature batch mean; running mean at eval."""

    def __init__(self, features: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.update_running = True  # off in curvature measurements, which must not change the network
        self.register_buffer("running_mean", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        if self.training:
            mean = x.mean(dim=dims)
            if self.update_running:
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach(), self.momentum)
        else:
            mean = self.running_mean
        return x - mean.view(shape)


class DetachedBatchNorm(nn.BatchNorm1d):
    """Batch norm over (N, features) whose batch mean, variance or both are left out of backprop
    (`detach`: "mean", "var" or "both"): the same forward pass as nn.BatchNorm1d, the statistics path of
    Grosse ch. 5, §4.2 cut where asked. The loss stays invariant to each unit's weight scale, but its
    gradient is no longer orthogonal to the weights: along w_j the direct path gives z/sigma, the mean
    path -mu/sigma and the variance path -(z - mu)/sigma, which cancel only all together."""

    def __init__(self, features: int, eps: float, affine: bool, detach: str):
        super().__init__(features, eps=eps, affine=affine)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        mean = x.mean(dim=0)
        var = (x - mean).pow(2).mean(dim=0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():  # the running statistics as nn.BatchNorm1d keeps them (unbiased variance)
                n = x.shape[0]
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * (n / (n - 1)), self.momentum)
                self.num_batches_tracked.add_(1)
        if self.detach in ("mean", "both"):
            mean = mean.detach()
        if self.detach in ("var", "both"):
            var = var.detach()
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


class GhostBatchNorm(nn.BatchNorm1d):
    """Batch norm over (N, features) with its statistics taken over ghost batches: the training batch cut
    into consecutive chunks of `ghost` examples, each normalized by its own mean and variance (Hoffer et
    al. 2017), so the noise of the statistics is that of a batch of `ghost` while the gradient averages
    the whole batch. Each chunk updates the running statistics in turn (momentum applied per chunk); in
    eval mode it is nn.BatchNorm1d. A ragged last chunk (a side pass over N examples that `ghost` does not
    divide) is normalized on its own, merged with the one before when it would hold a single example."""

    def __init__(self, features: int, eps: float, affine: bool, ghost: int):
        super().__init__(features, eps=eps, affine=affine)
        self.ghost = ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost:
            return super().forward(x)
        chunks = list(torch.split(x, self.ghost))
        if len(chunks) > 1 and chunks[-1].shape[0] == 1:
            chunks[-2:] = [torch.cat(chunks[-2:])]
        return torch.cat([super(GhostBatchNorm, self).forward(c) for c in chunks])


class CenteredLinear(nn.Linear):
    """A linear layer in Eq. 9's centered coordinates (Grosse ch. 5, §3.1, with Sigma = I): it computes
    W (a - m) + b, where m is a running mean of its inputs (momentum 0.1, as batch norm keeps its own),
    a buffer that training does not differentiate. Each training forward pass first moves m toward the
    batch's mean and adds W times the move to b, so the function at the current weights never changes;
    only the coordinates in which the optimizer steps do (SGD on W, b here is SGD preconditioned as in
    Eq. 10 in the plain network's coordinates). m moves only in forward passes that train: train mode,
    gradients on (side passes of probes run without), `update_running` on (off in curvature copies).
    Built with nn.Linear's initialization and m = 0: the plain network's function at the start."""

    def __init__(self, fan_in: int, fan_out: int, momentum: float = 0.1):
        super().__init__(fan_in, fan_out, bias=True)
        self.momentum = momentum
        self.update_running = True
        self.register_buffer("center", torch.zeros(fan_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.update_running and torch.is_grad_enabled():
            with torch.no_grad():
                moved = torch.lerp(self.center, x.detach().mean(0), self.momentum)
                self.bias.add_(self.weight @ (moved - self.center))
                self.center.copy_(moved)
        return F.linear(x - self.center, self.weight, self.bias)


class WNLinear(nn.Module):
    """Weight normalization (Eq. 20): w_j = g_j * v_j / ||v_j||. `weight` is v (scale invariant)."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool, learn_gain: bool):
        super().__init__()
        ref = nn.Linear(fan_in, fan_out, bias=bias)
        self.weight = ref.weight
        self.bias = ref.bias
        gain = torch.ones(fan_out)
        if learn_gain:
            self.gain = nn.Parameter(gain)
        else:
            self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * (self.gain / self.weight.norm(dim=1)).unsqueeze(1)
        return F.linear(x, w, self.bias)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "gelu": nn.GELU(), "identity": nn.Identity()}[name]


def _normalizer(cfg: ModelConfig, features: int, spatial_dims: int) -> Optional[nn.Module]:
    if cfg.norm in ("none", "weight"):
        return None
    if cfg.norm in ("center", "weight_center"):
        return BatchCenter(features)
    if cfg.norm == "rms":  # layer norm without centering (MLPs only: RunConfig.check); its affine part is a gain only
        return nn.RMSNorm(features, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
    if cfg.norm == "batch" and cfg.norm_ghost:  # MLPs only (RunConfig.check)
        return GhostBatchNorm(features, cfg.norm_eps, cfg.norm_affine, cfg.norm_ghost)
    if cfg.norm == "batch" and cfg.norm_detach != "none":  # MLPs only (RunConfig.check)
        return DetachedBatchNorm(features, cfg.norm_eps, cfg.norm_affine, cfg.norm_detach)
    if cfg.norm == "batch":
        cls = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm1d
        return cls(features, eps=cfg.norm_eps, affine=cfg.norm_affine)
    # layer norm: over the features of one example (over channels and positions for conv)
    if spatial_dims == 0:
        return nn.LayerNorm(features, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
    return nn.GroupNorm(1, features, eps=cfg.norm_eps, affine=cfg.norm_affine)


def _uses_bias(cfg: ModelConfig) -> bool:
    if cfg.bias != "auto":
        return cfg.bias == "true"
    # A per-unit bias right before batch norm/centering is cancelled by the mean subtraction.
    return not (cfg.norm in ("batch", "center", "weight_center") and cfg.norm_position == "before")


def _invariance(cfg: ModelConfig, bias: bool) -> Optional[str]:
    """Rescaling which weights leaves the loss unchanged (Grosse ch. 5, §4.3-4.4)."""
    if cfg.norm not in ("batch", "weight", "weight_center", "layer", "rms"):
        return None
    if cfg.norm in ("weight", "weight_center"):  # w = g v / ||v||: the scale of v never reaches the loss
        return "unit"
    # layer norm and RMS norm remove one scale common to all of an example's features: the whole matrix's
    kind = "layer" if cfg.norm in ("layer", "rms") else "unit"
    if cfg.norm_position == "before" and (kind != "layer" or not bias):
        return kind
    # After the activation: ReLU is positively homogeneous, so without a bias the scale of
    # w_j still passes straight through to the normalizer, which removes it.
    if cfg.norm_position == "after" and cfg.activation in ("relu", "identity") and not bias:
        return kind
    return None


class Block(nn.Module):
    def __init__(
        self, weight: nn.Module, cfg: ModelConfig, features: int, spatial_dims: int, index: int, after_norm: AfterNorm
    ):
        super().__init__()
        self.weight_layer = weight
        self.norm = _normalizer(cfg, features, spatial_dims)
        # A factory may ask to be inserted where the normalizer would sit even in a network
        # without one (`also_without_norm`), e.g. the knockout's "noise without BN" arm.
        wanted = after_norm is not None and (self.norm is not None or getattr(after_norm, "also_without_norm", False))
        self.after_norm = after_norm(index, features) if wanted else None  # None: nothing on the hot path
        self.tap = Tap()
        self.act = _activation(cfg.activation)
        self.before = cfg.norm_position == "before"

        self.normalizes = self.norm is not None or self.after_norm is not None

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return self.after_norm(x) if self.after_norm is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.weight_layer(x)
        if self.normalizes and self.before:
            x = self._normalize(x)
        if self.tap.tapped:  # only while probes listen
            x = self.tap(x)
        x = self.act(x)
        if self.normalizes and not self.before:
            x = self._normalize(x)
        return x


@dataclass
class WeightLayer:
    name: str
    module: nn.Module  # has .weight (and maybe .bias)
    invariance: Optional[str]  # "unit", "layer" or None


class Net(nn.Module):
    """A stack of Blocks and a linear read-out, with the bookkeeping probes need."""

    def __init__(self, cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, after_norm: AfterNorm = None):
        super().__init__()
        self.arch = cfg.arch
        self.residual = cfg.residual
        bias = _uses_bias(cfg)
        invariance = _invariance(cfg, bias)
        blocks: list[Block] = []
        if cfg.arch == "mlp":
            fan_in = int(math.prod(input_shape))
            for i in range(cfg.depth):
                if cfg.norm in ("weight", "weight_center"):
                    layer = WNLinear(fan_in, cfg.width, bias, cfg.norm_affine)
                elif cfg.centered_reparam:  # RunConfig.check: no normalizer, a bias
                    layer = CenteredLinear(fan_in, cfg.width)
                else:
                    layer = nn.Linear(fan_in, cfg.width, bias=bias)
                blocks.append(Block(layer, cfg, cfg.width, 0, i, after_norm))
                fan_in = cfg.width
        else:
            spatial = 1 if cfg.arch == "cnn1d" else 2
            in_ch = 1 if (spatial == 1 or len(input_shape) < 3) else input_shape[0]
            for i, (ch, k) in enumerate(zip(cfg.channels, cfg.kernel_sizes)):
                if spatial == 1:
                    conv = nn.Conv1d(in_ch, ch, k, stride=cfg.strides[i], padding=1, bias=bias)
                else:
                    conv = nn.Conv2d(in_ch, ch, k, padding=k // 2, bias=bias)
                blocks.append(Block(conv, cfg, ch, spatial, i, after_norm))
                in_ch = ch
        self.blocks = nn.ModuleList(blocks)
        self.pool_every = cfg.pool_every if cfg.arch == "cnn2d" else 0
        self.input_shape = tuple(input_shape)
        with torch.no_grad():
            feat = self.features(torch.zeros(2, *input_shape)).shape[1]
        self.out = CenteredLinear(feat, num_classes) if cfg.centered_reparam else nn.Linear(feat, num_classes)
        self.weight_layers = [
            WeightLayer(f"layer{i + 1}", b.weight_layer, invariance) for i, b in enumerate(self.blocks)
        ]
        self.weight_layers.append(WeightLayer("out", self.out, None))
        _init(self, cfg.init)
        if cfg.norm_init_scale != 1.0:
            # Scale invariance: multiplying the weights that feed a normalizer leaves the network's
            # function unchanged and sets only ||w_0||, hence the transient k0 of Eq. 19.
            with torch.no_grad():
                for wl in self.weight_layers:
                    if wl.invariance and not isinstance(wl.module, WNLinear):
                        wl.module.weight.mul_(cfg.norm_init_scale)
        if cfg.reparam_scale != 1.0:
            # relu(c z) = c relu(z) for c > 0: layer 1 (weights and bias) times c and the next layer's
            # weights times 1/c compute the same function (RunConfig.check allows it only where so).
            with torch.no_grad():
                first, second = self.weight_layers[0].module, self.weight_layers[1].module
                first.weight.mul_(cfg.reparam_scale)
                if first.bias is not None:
                    first.bias.mul_(cfg.reparam_scale)
                second.weight.div_(cfg.reparam_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch == "mlp":
            h = x.flatten(1)
            for i, block in enumerate(self.blocks):
                h = h + block(h) if (self.residual and i > 0) else block(h)
            return h
        if self.arch == "cnn1d":
            h = x.reshape(x.shape[0], 1, -1)
            for block in self.blocks:
                h = block(h)
            return h.flatten(1)
        h = x if x.ndim == 4 else x.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.pool_every and (i + 1) % self.pool_every == 0 and h.shape[-1] >= 2:
                h = F.max_pool2d(h, 2)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def taps(self) -> list[tuple[str, Tap]]:
        return [(f"layer{i + 1}", b.tap) for i, b in enumerate(self.blocks)]


def _init(model: Net, scheme: str) -> None:
    if scheme == "default":
        return
    for wl in model.weight_layers:
        w = wl.module.weight
        if scheme == "kaiming":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        else:
            nn.init.xavier_normal_(w)
        if getattr(wl.module, "bias", None) is not None:
            nn.init.zeros_(wl.module.bias)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, after_norm: AfterNorm = None) -> Net:
    from .plugins import PLUGIN_MODELS

    if cfg.arch in PLUGIN_MODELS:
        return _plugin_model(PLUGIN_MODELS[cfg.arch](cfg, input_shape, num_classes))
    return Net(cfg, input_shape, num_classes, after_norm)


def _plugin_model(model: nn.Module) -> nn.Module:
    """Give a plugin's module what the optimizer and probes read: its weight layers (every Linear
    and conv layer, none assumed scale invariant) and activation taps (none)."""
    if not isinstance(model, nn.Module):
        from .errors import ConfigError

        raise ConfigError(f"model.arch: the plugin returned {type(model).__name__}, not a torch.nn.Module")
    if not hasattr(model, "weight_layers"):
        kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
        model.weight_layers = [
            WeightLayer(name or "layer", m, None) for name, m in model.named_modules() if isinstance(m, kinds)
        ]
    if not hasattr(model, "taps"):
        model.taps = lambda: []
    return model
