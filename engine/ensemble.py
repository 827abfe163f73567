"""Many runs trained as one model with a leading "member" dimension (batched training).

Runs that share an architecture and differ only in seed and in elementwise settings (learning rate
and its schedule, momentum, betas, epsilon, weight decay) are stacked: a linear layer's weights get
shape (M, out, in) and one batched matmul replaces M small ones; a 1-D conv layer becomes one buffer
of every member's input windows and one batched matmul; batch norm runs once over M x units
channels, so every member is normalized over its own batch; batch centering, layer norm and weight
norm are computed per member the same way. The loss is the sum of the members'
mean losses, so each member's gradient is exactly the one its own run would see, and the optimizers
below apply torch.optim's update rules (and the grafts M#D) with a hyperparameter per member. The per-op overhead that
bounds a small model's speed is then paid once per step instead of M times.

Each member starts from the weights `build_model` gives its seed and draws the batches the engine's
`Batcher` gives its seed, so member m follows run m's trajectory up to float rounding
(tests/test_ensemble.py holds losses and final metrics to the single-run path). A member whose loss
stops being finite is recorded as diverged at that step, as the single-run loop does, and the
others go on. Curvature checkpoints measure every member still running, on the engine network
each member would be alone (`EnsembleNet.member_net`), with all of their eigenproblems in lockstep
(engine.curvature.measure_many). Runs with per-unit probe rows, unstackable inserted modules,
plugins, other architectures or optimizers (a plugin's, K-FAC on a CNN) take the single-run path
(`why_not_packable` says why). `PER_MEMBER`, `SHARED` and `REFUSED` below say, for every field of a run's
config, how this path handles it; tests/test_ensemble_fields.py fails on a field none of them names.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import metrics as M
from .config import to_dict
from .data import Batcher, load_dataset
from .models import WNLinear, build_model
from .optim import lr_at
from .instruments import directions, summarize, turned, weight_metrics
from .loop import Loop, run_loop
from .probes import UnitWindow, dead_fraction, step_grad_cos
from .runs import Progress, Row, RunResult, RunTask
from .spec import ModelConfig, RunConfig

STACKED_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "kfac", "adam#sgd", "sgd#adam")  # M#D: grafting
# Settings (of `optim`) that may differ between the members of one ensemble; everything else must match.
PER_MEMBER = ("lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "schedule", "warmup_steps", "step_every",
              "step_gamma")  # fmt: skip
PER_MEMBER_KFAC = ("damping",)  # of `kfac`: K-FAC's damping is a per-member (M, 1, 1) tensor (engine.kfac.StackedKFAC)

# How the batched path handles every other field of a run's config. A new field must be named in one
# of these (tests/test_ensemble_fields.py walks RunConfig), so that none is silently ignored here:
# SHARED: equal in all members (part of `pack_key`) and computed by the stacked model as `train` does
# (data and initial weights come from the single-run path's own `load_dataset` and `build_model`).
SHARED = frozenset(
    [f"data.{k}" for k in ("name", "num_samples", "train_split", "data_seed", "val_size", "max_train", "max_test",
                           "root", "download", "synthetic_kind", "input_shape", "num_classes", "noise", "image_size")]
    + [f"model.{k}" for k in ("width", "depth", "residual", "channels", "kernel_sizes", "strides", "pool_every",
                              "activation", "norm_position", "norm_affine", "norm_eps", "bias", "init",
                              "norm_init_scale", "reparam_scale")]
    + ["optim.wd_mode", "optim.wd_params", "optim.renormalize", "optim.eps_inside"]
    + [f"kfac.{k}" for k in ("ema", "cov_every", "inverse_every", "fisher")]
    + [f"curvature.{k}" for k in ("steps", "hessian_steps", "density_steps", "eq9_steps", "layer", "top_k", "examples",
                                  "tol", "dtype", "density_vectors", "density_repeats", "density_points")]
    + [f"train.{k}" for k in ("steps", "batch_size", "eval_every", "eval_batch_size", "threads", "device")]
    + [f"probes.{k}" for k in ("every", "weights", "inputs", "preacts", "fixed_batch", "unit_window", "summaries",
                               "jacobian_examples", "dead_units", "step_grad_cos")]
)  # fmt: skip
# REFUSED: settings the batched path computes only for some values; any other sends the run to the
# single-run path, with this reason (`why_not_packable`).
REFUSED = {
    "model.arch": "architecture",  # an architecture not in `archs`
    "model.norm": "normalizer",  # a normalizer the stacked model does not compute for the architecture
    "model.norm_detach": "batch norm with a detached statistic",  # its backward differs from F.batch_norm's
    "model.norm_ghost": "batch norm over ghost batches",
    "model.centered_reparam": "Eq. 9's centered parameterization",  # its layers move their own bias in training
    "optim.name": "optimizer",  # not in STACKED_OPTIMIZERS (a plugin's), or K-FAC on a CNN (its conv layers)
    "optim.nesterov": "Nesterov momentum",
    "optim.second_moment": "Adam with per-example or model-sampled second moments",  # per-example gradients
    "probes.per_unit": "per-unit probe rows",
    "plugins": "plugins",
}
_ACT = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu, "identity": lambda h: h}


ARCHS = ("mlp", "cnn1d")  # what an ensemble can stack
NORMS = ("none", "batch", "center", "layer", "weight", "rms", "weight_center")
MLP_ONLY = ("weight", "rms", "weight_center")  # the engine builds these for MLPs only
# the normalizer module a block holds, by model.norm (weight norm lives in the layer: WNLinear)
NORM_KIND = {"batch": "batch", "center": "center", "layer": "layer", "rms": "rms", "weight_center": "center"}

# What --ensemble auto stacks: where stacking measured faster than single runs on this 2-core CPU
# (normlab bench): the MLP (1.5-1.7x at 4-32 members) and the 1-D CNN as im2col + bmm (1.1-1.4x; a
# grouped conv had measured 0.65-0.98x). Layer norm, weight norm and the renormalized control stack
# as well (eff_lr's arms, 5 members: 1.3-1.9x their single runs, interleaved). K-FAC's MLPs stack too
# (engine.kfac.StackedKFAC): on this CPU no faster, 0.93-1.07x their single runs at 2-10 members
# (kfac's BN arms, best of four, one thread), because the exact Fisher's ten backward passes per step
# are compute, which stacking does not remove; on a GPU, where a lone run is bound by kernel
# launches, stacking is what removes them. It also packs the Jacobian-probed SGD arms around it.
AUTO_ARCHS = ARCHS


def _stacks_norm(m: ModelConfig) -> bool:
    """Whether an ensemble computes m's normalizer (every one the engine builds for the model)."""
    return m.norm in NORMS and (m.norm not in MLP_ONLY or m.arch == "mlp")


def why_not_packable(task: RunTask, archs: tuple[str, ...] = ARCHS) -> str:
    """The reason the run takes the single-run path, or '' when it can join an ensemble."""
    cfg = task.config
    m, o, p = cfg.model, cfg.optim, cfg.probes
    if task.after_norm is not None and not getattr(task.after_norm, "stack_key", ""):
        return "an inserted module"
    refused = {  # field of REFUSED -> whether this run's value of it is one the batched path refuses
        "model.arch": m.arch not in archs,
        "model.norm": not _stacks_norm(m),
        "model.norm_detach": m.norm_detach != "none",
        "model.norm_ghost": m.norm_ghost > 0,
        "model.centered_reparam": m.centered_reparam,
        "optim.name": o.name not in STACKED_OPTIMIZERS or (o.name == "kfac" and m.arch != "mlp"),
        "optim.nesterov": o.nesterov,
        "optim.second_moment": o.second_moment != "batch",
        "probes.per_unit": p.every > 0 and p.per_unit,
        "plugins": bool(cfg.plugins),
    }
    optimizer = f" {o.name}" + (f" on {m.arch}" if o.name == "kfac" else "")
    detail = {"model.arch": f" {m.arch}", "model.norm": f" {m.norm} on {m.arch}", "optim.name": optimizer,
              "model.norm_detach": f" ({m.norm_detach})"}  # fmt: skip
    return next((REFUSED[k] + detail.get(k, "") for k, bad in refused.items() if bad), "")


def pack_key(task: RunTask) -> str:
    """Runs with equal keys can be trained together: the same config but for per-member settings, and
    inserted modules of one stackable kind (whose settings may differ per member)."""
    d = to_dict(task.config)
    for k in PER_MEMBER:
        d["optim"].pop(k, None)
    for k in PER_MEMBER_KFAC:
        d["kfac"].pop(k, None)
    d["inserted"] = getattr(task.after_norm, "stack_key", "") if task.after_norm is not None else None
    return json.dumps(d, sort_keys=True)


@dataclass
class _Layer:
    kind: str  # "linear" or "conv"
    weight: torch.Tensor  # linear: (M, out, in); conv: (M, out, in, k), each member's Conv1d weight
    bias: torch.Tensor | None  # (M, out)
    stride: int = 1
    padding: int = 0
    # weight norm (engine.models.WNLinear): `weight` is v, the layer uses gain * v / ||v|| per unit
    wn_gain: torch.Tensor | None = None  # (M, out)
    wn_gain_learned: bool = False  # a parameter (norm_affine) or a constant buffer of ones
    bn_weight: torch.Tensor | None = None  # (M, out): the affine normalizer's gain and shift, if any
    bn_bias: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """Its parameters in Net.parameters() order: weight, bias, a learned weight-norm gain, then the
        normalizer's gain and shift."""
        gain = self.wn_gain if self.wn_gain_learned else None
        return [t for t in (self.weight, self.bias, gain, self.bn_weight, self.bn_bias) if t is not None]

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies: `weight` itself, or under weight norm gain * v / ||v||."""
        if self.wn_gain is None:
            return self.weight
        return self.weight * (self.wn_gain / self.weight.norm(dim=2)).unsqueeze(2)


def _windows(length: int, k: int, stride: int, padding: int, l_out: int):
    """For each tap j: (o0, o1, i0), the output positions o0..o1-1 whose input position
    o stride + j - padding lies inside the input, and the first of those input positions."""
    out = []
    for j in range(k):
        o0, o1 = max(0, -(-(padding - j) // stride)), min(l_out, (length - 1 - j + padding) // stride + 1)
        out.append((o0, o1, o0 * stride + j - padding))
    return out


class _Unfold1d(torch.autograd.Function):
    """h (M, C, L, B) -> its input windows (M, C, k, L_out, B), the padding zero. Its backward adds
    each tap's gradient back onto the strided input positions it was read from (col2im) in one pass
    per tap. Written as k slice assignments under autograd instead, the backward cloned the whole
    window buffer and zero-filled a full-size input gradient once per tap: copies and fills were 43%
    of a CNN ensemble's step (torch profiler, 16 members, one thread)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, k: int, stride: int, padding: int, l_out: int) -> torch.Tensor:
        m, c, length, b = h.shape
        cols = h.new_empty(m, c, k, l_out, b)
        ctx.geometry = (length, stride, _windows(length, k, stride, padding, l_out))
        for j, (o0, o1, i0) in enumerate(ctx.geometry[2]):
            cols[:, :, j, :o0] = 0  # output positions whose window hangs over the padding
            cols[:, :, j, max(o0, o1) :] = 0
            if o1 > o0:
                cols[:, :, j, o0:o1] = h[:, :, i0 : i0 + stride * (o1 - o0 - 1) + 1 : stride]
        return cols

    @staticmethod
    def backward(ctx, grad_cols: torch.Tensor):
        length, stride, windows = ctx.geometry
        m, c, _, _, b = grad_cols.shape
        grad = grad_cols.new_zeros(m, c, length, b)
        for j, (o0, o1, i0) in enumerate(windows):
            if o1 > o0:
                grad[:, :, i0 : i0 + stride * (o1 - o0 - 1) + 1 : stride] += grad_cols[:, :, j, o0:o1]
        return grad, None, None, None, None


def stacked_conv1d(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """M Conv1d layers at once: h (M or 1, C_in, L, B) -> (M, C_out, L_out, B), with weight
    (M, C_out, C_in, k) and bias (M, C_out). The stacked CNN keeps its activations
    channel-major and batch-last, so a conv is one batched matmul with the batch and positions as
    the long dimension, (M, C_out, C_in k) @ (M, C_in k, L_out B): the weight is each member's
    Conv1d weight as it is, the input windows are k strided slices written into one buffer
    (`_Unfold1d`: no gather, no padded copy), and batch norm reads the result as channels without a
    copy. Against the batch-first layout (an im2col gather, the weight transposed, a skinny
    (B L_out, k C_in) @ (k C_in, C_out) product) this measured 1.2-1.5x on the CNN ensembles'
    steps, with or without BN (M = 8 and 16, one thread)."""
    m, c_out, c_in, k = weight.shape
    l_out = (h.shape[2] + 2 * padding - k) // stride + 1
    cols = _Unfold1d.apply(h, k, stride, padding, l_out)  # columns ordered (channel, tap), as the weight's
    cols = cols.reshape(h.shape[0], c_in * k, -1).expand(m, -1, -1)  # a shared batch is read by every member
    w = weight.reshape(m, c_out, c_in * k)
    out = torch.bmm(w, cols) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, cols)
    return out.view(m, c_out, l_out, h.shape[3])


class EnsembleNet:
    """M copies of one engine network (MLP or 1-D CNN, with any normalizer the engine builds for it), stacked."""

    def __init__(self, cfg: ModelConfig, nets: list, generators: list | None = None):
        self.cfg, self.members = cfg, len(nets)
        self.generators = generators  # one per member, its run's RNG stream (inserted modules, sampled K-FAC)
        self.act = _ACT[cfg.activation]
        self.layers: list[_Layer] = []
        for i in range(len(nets[0].blocks)):
            mods = [net.blocks[i].weight_layer for net in nets]
            w = torch.stack([m.weight.detach() for m in mods])
            b = torch.stack([m.bias.detach() for m in mods]) if mods[0].bias is not None else None
            if isinstance(mods[0], torch.nn.Conv1d):
                self.layers.append(_Layer("conv", w, b, mods[0].stride[0], mods[0].padding[0]))
            else:
                self.layers.append(_Layer("linear", w, b))
            if isinstance(mods[0], WNLinear):
                self.layers[-1].wn_gain = torch.stack([m.gain.detach() for m in mods])
                self.layers[-1].wn_gain_learned = isinstance(mods[0].gain, torch.nn.Parameter)
            norms = [net.blocks[i].norm for net in nets]
            affine = getattr(norms[0], "affine", False) or getattr(norms[0], "elementwise_affine", False)
            if affine:
                self.layers[-1].bn_weight = torch.stack([n.weight.detach() for n in norms])
                if getattr(norms[0], "bias", None) is not None:  # RMS norm's affine part is a gain only
                    self.layers[-1].bn_bias = torch.stack([n.bias.detach() for n in norms])
        w_out = torch.stack([net.out.weight.detach() for net in nets])
        self.out = _Layer("linear", w_out, torch.stack([net.out.bias.detach() for net in nets]))
        # each block's normalizer: "batch", "center", "layer", "rms" or None (weight norm lives in the layer)
        self.norm = [None if b.norm is None else NORM_KIND[cfg.norm] for b in nets[0].blocks]
        self.normalizes = [b.normalizes for b in nets[0].blocks]
        # Modules inserted after the normalizer (StackedModule), stacked from each member's own; their
        # randomness comes from `generators`, one per member, holding that member's run's RNG stream.
        self.inserted = [
            None
            if b.after_norm is None
            else type(b.after_norm).stack([n.blocks[i].after_norm for n in nets], generators)
            for i, b in enumerate(nets[0].blocks)
        ]
        # the running statistics as each net has them (building a Net already runs one batch through it):
        # batch norm's mean and variance, batch centering's mean
        buffers = {"batch": ("running_mean", "running_var"), "center": ("running_mean",)}
        self.running = [
            tuple(torch.cat([getattr(net.blocks[i].norm, b) for net in nets]).clone() for b in buffers[kind])
            if kind in buffers
            else None
            for i, kind in enumerate(self.norm)
        ]
        # "unit", "layer" or None: which rescaling of a layer's weights leaves the loss unchanged
        self.invariance = [nets[0].weight_layers[i].invariance for i in range(len(self.layers))]
        for t in self.parameters():
            t.requires_grad_(True)

    @classmethod
    def from_seeds(
        cls,
        cfg: ModelConfig,
        input_shape,
        num_classes: int,
        seeds: list[int],
        device=None,
        after_norm: list | None = None,
    ):
        """The engine's initial weights for each seed, stacked (the same draws `train` makes). With
        `after_norm` (one factory per member), each member's inserted modules are built as its run
        builds them and draw from a generator that continues its run's RNG stream."""
        if cfg.arch not in ARCHS or not _stacks_norm(cfg):
            raise ValueError(
                "EnsembleNet covers MLPs and 1-D CNNs, without a normalizer or with batch norm, batch centering or"
                " layer norm, and MLPs with weight norm (alone or with batch centering) or RMS norm"
            )
        device = torch.device(device or "cpu")
        nets, generators = [], []
        for k, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                nets.append(build_model(cfg, input_shape, num_classes, after_norm[k] if after_norm else None))
                gen = torch.Generator(device=device)
                if device.type == "cpu":  # the CPU stream goes on from where building the model left it
                    gen.set_state(torch.get_rng_state())
                else:  # the run's draws on the device come from that device's generator, seeded alike
                    gen.manual_seed(seed)
                generators.append(gen)
        net = cls(cfg, nets, generators)
        return net.to(device)

    def to(self, device) -> "EnsembleNet":
        for lay in self.layers + [self.out]:
            for name in ("weight", "bias", "wn_gain", "bn_weight", "bn_bias"):
                if getattr(lay, name) is not None:
                    learned = name != "wn_gain" or lay.wn_gain_learned
                    setattr(lay, name, getattr(lay, name).detach().to(device).requires_grad_(learned))
        self.running = [tuple(t.to(device) for t in r) if r else None for r in self.running]
        for mod in self.inserted:
            if mod is not None:
                mod.to(device)
        return self

    def parameters(self) -> list[torch.Tensor]:
        """Block by block (weight, bias, BN's gain and shift), the read-out last: Net.parameters()' order."""
        return [t for lay in self.layers + [self.out] for t in lay.tensors()]

    def weights(self, which: str) -> list[torch.Tensor]:
        """The tensors weight decay reaches: 'all', 'weights' or 'scale_invariant'."""
        if which == "all":
            return self.parameters()
        layers = self.layers + [self.out]
        invariance = self.invariance + [None]
        return [lay.weight for lay, inv in zip(layers, invariance) if which == "weights" or inv]

    @torch.no_grad()
    def renormalize(self) -> None:
        """Put every scale-invariant unit's incoming weights (or a whole layer's, under layer norm) back
        on the unit sphere, per member (as engine.optim.Optimizer does for `renormalize`)."""
        for lay, kind in zip(self.layers, self.invariance):
            w = lay.weight
            if kind == "unit":
                w.div_(w.flatten(2).norm(dim=2).view(*w.shape[:2], *([1] * (w.ndim - 2))))
            elif kind == "layer":
                w.div_(w.flatten(1).norm(dim=1).view(-1, *([1] * (w.ndim - 1))))

    def _linear(self, lay: _Layer, h: torch.Tensor) -> torch.Tensor:
        wt = lay.effective_weight().transpose(1, 2)
        if h.shape[0] != self.members:  # one batch shared by every member (evaluation)
            return (
                torch.matmul(h, wt)
                if lay.bias is None
                else torch.baddbmm(lay.bias.unsqueeze(1), h.expand(self.members, -1, -1), wt)
            )
        return torch.bmm(h, wt) if lay.bias is None else torch.baddbmm(lay.bias.unsqueeze(1), h, wt)

    def _conv(self, lay: _Layer, h: torch.Tensor) -> torch.Tensor:
        return stacked_conv1d(h, lay.weight, lay.bias, lay.stride, lay.padding)

    def _norm(self, i: int, h: torch.Tensor, training: bool) -> torch.Tensor:
        """Block i's normalizer on h: (M, B, W) (MLP) or (M, C, L, B) (CNN)."""
        kind = self.norm[i]
        if kind == "batch":
            return self._bn(i, h, training)
        lay = self.layers[i]
        if kind == "center":  # Eq. 13: each member's batch mean per feature, the running mean at eval
            (rm,) = self.running[i]
            dims = (2, 3) if h.ndim == 4 else (1,)
            if training:
                mean = h.mean(dim=dims)  # (M, features)
                with torch.no_grad():
                    rm.lerp_(mean.detach().flatten(), 0.1)
            else:
                mean = rm.view(h.shape[0], -1)
            return h - (mean.view(*mean.shape, 1, 1) if h.ndim == 4 else mean.unsqueeze(1))
        if kind == "rms":  # an MLP's (M, B, W): one example's features, not centered; a gain only
            z = F.rms_norm(h, h.shape[-1:], eps=self.cfg.norm_eps)
            return z if lay.bn_weight is None else z * lay.bn_weight.unsqueeze(1)
        # layer norm: over one example's features (nn.LayerNorm), or its channels and positions
        # (GroupNorm with one group) in the CNN
        if h.ndim == 3:
            z = F.layer_norm(h, h.shape[-1:], eps=self.cfg.norm_eps)
        else:
            var, mean = torch.var_mean(h, dim=(1, 2), keepdim=True, correction=0)
            z = (h - mean) * torch.rsqrt(var + self.cfg.norm_eps)
        if lay.bn_weight is None:
            return z
        shape = (*lay.bn_weight.shape, *([1] * (h.ndim - 2))) if h.ndim == 4 else (h.shape[0], 1, -1)
        return torch.addcmul(lay.bn_bias.view(shape), z, lay.bn_weight.view(shape))

    def _bn(self, i: int, h: torch.Tensor, training: bool) -> torch.Tensor:
        """h: (M, B, W) (MLP) or (M, C, L, B) (CNN); one native batch norm over member x unit channels."""
        rm, rv = self.running[i]
        lay = self.layers[i]
        gain, shift = (lay.bn_weight.flatten(), lay.bn_bias.flatten()) if lay.bn_weight is not None else (None, None)
        if h.ndim == 4:  # the CNN's channels are already member-major rows: a view, no copy
            flat = h.reshape(1, h.shape[0] * h.shape[1], -1)
            flat = F.batch_norm(flat, rm, rv, gain, shift, training=training, momentum=0.1, eps=self.cfg.norm_eps)
            return flat.view(h.shape)
        moved = h.movedim(0, -2)  # (B, M, W)
        flat = moved.reshape(-1, moved.shape[-2] * moved.shape[-1])
        flat = F.batch_norm(flat, rm, rv, gain, shift, training=training, momentum=0.1, eps=self.cfg.norm_eps)
        return flat.view(moved.shape).movedim(-2, 0)

    def _normalize(self, i: int, z: torch.Tensor, training: bool) -> torch.Tensor:
        if self.norm[i]:
            z = self._norm(i, z, training)
        if self.inserted[i] is None:
            return z
        if z.ndim == 4:  # an inserted module sees the CNN's activations as (M, B, L, C)
            return self.inserted[i](z.permute(0, 3, 2, 1), training).permute(0, 3, 2, 1).contiguous()
        return self.inserted[i](z, training)

    def forward(
        self, x: torch.Tensor, training: bool = True, shared: bool = False, capture: dict | None = None
    ) -> torch.Tensor:
        """x: (M, B, ...) one batch per member, or with `shared` (N, ...) one batch for all;
        -> logits (M, B, C). `training`: batch statistics (updating the running ones) or running ones.
        `capture`: filled with what probes read, member first and features last: the input of every
        weight layer (capture["inputs"]["layer1"], ..., ["out"]) and of every activation (["taps"]);
        the CNN's as (M, B, L, C) views of its (M, C, L, B) activations. An MLP's also gives each
        weight layer's output, in the graph (["outputs"]: what K-FAC differentiates)."""
        before = self.cfg.norm_position == "before"
        mlp = self.cfg.arch == "mlp"
        inputs, taps, outputs = (
            ({}, {}, {}) if capture is None else tuple(capture.setdefault(k, {}) for k in ("inputs", "taps", "outputs"))
        )
        if mlp:
            h = x.flatten(1).unsqueeze(0) if shared else x.flatten(2)
        else:  # 1-D CNN: (M or 1, 1 channel, L, B), batch last
            h = x.reshape(1, x.shape[0], -1) if shared else x.reshape(x.shape[0], x.shape[1], -1)  # (M|1, B, L)
            h = h.transpose(1, 2).unsqueeze(1)
        as_probed = (lambda t: t) if mlp else (lambda t: t.permute(0, 3, 2, 1))  # noqa: E731  (M, B, L, C) views
        for i, lay in enumerate(self.layers):
            name = f"layer{i + 1}"
            if capture is not None:
                inputs[name] = as_probed(h)
            z = self._linear(lay, h) if mlp else self._conv(lay, h)
            outputs[name] = z
            if self.normalizes[i] and before:
                z = self._normalize(i, z, training)
            if capture is not None:
                taps[name] = as_probed(z)
            z = self.act(z)
            if self.normalizes[i] and not before:
                z = self._normalize(i, z, training)
            h = h + z if (mlp and self.cfg.residual and i > 0) else z
        if mlp:
            h = h.flatten(2)
            if capture is not None:
                inputs["out"] = h
            outputs["out"] = logits = self._linear(self.out, h)
            return logits
        # the CNN's features flatten channel-major, as nn.Flatten orders them, into the read-out
        h = h.reshape(h.shape[0], -1, h.shape[3])  # (M|1, C L, B)
        if capture is not None:
            inputs["out"] = h.transpose(1, 2)
        w, b, h = self.out.weight, self.out.bias, h.expand(self.members, -1, -1)
        logits = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)
        return logits.transpose(1, 2)  # (M, B, classes)

    @torch.no_grad()
    def member_net(self, k: int, input_shape, num_classes: int, after_norm=None):
        """Member k as the engine's own network (engine.models.Net, on this device), with its current
        weights, normalizer buffers and inserted modules' state: what its run alone would hold now."""
        with torch.random.fork_rng(devices=[]):  # building draws initial weights, overwritten below
            net = build_model(self.cfg, input_shape, num_classes, after_norm)
        state = net.state_dict()
        buffers = {"batch": ("running_mean", "running_var"), "center": ("running_mean",)}
        for i, lay in enumerate(self.layers):
            p = f"blocks.{i}."
            state[p + "weight_layer.weight"] = lay.weight[k]
            if lay.bias is not None:
                state[p + "weight_layer.bias"] = lay.bias[k]
            if lay.wn_gain is not None:
                state[p + "weight_layer.gain"] = lay.wn_gain[k]
            if lay.bn_weight is not None:
                state[p + "norm.weight"] = lay.bn_weight[k]
            if lay.bn_bias is not None:
                state[p + "norm.bias"] = lay.bn_bias[k]
            for name, t in zip(buffers.get(self.norm[i] or "", ()), self.running[i] or ()):
                state[p + f"norm.{name}"] = t.view(self.members, -1)[k]
            if self.inserted[i] is not None:
                state.update({p + f"after_norm.{n}": t for n, t in self.inserted[i].member_state(k).items()})
        state["out.weight"], state["out.bias"] = self.out.weight[k], self.out.bias[k]
        net.load_state_dict({n: t.detach().clone() for n, t in state.items()})
        return net.to(self.out.weight.device)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> dict:
        """What `forward(capture=...)` captures, on one batch shared by every member, in a side pass
        that leaves training unchanged (as engine.probes.Probes.observe): batch statistics in train
        mode, then the running statistics and every inserted module's state put back."""
        running = [tuple(t.clone() for t in r) if r else None for r in self.running]
        states = [mod.save() if mod is not None else None for mod in self.inserted]
        capture: dict = {}
        self.forward(x, training=True, shared=True, capture=capture)
        for r, saved in zip(self.running, running):
            for t, t0 in zip(r or (), saved or ()):
                t.copy_(t0)
        for mod, state in zip(self.inserted, states):
            if mod is not None:
                mod.load(state)
        return capture


class StackedModule:
    """What an inserted module (a `RunTask.after_norm` factory's product) provides to be stacked: the
    factory has a non-empty `stack_key` (modules with equal keys stack, their settings may differ per
    member), and the module's class a `stack(modules, generators)` that returns one of these."""

    def __call__(self, h: torch.Tensor, training: bool) -> torch.Tensor:
        """h: (M, B, features) or (M, B, L, features) -> the same shape, member m as module m maps it."""
        raise NotImplementedError

    def save(self):
        """A copy of the state (buffers, generator states) that `load` restores."""
        raise NotImplementedError

    def load(self, state) -> None:
        raise NotImplementedError

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's module's state_dict entries (its buffers as that member's run holds them now):
        what rebuilding member k as a single network needs (a curvature measurement)."""
        raise NotImplementedError(f"{type(self).__name__} cannot give one member's state (member_state)")

    def to(self, device) -> None:
        raise NotImplementedError


class EnsembleOptimizer:
    """torch.optim's SGD (heavy ball), Adam(W), RMSprop and Adagrad, the grafts M#D (engine.optim.Graft:
    per member and tensor, M's step length along D's direction) and K-FAC (engine.kfac.KFAC, through
    engine.kfac.StackedKFAC), with a learning rate, momentum, betas, epsilon, weight decay and K-FAC
    damping per member; decoupled decay as the engine's Optimizer applies it. Constant per-member
    settings are shaped against every parameter once; only the learning rate (and Adam's bias
    corrections) change per step."""

    def __init__(self, net: EnsembleNet, optims: list, kfacs: list | None = None):
        self.net = net
        o = optims[0]
        self.name = o.name
        # one update rule, or a graft's magnitude and direction; K-FAC's preconditioned direction
        # takes heavy-ball steps, as KFAC.step does
        self.rules = ["sgd"] if o.name == "kfac" else o.name.split("#")
        self.kfac = None
        if o.name == "kfac":
            from .kfac import StackedKFAC

            k = kfacs[0]
            # the layers KFAC preconditions in a single run: nn.Linear ones (not weight norm's WNLinear)
            names = [f"layer{i + 1}" for i in range(len(net.layers))] + ["out"]
            layers = net.layers + [net.out]
            chosen = [(n, lay) for n, lay in zip(names, layers) if lay.kind == "linear" and lay.wn_gain is None]
            self.kfac_layers = [n for n, _ in chosen]
            self.kfac = StackedKFAC(
                [(lay.weight, lay.bias) for _, lay in chosen],
                [c.damping for c in kfacs],
                k.ema,
                k.cov_every,
                k.inverse_every,
                k.fisher,
                net.generators,
            )

        self.decoupled = o.name == "adamw" or o.wd_mode == "decoupled"
        self.eps_inside = o.eps_inside  # shared by the members (RMSprop and Adagrad only: RunConfig.check)
        self.params = net.parameters()
        decayed = {id(p) for p in net.weights(o.wd_params)}
        vec = lambda attr: torch.tensor([getattr(x, attr) for x in optims], dtype=torch.float64)  # noqa: E731
        self.beta1, self.beta2 = vec("beta1"), vec("beta2")
        momentum, eps, wd = vec("momentum"), vec("eps"), vec("weight_decay")
        self.use_momentum = bool((momentum != 0).any())
        self.wd = wd
        self.per_param = []
        for p in self.params:
            e = lambda v: self._expand(p, v)  # noqa: E731
            self.per_param.append(
                {
                    "decays": id(p) in decayed and bool((wd != 0).any()),
                    "wd": e(wd),
                    "momentum": e(momentum),
                    "eps": e(eps),
                    "beta1c": e(1 - self.beta1),
                    "beta2": e(self.beta2),
                    "beta2c": e(1 - self.beta2),
                }
            )
        self.state: list[dict] = [{rule: {} for rule in self.rules} for _ in self.params]
        self.t = 0

    @staticmethod
    def _expand(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A per-member vector shaped to broadcast against p (members along dim 0)."""
        return v.to(dtype=p.dtype, device=p.device).view(-1, *([1] * (p.ndim - 1)))

    def _update(self, rule: str, g: torch.Tensor, h: dict, st: dict, lr_e, adam_e) -> torch.Tensor:
        """The step `rule` takes (to subtract from p), advancing its state `st`."""
        if rule == "sgd":
            if self.use_momentum:
                buf = st.get("buf")
                st["buf"] = g = g.clone() if buf is None else buf.mul_(h["momentum"]).add_(g)
            return lr_e * g
        if rule in ("adam", "adamw"):
            if not st:
                st["m"], st["v"] = torch.zeros_like(g), torch.zeros_like(g)
            st["m"].lerp_(g, h["beta1c"])
            st["v"].mul_(h["beta2"]).addcmul_(g, g * h["beta2c"])
            denom = (st["v"].sqrt() / adam_e[1]).add_(h["eps"])
            return adam_e[0] * st["m"] / denom
        if rule == "rmsprop":
            if not st:
                st["sq"] = torch.zeros_like(g)
                if self.use_momentum:
                    st["buf"] = torch.zeros_like(g)
            st["sq"].mul_(h["beta2"]).addcmul_(g, g * h["beta2c"])
            avg = (st["sq"] + h["eps"]).sqrt() if self.eps_inside else st["sq"].sqrt().add_(h["eps"])
            if "buf" in st:
                st["buf"].mul_(h["momentum"]).addcdiv_(g, avg)
                return lr_e * st["buf"]
            return lr_e * g / avg
        if not st:  # adagrad
            st["sum"] = torch.zeros_like(g)
        st["sum"].addcmul_(g, g)
        if self.eps_inside:
            return lr_e * g / (st["sum"] + h["eps"]).sqrt()
        return lr_e * g / st["sum"].sqrt().add_(h["eps"])

    def _kfac_directions(self) -> dict[int, torch.Tensor]:
        """As KFAC.step: the gradient (plus coupled decay), preconditioned per member for K-FAC's layers."""
        dirs = {}
        for p, h in zip(self.params, self.per_param):
            if p.grad is not None:
                dirs[id(p)] = p.grad + h["wd"] * p if (h["decays"] and not self.decoupled) else p.grad
        self.kfac.precondition(dirs)
        return dirs

    def observe(self, logits: torch.Tensor, captured: dict) -> None:
        """K-FAC's factors from the training forward pass that `captured` was filled by (graph kept)."""
        if self.kfac is not None and self.kfac.observing:
            names = self.kfac_layers
            self.kfac.observe(logits, [captured["inputs"][n] for n in names], [captured["outputs"][n] for n in names])

    @staticmethod
    def _member_norms(d: torch.Tensor) -> torch.Tensor:
        return d.flatten(1).norm(dim=1).view(-1, *([1] * (d.ndim - 1)))

    @torch.no_grad()
    def step(self, lrs: list[float]) -> None:
        self.t += 1
        lr = torch.tensor(lrs, dtype=torch.float64)
        adam = any(r in ("adam", "adamw") for r in self.rules)
        if adam:
            step_size = lr / (1 - self.beta1**self.t)
            bc2_sqrt = (1 - self.beta2**self.t).sqrt()
        expanded: dict[int, tuple] = {}  # per parameter rank: the step's per-member vectors
        kfac_dirs = self._kfac_directions() if self.kfac is not None else None
        for p, h, st in zip(self.params, self.per_param, self.state):
            g = p.grad if kfac_dirs is None else kfac_dirs.get(id(p))
            if g is None:
                continue
            if p.ndim not in expanded:
                extra = (self._expand(p, step_size), self._expand(p, bc2_sqrt)) if adam else ()
                expanded[p.ndim] = (self._expand(p, lr), self._expand(p, lr * self.wd)) + extra
            lr_e, lr_wd_e, *adam_e = expanded[p.ndim]
            if h["decays"] and self.decoupled:
                p.mul_(1.0 - lr_wd_e)
            elif h["decays"] and kfac_dirs is None:  # (K-FAC's coupled decay is preconditioned with the gradient)
                g = g + h["wd"] * p
            if len(self.rules) == 1:
                p.sub_(self._update(self.rules[0], g, h, st[self.rules[0]], lr_e, adam_e))
            else:  # as Graft does it: both steps taken from p and measured as p's change, per member
                magnitude, direction = self.rules
                length = self._member_norms((p - self._update(magnitude, g, h, st[magnitude], lr_e, adam_e)) - p)
                d = (p - self._update(direction, g, h, st[direction], lr_e, adam_e)) - p
                p.add_(d * (length / (self._member_norms(d) + 1e-16)))
            p.grad = None


class _MemberProbes(UnitWindow):
    """engine.probes.Probes for every member at once (all but per-unit rows): weight metrics and the
    angular update of every unit, the unit windows, input and pre-activation statistics. The same rows
    in the same order as Probes writes them, each member's from its own slice, in one copy per probe."""

    def __init__(self, cfg, net: EnsembleNet, window_start: float):
        super().__init__()
        self.cfg, self.net, self.members = cfg, net, net.members
        self.window_start = window_start
        self.names = [f"layer{i + 1}" for i in range(len(net.layers))] + ["out"]
        self.invariance = net.invariance + [None]
        self._prev: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._directions: dict[str, torch.Tensor] = {}
        self._before: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (W, grad) per layer: step_grad_cos

    def _stats(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per member and feature: mean and variance over the batch (and positions); (M, features)."""
        var, mean = torch.var_mean(t.detach(), dim=tuple(range(1, t.ndim - 1)), correction=0)
        return mean.expand(self.members, -1), var.expand(self.members, -1)  # a shared input: the same for all

    def _summaries(self, mat: torch.Tensor) -> torch.Tensor:
        """(M, k metrics, n units) -> (M, k * len(summaries)), metric-major as Probes orders its keys."""
        return summarize(mat, self.cfg.summaries).flatten(1)

    def _matrix(self, keys: list, values: list, metrics: list[str], layer: str, rows: list[torch.Tensor]) -> None:
        keys += [(metric, layer, stat) for metric in metrics for stat in self.cfg.summaries]
        values.append(self._summaries(torch.stack(rows, dim=1)))

    @torch.no_grad()
    def record(self, step: int, captured: dict, lrs: list[float]) -> list[list[Row]]:
        """After backward, before the update (as Probes.record)."""
        keys: list[tuple] = []
        values: list[torch.Tensor] = []  # each (M, some)
        layers = self.net.layers + [self.net.out]
        for name, lay, invariance in zip(self.names, layers, self.invariance):
            if self.cfg.weights and lay.weight.grad is not None:
                w = lay.weight.flatten(2)  # (M, units, fan-in)
                g = lay.weight.grad.flatten(2)
                rows, wn2, wn, gn = weight_metrics(w, g)
                if self.cfg.step_grad_cos:
                    self._before[name] = (w.clone(), g.clone())
                metrics = list(M.WEIGHT_METRICS)
                if invariance:
                    lr = torch.tensor(lrs, dtype=w.dtype, device=w.device).unsqueeze(1)  # (M, 1)
                    self._directions[name] = directions(w, wn)
                if invariance == "unit":  # BN, weight norm: each unit's incoming weights
                    rows += [wn2.reciprocal() * lr, lr * gn / wn]  # as `lr / wn2` evaluates for a float lr
                    metrics += [M.EFF_LR, M.EFF_STEP]
                    if step >= self.window_start:
                        self._accumulate(M.UNIT_U_MEAN, name, wn2)
                        self._accumulate(M.UNIT_G2_MEAN, name, (wn * gn) ** 2)
                self._matrix(keys, values, metrics, name, rows)
                if invariance == "layer":  # layer norm: only the whole matrix's scale drops out
                    total = wn2.sum(1, keepdim=True)  # (M, 1)
                    keys += [(M.EFF_LR, name, "value"), (M.NORMALIZED_GRAD_NORM_LAYER, name, "value")]
                    grad_norm = g.flatten(1).norm(dim=1, keepdim=True)
                    values.append(torch.cat([total.reciprocal() * lr, total.sqrt() * grad_norm], 1))
            if self.cfg.inputs and name in captured.get("inputs", {}):
                mean, var = self._stats(captured["inputs"][name])
                keys += [(M.INPUT_MEAN_SQ_NORM, name, "value"), (M.INPUT_VAR_MEAN, name, "value")]
                values.append(torch.stack([(mean * mean).sum(1), var.mean(1)], dim=1))
        if self.cfg.preacts:
            for layer, z in captured.get("taps", {}).items():
                mean, var = self._stats(z)
                self._matrix(keys, values, [M.PREACT_MEAN, M.PREACT_VAR], layer, [mean, var])
                if layer in self._prev:
                    pm, pv = self._prev[layer]
                    keys += [(M.PREACT_MEAN_DRIFT, layer, "value"), (M.PREACT_VAR_DRIFT, layer, "value")]
                    values.append(torch.stack([(mean - pm).abs().mean(1), (var - pv).abs().mean(1)], dim=1))
                self._prev[layer] = (mean, var)
                if self.cfg.dead_units:
                    keys.append((M.DEAD_FRACTION, layer, "value"))
                    values.append(dead_fraction(z, members=True).expand(self.members).unsqueeze(1))
        return self._rows(step, keys, values)

    @torch.no_grad()
    def after_step(self, step: int) -> list[list[Row]]:
        """The angle every scale-invariant unit turned by across the update (as Probes.after_step)."""
        keys: list[tuple] = []
        values: list[torch.Tensor] = []
        for name, lay, invariance in zip(self.names, self.net.layers, self.invariance):
            before = self._directions.pop(name, None)
            if before is None:
                continue
            w = lay.weight.flatten(2)
            turn = turned(before, w)  # (M, units)
            if step >= self.window_start and invariance == "unit":
                self._accumulate(M.UNIT_ANG2_MEAN, name, turn**2)
            self._matrix(keys, values, [M.ANGULAR_UPDATE], name, [turn])
        for name, lay in zip(self.names, self.net.layers + [self.net.out]):  # in weight-layer order, as Probes
            if name in self._before:
                w0, g = self._before.pop(name)
                keys.append((M.STEP_GRAD_COS, name, "value"))
                values.append(step_grad_cos(lay.weight.flatten(2) - w0, g).unsqueeze(1))
        return self._rows(step, keys, values)

    def unit_rows(self, step: int) -> list[list[Row]]:
        """The per-unit window means, per member (as Probes.unit_rows)."""
        out: list[list[Row]] = [[] for _ in range(self.members)]
        for metric, layer, mat in self.unit_tables():
            for k, vec in enumerate(mat.tolist()):
                out[k].extend(Row(step, metric, layer, "unit", j, v) for j, v in enumerate(vec))
        return out

    def _rows(self, step: int, keys: list[tuple], values: list[torch.Tensor]) -> list[list[Row]]:
        flat = torch.cat(values, dim=1).tolist() if values else [[] for _ in range(self.members)]
        return [
            [Row(step, metric, layer, stat, None, v) for (metric, layer, stat), v in zip(keys, vals)] for vals in flat
        ]


def input_jacobian_sq_norms(net: EnsembleNet, x: torch.Tensor) -> list[float]:
    """engine.probes.input_jacobian_sq_norm for every member: the mean over the examples x of
    ||d logits / d x||_F^2 in eval mode, one backward pass per class for all members at once (each
    member differentiates its own copy of x)."""
    xs = x.detach().unsqueeze(0).expand(net.members, *x.shape).clone().requires_grad_(True)
    totals = [0.0] * net.members
    with torch.enable_grad():
        logits = net.forward(xs, training=False)  # (M, N, C)
        classes = logits.shape[2]
        for c in range(classes):
            (g,) = torch.autograd.grad(logits[:, :, c].sum(), xs, retain_graph=c + 1 < classes)
            totals = [t + v for t, v in zip(totals, g.pow(2).flatten(1).sum(1).tolist())]
    return [t / x.shape[0] for t in totals]


def _evaluate(net: EnsembleNet, data, batch_size: int) -> list[dict[str, float]]:
    """Loss and accuracy on every split, in eval mode, for every member (as engine.train.evaluate)."""
    m = net.members
    out: list[dict[str, float]] = [{} for _ in range(m)]
    with torch.no_grad():
        for split, (x, y) in data.splits().items():
            loss_sum, correct = [0.0] * m, [0] * m
            for i in range(0, len(y), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                logits = net.forward(xb, training=False, shared=True)
                ls = F.cross_entropy(logits.flatten(0, 1), yb.repeat(m), reduction="none").view(m, -1).sum(1).tolist()
                cs = (logits.argmax(2) == yb).sum(1).tolist()
                loss_sum = [a + b for a, b in zip(loss_sum, ls)]
                correct = [a + b for a, b in zip(correct, cs)]
            for k in range(m):
                out[k][f"{split}_loss"] = loss_sum[k] / len(y)
                out[k][f"{split}_acc"] = correct[k] / len(y)
    return out


def train_ensemble(tasks: list[RunTask], progress: Progress = None) -> list[RunResult]:
    """Train packable runs with equal `pack_key` together; one RunResult per run, as `train` gives."""
    from .train import resolve_device

    cfg = tasks[0].config
    if any(pack_key(t) != pack_key(tasks[0]) for t in tasks):
        raise ValueError("train_ensemble: the runs differ in more than per-member settings")
    device = resolve_device(cfg.train.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads)
    try:
        return _train(tasks, cfg, device, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(tasks: list[RunTask], cfg: RunConfig, device, progress: Progress) -> list[RunResult]:
    return run_loop(EnsembleRun(tasks, cfg, device, progress))


class EnsembleRun(Loop):
    """An ensemble's phases of the loop (engine/loop.py), each member's rows and status of its own: a
    member whose loss stops being finite is diverged at that step and the others go on."""

    def __init__(self, tasks: list[RunTask], cfg: RunConfig, device, progress: Progress):
        self.tasks, self.cfg, self.progress = tasks, cfg, progress
        self.data = data = load_dataset(cfg.data).to(device)
        self.seeds = seeds = [t.seed for t in tasks]
        self.m, self.steps = m, steps = len(tasks), cfg.train.steps
        after_norm = [t.after_norm for t in tasks] if tasks[0].after_norm is not None else None
        self.net = EnsembleNet.from_seeds(cfg.model, data.input_shape, data.num_classes, seeds, device, after_norm)
        self.opt = EnsembleOptimizer(self.net, [t.config.optim for t in tasks], [t.config.kfac for t in tasks])
        window_start = (1.0 - cfg.probes.unit_window) * steps if cfg.probes.unit_window else float("inf")
        self.probes = _MemberProbes(cfg.probes, self.net, window_start) if cfg.probes.every else None
        self.fixed_x = data.x_train[: cfg.probes.fixed_batch] if (self.probes and cfg.probes.fixed_batch) else None
        self.window_loss, self.window_steps = [0.0] * m, 0  # training loss averaged over each probe interval
        self.batchers = [
            Batcher(data.x_train, data.y_train, cfg.train.batch_size, torch.Generator().manual_seed(s)) for s in seeds
        ]
        self.eval_every = cfg.train.eval_every or steps
        self.report_every = max(1, steps // 50)
        self.rows: list[list[Row]] = [[] for _ in range(m)]
        self.finals = _evaluate(self.net, data, cfg.train.eval_batch_size)
        for k in range(m):
            self.rows[k] += [Row(0, key, "", "value", None, v) for key, v in self.finals[k].items()]
        self.status, self.done = ["ok"] * m, [steps] * m
        self.alive = torch.ones(m, dtype=torch.bool, device=device)
        curv = cfg.curvature
        self.curv_steps = set(curv.steps) | set(curv.hessian_steps) | set(curv.density_steps) | set(curv.eq9_steps)
        self.curv_seconds = 0.0

    def _ok(self) -> list[int]:
        return [k for k in range(self.m) if self.status[k] == "ok"]

    def checkpoint(self, step: int) -> None:
        """Every member still running, on the engine network it would be alone, all in lockstep."""
        if step not in self.curv_steps or not self._ok():
            return
        from .curvature import measure_many  # curvlinops loads only where it is used

        t0, curv, data, ks = time.perf_counter(), self.cfg.curvature, self.data, self._ok()
        nets = [self.net.member_net(k, data.input_shape, data.num_classes, self.tasks[k].after_norm) for k in ks]
        x, y = data.x_train[: curv.examples], data.y_train[: curv.examples]
        for k, measured in zip(ks, measure_many(nets, curv, x, y, step, [self.seeds[k] for k in ks])):
            self.rows[k] += measured
        self.curv_seconds += time.perf_counter() - t0

    def probing(self, step: int) -> bool:
        return self.probes is not None and step % self.cfg.probes.every == 0

    def batch(self, step: int, probing: bool) -> None:
        self.lrs = [lr_at(t.config.optim, step, self.steps) for t in self.tasks]
        idx = torch.stack([b.next_index() for b in self.batchers])  # (M, B): one gather for every member
        self.x, self.y = self.data.x_train[idx], self.data.y_train[idx]
        self.captured = self.net.observe(self.fixed_x) if (probing and self.fixed_x is not None) else None

    def forward(self, step: int, probing: bool) -> bool:
        self.kfac_observing = self.opt.kfac is not None and self.opt.kfac.observing
        if probing and self.captured is None:
            self.captured = {}  # the training batch's own statistics
            self.logits = self.net.forward(self.x, capture=self.captured)
            self.kfac_captured = self.captured
        elif self.kfac_observing:
            self.kfac_captured = {}
            self.logits = self.net.forward(self.x, capture=self.kfac_captured)
        else:
            self.logits = self.net.forward(self.x)
        logits, m = self.logits, self.m
        self.loss = F.cross_entropy(logits.flatten(0, 1), self.y.flatten(), reduction="none").view(m, -1).mean(1)
        self.values = self.loss.tolist()
        for k, v in enumerate(self.values):
            if self.status[k] == "ok" and not math.isfinite(v):  # this member stops here; the others go on
                self.status[k], self.done[k] = "diverged", step
                self.rows[k].append(Row(step, M.BATCH_LOSS, "", "value", None, v))
                self.alive[k] = False
        return not bool(self.alive.any())

    def backward(self) -> None:
        if self.kfac_observing:
            self.opt.observe(self.logits, self.kfac_captured)
        torch.where(self.alive, self.loss, torch.zeros_like(self.loss)).sum().backward()
        self.window_loss = [a + v for a, v in zip(self.window_loss, self.values)]
        self.window_steps += 1

    def probe(self, step: int) -> None:
        acc = (self.logits.argmax(2) == self.y).float().mean(1).tolist()
        measured = self.probes.record(step, self.captured, self.lrs)
        for k in self._ok():
            self.rows[k] += [
                Row(step, M.BATCH_LOSS, "", "value", None, self.values[k]),
                Row(step, M.BATCH_LOSS_AVG, "", "value", None, self.window_loss[k] / self.window_steps),
                Row(step, M.BATCH_ACC, "", "value", None, acc[k]),
                Row(step, M.LR, "", "value", None, self.lrs[k]),
            ] + measured[k]
        self.window_loss, self.window_steps = [0.0] * self.m, 0

    def update(self) -> None:
        self.opt.step(self.lrs)
        if self.cfg.optim.renormalize:  # the same for every member (not a per-member setting)
            self.net.renormalize()

    def probe_update(self, step: int) -> None:
        if self.cfg.probes.weights:
            turned = self.probes.after_step(step)
            for k in self._ok():
                self.rows[k] += turned[k]

    def evaluate(self, step: int) -> bool:
        if (step + 1) % self.eval_every != 0 and step + 1 != self.steps:
            return False
        results = _evaluate(self.net, self.data, self.cfg.train.eval_batch_size)
        for k in self._ok():
            self.rows[k] += [Row(step + 1, key, "", "value", None, v) for key, v in results[k].items()]
            self.finals[k] = results[k]
            if not math.isfinite(results[k][M.TRAIN_LOSS]):
                self.status[k], self.done[k] = "diverged", step + 1
                self.alive[k] = False
        return not bool(self.alive.any())

    def report(self, step: int) -> None:
        if self.progress and (step + 1) % self.report_every == 0:
            for k in self._ok():
                self.progress(self.tasks[k].run_id, step + 1, self.steps)

    def finish(self, started: float) -> list[RunResult]:
        cfg, m, steps = self.cfg, self.m, self.steps
        if self.probes is not None:
            for k, unit in enumerate(self.probes.unit_rows(steps)):
                if self.status[k] == "ok":
                    self.rows[k] += unit
        seconds = (time.perf_counter() - started) / m  # each member's share of the ensemble's wall time
        jacobian = (
            input_jacobian_sq_norms(self.net, self.data.x_test[: cfg.probes.jacobian_examples])
            if cfg.probes.jacobian_examples
            else None
        )
        out = []
        for k, t in enumerate(self.tasks):
            if self.progress:
                self.progress(t.run_id, steps, steps)
            final = {key: float("nan") for key in self.finals[k]} if self.status[k] == "diverged" else self.finals[k]
            if jacobian is not None and self.status[k] == "ok":
                final[M.JACOBIAN_FRO_SQ] = jacobian[k]
            if self.curv_steps:
                final[M.CURVATURE_SECONDS] = self.curv_seconds / m  # its share of the wall time: not a result
            out.append(RunResult(t.run_id, t.arm, t.seed, self.status[k], self.done[k], seconds, final, self.rows[k]))
        return out


AUTO_SIZE = 16  # members per ensemble for --ensemble auto (the bench's best on CPU is 8-16)


def pack(tasks: list[RunTask], size: int, archs: tuple[str, ...] = ARCHS) -> list[list[RunTask]]:
    """Tasks grouped into units: runs with equal `pack_key`, in task order, in ensembles of at most
    `size`; every other run alone. The grouping depends on the tasks and `size` only (never on the
    number of workers), so the same runs always share the same ensembles and give the same bytes."""
    if size <= 1:
        return [[t] for t in tasks]
    groups: dict[str, list[RunTask]] = {}
    units: list[list[RunTask]] = []
    for t in tasks:
        if why_not_packable(t, archs):
            units.append([t])
            continue
        key = pack_key(t)
        if key not in groups or len(groups[key]) == size:
            groups[key] = []
            units.append(groups[key])
        groups[key].append(t)
    return units


def mlp_flops_per_step(sizes: list[int], batch: int) -> float:
    """Multiply-adds x 2 of the matmuls in one forward + backward step (backward = 2x forward)."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * batch
    return 2.0 * macs * 3.0


def conv1d_flops_per_step(cfg: ModelConfig, length: int, classes: int, batch: int) -> float:
    """FLOPs of one forward + backward step of the engine's 1-D CNN (convs and read-out)."""
    macs, c_in = 0, 1
    for c, k, s in zip(cfg.channels, cfg.kernel_sizes, cfg.strides):
        length = (length + 2 - k) // s + 1  # padding 1, as engine.models builds it
        macs += c * c_in * k * length
        c_in = c
    macs += c_in * length * classes
    return 2.0 * macs * batch * 3.0
