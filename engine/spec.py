"""What one training run is (RunConfig) and what an experiment config holds around it.

Units are in the names: steps are optimizer steps, never epochs; `lr` is the step size alpha of
the chapter; `weight_decay` is lambda. Experiments subclass `ExperimentConfig` to add their own
typed `analysis` section (thresholds of their verdict rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .config import ConfigError, param

# Built-in names; plugins (engine/plugins.py) may add more, so the fields below are checked by name.
BUILTIN_DATASETS = ("mnist1d", "synthetic", "mnist", "fashion_mnist", "cifar10", "imagefolder")
BUILTIN_ARCHS = ("mlp", "cnn1d", "cnn2d")
BUILTIN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "kfac", "adam#sgd", "sgd#adam")  # M#D: grafting
# rms: layer norm without its centering step (x / RMS(x) over one example's features);
# weight_center: weight norm followed by batch centering (Salimans and Kingma's mean-only batch norm)
NormName = Literal["none", "batch", "layer", "weight", "center", "rms", "weight_center"]
MLP_ONLY_NORMS = {"weight": "weight norm", "weight_center": "weight norm with batch centering", "rms": "RMS norm"}


@dataclass
class DataConfig:
    name: str = param("mnist1d", help=f"which dataset: {', '.join(BUILTIN_DATASETS)}, or one a plugin registers")
    num_samples: int = param(5000, min=20, help="mnist1d/synthetic: examples generated in total")
    train_split: float = param(0.8, min=0.05, max=0.95, help="mnist1d/synthetic: train fraction")
    data_seed: int = param(42, min=0, help="seed of dataset generation (42 = MNIST-1D's own)")
    val_size: int = param(0, min=0, help="examples carved from train as validation (fixed seed)")
    max_train: int = param(0, min=0, help="keep only this many training examples (0 = all)")
    max_test: int = param(0, min=0, help="keep only this many test examples (0 = all)")
    root: str = param("", help="folder with torchvision / image-folder files ('' = cache folder)")
    download: bool = param(False, help="torchvision datasets: download when missing")
    # synthetic data
    synthetic_kind: Literal["teacher", "mixture"] = param("teacher")
    input_shape: list[int] = param(default_factory=lambda: [40], help="synthetic: shape of one input")
    num_classes: int = param(10, min=2, help="synthetic: number of classes")
    noise: float = param(0.1, min=0.0, help="synthetic: label-noise-free input noise std")
    image_size: int = param(0, min=0, help="imagefolder: resize to this square size (0 = 32)")


@dataclass
class ModelConfig:
    arch: str = param("mlp", help=f"network: {', '.join(BUILTIN_ARCHS)}, or one a plugin registers")
    width: int = param(100, min=1, help="mlp: hidden units per layer")
    depth: int = param(2, min=0, help="mlp: hidden layers (0 = logistic regression)")
    residual: bool = param(False, help="mlp: add a skip connection around hidden layers 2..depth")
    channels: list[int] = param(default_factory=lambda: [25, 25, 25], help="cnn: channels per conv layer")
    kernel_sizes: list[int] = param(default_factory=lambda: [5, 3, 3], help="cnn: kernel size per conv layer")
    strides: list[int] = param(default_factory=lambda: [2, 2, 2], help="cnn1d: stride per conv layer")
    pool_every: int = param(1, min=0, help="cnn2d: 2x2 max-pool after every k-th conv (0 = never)")
    activation: Literal["relu", "tanh", "gelu", "identity"] = param("relu")
    norm: NormName = param("none", help="normalizer of every hidden layer")
    norm_position: Literal["before", "after"] = param("before", help="normalizer before/after the activation")
    norm_affine: bool = param(False, help="learnable gain/bias in the normalizer (the chapter assumes off)")
    norm_eps: float = param(
        1e-5, min=1e-30, help="added to the variance; breaks exact scale invariance slightly (float64 checks: 1e-30)"
    )
    norm_detach: Literal["none", "mean", "var", "both"] = param(
        "none",
        help="batch norm on an MLP: leave the batch mean, the batch variance or both out of backprop (the "
        "statistics path of Grosse ch. 5, §4.2, cut; the forward pass is unchanged)",
    )
    norm_ghost: int = param(
        0,
        min=0,
        help="batch norm on an MLP: normalize over ghost batches of this many examples (the training batch cut into "
        "consecutive chunks, each with its own mean and variance, as Hoffer et al. 2017 do); 0 = the whole batch",
    )
    centered_reparam: bool = param(
        False,
        help="mlp without a normalizer: train in Eq. 9's centered coordinates (Grosse ch. 5, §3.1, Sigma = I): every "
        "linear layer computes W (a - m) + b, m a running mean of its input (a buffer, not trained); when m moves, b "
        "absorbs W times the move, so the function never changes, and SGD here is SGD preconditioned as in Eq. 10",
    )
    bias: Literal["auto", "true", "false"] = param("auto", help="auto: no bias in layers a normalizer follows")
    init: Literal["default", "kaiming", "xavier"] = param("default")
    norm_init_scale: float = param(
        1.0,
        min=1e-6,
        help="multiply the initial weights that feed a normalizer by this (sets ||w_0|| only: the function is scale "
        "invariant)",
    )
    reparam_scale: float = param(
        1.0,
        min=1e-6,
        help="mlp without a normalizer, relu or identity: multiply the first layer's initial weights and bias by c and "
        "the second layer's weights by 1/c (the same function, another parameterization)",
    )


@dataclass
class OptimConfig:
    name: str = param(
        "sgd",
        help=f"optimizer: {', '.join(BUILTIN_OPTIMIZERS)} (M#D: M's step length, D's direction), or one a plugin "
        "registers",
    )
    lr: float = param(0.1, min=0.0, help="step size alpha (peak value when a schedule is used)")
    momentum: float = param(0.0, min=0.0, max=1.0, help="sgd/rmsprop momentum")
    nesterov: bool = param(False)
    beta1: float = param(0.9, min=0.0, max=1.0, help="adam/adamw first-moment decay")
    beta2: float = param(0.999, min=0.0, max=1.0, help="adam/adamw second-moment decay; rmsprop alpha")
    eps: float = param(1e-8, min=0.0)
    eps_inside: bool = param(
        False,
        help="rmsprop/adagrad: add eps inside the square root, sqrt(s + eps), as Grosse ch. 5, §2 writes both rules "
        "(torch adds it outside, sqrt(s) + eps, as Adam does)",
    )
    second_moment: Literal["batch", "per_example", "fisher"] = param(
        "batch",
        help="adam/adamw: what the second moment averages: batch, the batch gradient squared (Adam's); per_example, "
        "the mean of the examples' squared gradients (the empirical Fisher's diagonal); fisher, the same with each "
        "label sampled from the model's prediction (the Fisher's diagonal, one sample) (Grosse ch. 5, §2.1's open "
        "question; no normalizer that couples the examples)",
    )
    weight_decay: float = param(0.0, min=0.0, help="lambda")
    wd_mode: Literal["l2", "decoupled"] = param(
        "l2", help="l2: add lambda*w to the gradient; decoupled: shrink w by lr*lambda"
    )
    wd_params: Literal["all", "weights", "scale_invariant"] = param("weights", help="which parameters get weight decay")
    schedule: Literal["constant", "step", "cosine", "linear", "inv_sqrt"] = param(
        "constant",
        help="lr over training: constant, step (step_every, step_gamma), cosine or linear decay to 0, or inv_sqrt: "
        "lr / sqrt(k + 1) after k updates past warmup (Adagrad's built-in decay made explicit, Grosse ch. 5, §2)",
    )
    warmup_steps: int = param(0, min=0, help="linear warmup from 0 over this many steps")
    step_every: int = param(1000, min=1, help="step schedule: multiply lr by step_gamma every this many steps")
    step_gamma: float = param(0.1, min=0.0, max=1.0)
    renormalize: bool = param(
        False, help="rescale the incoming weights of scale-invariant units to unit norm after every step"
    )


@dataclass
class TrainConfig:
    steps: int = param(2000, min=1, help="optimizer steps")
    batch_size: int = param(128, min=1)
    eval_every: int = param(
        250, min=0, help="full train/val/test evaluation every this many steps (0 = only at the end)"
    )
    eval_batch_size: int = param(2048, min=1)
    threads: int = param(1, min=1, help="torch threads per run; results are only bit-identical at equal threads")
    device: Literal["cpu", "cuda", "auto"] = param("cpu")


@dataclass
class ProbeConfig:
    every: int = param(50, min=0, help="probe every this many steps (0 = off)")
    weights: bool = param(True, help="per-unit weight norms, gradients, effective LR")
    inputs: bool = param(True, help="mean/variance of the inputs of every weight layer")
    preacts: bool = param(True, help="per-unit mean/variance (and drift) at the input of every activation")
    per_unit: bool = param(False, help="also write one row per unit (large files)")
    fixed_batch: int = param(
        0,
        min=0,
        help="measure input/pre-activation statistics on the first N training examples at every probe (0 = on the "
        "training batch); a side pass that leaves training unchanged",
    )
    unit_window: float = param(
        0.0,
        min=0.0,
        max=1.0,
        help="per-unit running means over the last fraction of steps (u_j, g_j^2, squared angular update), written "
        "once per unit at the end (0 = off)",
    )
    summaries: list[Literal["mean", "median", "q25", "q75", "min", "max"]] = param(
        default_factory=lambda: ["mean", "median", "q25", "q75"], help="statistics over units per layer"
    )
    dead_units: bool = param(
        False,
        help="with preacts: per hidden layer, the fraction of units whose pre-activation is <= 0 on every example of "
        "the probed batch (the fixed batch where set): dead ReLUs (metric dead_fraction)",
    )
    step_grad_cos: bool = param(
        False,
        help="with weights: per weight layer, the cosine between the update the optimizer took (W after the step "
        "minus W before) and minus the loss gradient at the probe's batch: 1 for plain SGD, lower for a "
        "preconditioned step (Adam, K-FAC) (metric step_grad_cos)",
    )
    jacobian_examples: int = param(
        0,
        min=0,
        help="at the end, mean over the first N test examples of ||d logits / d x||_F^2 (final metric "
        "jacobian_fro_sq; 0 = off)",
    )


@dataclass
class CurvatureConfig:
    """Curvature of one weight layer, measured on a fixed set of training examples at chosen steps.

    Each measurement runs on a float64 copy of the network with its batch statistics taken from
    those examples and any random module frozen to one draw; training is left untouched.
    """

    steps: list[int] = param(
        default_factory=list, help="top-k eigenvalues of the GGN after this many updates (e.g. [0, 1000]); [] = off"
    )
    hessian_steps: list[int] = param(default_factory=list, help="top-k eigenvalues of the exact Hessian here")
    eq9_steps: list[int] = param(
        default_factory=list,
        help="also the GGN of the same network reparameterized as in Eq. 9 (the layer's inputs centered, its bias "
        "absorbing W m); layers without a normalizer right before or after them",
    )
    layer: str = param("layer2", help="weight layer (layer1, layer2, ..., out) whose curvature is measured")
    top_k: int = param(30, min=1, help="largest eigenvalues found by Lanczos (scipy eigsh)")
    examples: int = param(500, min=2, help="the first N training examples define the curvature")
    tol: float = param(1e-6, min=0.0, help="relative accuracy of the eigenvalues (0 = machine precision)")
    dtype: Literal["float64", "float32"] = param(
        "float64", help="precision of the measurement copy (float32 is about 1.5x faster; eigenvalues agree to ~1e-7)"
    )
    density_steps: list[int] = param(
        default_factory=list, help="also estimate the GGN's spectral density (stochastic Lanczos quadrature) here"
    )
    density_vectors: int = param(60, min=4, help="Lanczos vectors per quadrature")
    density_repeats: int = param(2, min=1, help="random starts averaged in the density")
    density_points: int = param(200, min=10, help="grid points of the density")


@dataclass
class KFACConfig:
    """K-FAC's own settings (optim.name: kfac; engine/kfac.py). lr, momentum and weight decay come from `optim`."""

    damping: float = param(1e-3, min=0.0, help="eta added to the Kronecker-factored curvature (Grosse ch. 5, Eq. 26)")
    ema: float = param(0.95, min=0.0, max=1.0, help="running-average decay of the factors A and S")
    cov_every: int = param(1, min=1, help="update the factors every this many steps")
    inverse_every: int = param(10, min=1, help="refresh the factors' eigendecompositions every this many steps")
    fisher: Literal["mc", "exact"] = param(
        "mc", help="mc: one target sampled from the model per example; exact: the full expectation over classes"
    )


def _p(path: str) -> str:
    return f"{path}." if path else ""


# Runs train in float32: a setting it cannot hold (lr 1e300) overflows to inf inside the first step.
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    curvature: CurvatureConfig = field(default_factory=CurvatureConfig)
    kfac: KFACConfig = field(default_factory=KFACConfig)
    plugins: list[str] = param(
        default_factory=list, help="modules that register datasets, models or optimizers (see engine/plugins.py)"
    )

    def check(self, path: str) -> None:
        from . import plugins as PL

        self._check_training_dtype(path)

        PL.load_plugins(self.plugins, f"{_p(path)}plugins")
        PL.check_name(f"{_p(path)}data.name", self.data.name, BUILTIN_DATASETS, PL.PLUGIN_DATASETS)
        PL.check_name(f"{_p(path)}model.arch", self.model.arch, BUILTIN_ARCHS, PL.PLUGIN_MODELS)
        PL.check_name(f"{_p(path)}optim.name", self.optim.name, BUILTIN_OPTIMIZERS, PL.PLUGIN_OPTIMIZERS)
        m = self.model
        if m.arch != "mlp" and not (len(m.channels) == len(m.kernel_sizes)):
            raise ConfigError(
                f"{_p(path)}model.kernel_sizes: needs one entry per channel entry "
                f"({len(m.channels)}), got {len(m.kernel_sizes)}"
            )
        if m.arch == "cnn1d" and len(m.strides) != len(m.channels):
            raise ConfigError(
                f"{_p(path)}model.strides: needs one entry per channel entry ({len(m.channels)}), got {len(m.strides)}"
            )
        if m.reparam_scale != 1.0 and not (
            m.arch == "mlp" and m.norm == "none" and m.activation in ("relu", "identity") and m.depth >= 1
        ):
            raise ConfigError(
                f"{_p(path)}model.reparam_scale: keeps the function only in an MLP with at least one hidden layer, no "
                f"normalizer and a positively homogeneous activation (relu, identity); got arch {m.arch}, norm "
                f"{m.norm}, activation {m.activation}, depth {m.depth}"
            )
        if m.norm_detach != "none" and (m.norm != "batch" or m.arch != "mlp"):
            raise ConfigError(
                f"{_p(path)}model.norm_detach: detaches batch norm's statistics, and this model has norm {m.norm!r} "
                f"on {m.arch!r}; use it with model.norm: batch on an MLP, or set model.norm_detach: none"
            )
        if m.norm_ghost and (m.norm != "batch" or m.arch != "mlp" or m.norm_detach != "none"):
            raise ConfigError(
                f"{_p(path)}model.norm_ghost: ghost batches belong to batch norm on an MLP with its whole backward "
                f"pass, and this model has norm {m.norm!r} on {m.arch!r} (norm_detach {m.norm_detach!r}); set "
                "model.norm_ghost: 0"
            )
        if m.norm_ghost and not (
            2 <= m.norm_ghost < self.train.batch_size and self.train.batch_size % m.norm_ghost == 0
        ):
            raise ConfigError(
                f"{_p(path)}model.norm_ghost: {m.norm_ghost} must be at least 2, below train.batch_size "
                f"({self.train.batch_size}) and divide it (0 normalizes over the whole batch)"
            )
        if m.centered_reparam and not (m.arch == "mlp" and m.norm == "none" and m.bias != "false"):
            raise ConfigError(
                f"{_p(path)}model.centered_reparam: Eq. 9's centering needs an MLP without a normalizer whose layers "
                f"have a bias to absorb W m; this model has arch {m.arch!r}, norm {m.norm!r}, bias {m.bias!r}"
            )
        if self.optim.eps_inside and self.optim.name not in ("rmsprop", "adagrad"):
            raise ConfigError(
                f"{_p(path)}optim.eps_inside: puts epsilon inside RMSprop's and Adagrad's square root, and optim.name "
                f"is {self.optim.name!r} (Adam's rule has it outside, in the chapter too); use rmsprop or adagrad, or "
                "set optim.eps_inside: false"
            )
        if self.optim.second_moment != "batch":
            o = self.optim
            if o.name not in ("adam", "adamw"):
                raise ConfigError(
                    f"{_p(path)}optim.second_moment: {o.second_moment!r} replaces Adam's squared batch gradient, and "
                    f"optim.name is {o.name!r}; use adam or adamw, or set optim.second_moment: batch"
                )
            if m.norm in ("batch", "center", "weight_center") or m.norm_ghost or m.arch != "mlp":
                raise ConfigError(
                    f"{_p(path)}optim.second_moment: per-example gradients need an MLP whose examples do not interact; "
                    f"this model has arch {m.arch!r}, norm {m.norm!r} (batch norm couples the examples); use an MLP "
                    "with model.norm none, layer, rms or weight, or set optim.second_moment: batch"
                )
        pr = self.probes
        if pr.step_grad_cos and not (pr.weights and pr.every > 0):
            raise ConfigError(
                f"{_p(path)}probes.step_grad_cos: compares each step with the gradient the weight probes read, so it "
                f"needs probes.weights on and probes.every > 0 (got weights {pr.weights}, every {pr.every}); set "
                "probes.step_grad_cos: false"
            )
        if pr.dead_units and not (pr.preacts and pr.every > 0 and m.activation == "relu"):
            raise ConfigError(
                f"{_p(path)}probes.dead_units: reads the ReLUs' inputs at every probe, so it needs probes.preacts on, "
                f"probes.every > 0 and model.activation relu (got preacts {pr.preacts}, every {pr.every}, activation "
                f"{m.activation!r}); set probes.dead_units: false"
            )
        if m.norm in MLP_ONLY_NORMS and m.arch != "mlp":
            raise ConfigError(
                f"{_p(path)}model.norm: {MLP_ONLY_NORMS[m.norm]} is implemented for MLPs only; use batch, layer or "
                "center with a CNN"
            )
        cv = self.curvature
        if cv.eq9_steps and (m.bias == "false" or (m.norm != "none" and m.norm_position == "before")):
            raise ConfigError(
                f"{_p(path)}curvature.eq9_steps: Eq. 9 moves W m into the measured layer's bias, and this layer has "
                "none (bias false, or a normalizer right after it, which already ignores a shift of its inputs); "
                "measure Eq. 9 on a layer with a bias"
            )
        bad = [
            s for s in cv.steps + cv.hessian_steps + cv.density_steps + cv.eq9_steps if not 0 <= s <= self.train.steps
        ]
        if bad:
            raise ConfigError(
                f"{_p(path)}curvature.steps: {bad} lie outside 0..train.steps ({self.train.steps}); "
                "choose steps between 0 and train.steps"
            )
        if m.norm in ("weight", "weight_center") and m.norm_position == "after":
            raise ConfigError(
                f"{_p(path)}model.norm_position: weight norm reparameterizes the layer itself (and its batch "
                "centering acts on the pre-activations, as Salimans and Kingma place it); use norm_position: before"
            )

    def _check_training_dtype(self, path: str) -> None:
        """Every number the run computes with must fit float32, the dtype runs train in: found when the
        config is checked, not as a crash in the first step."""
        for section in ("data", "model", "optim", "train", "kfac"):
            for f in fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, float) and math.isfinite(value) and abs(value) > FLOAT32_MAX:
                    raise ConfigError(
                        f"{_p(path)}{section}.{f.name}: {value!r} cannot be held by float32, the dtype runs train in "
                        f"(largest {FLOAT32_MAX:.4g}); give a smaller number"
                    )


@dataclass
class Analysis:
    """Verdict thresholds; experiments subclass this with their own fields."""


@dataclass
class ExperimentConfig:
    experiment: str = param(help="registered experiment name (see `normlab list`)")
    description: str = param("", help="one line for the report")
    run: RunConfig = field(default_factory=RunConfig)
    arms: dict[str, dict[str, Any]] = param(default_factory=dict, help="arm name -> overrides of `run` (dotted keys)")
    seeds: int = param(3, min=1, help="seeds per arm")
    seed_offset: int = param(0, min=0, help="first seed")
    smoke: dict[str, Any] = param(default_factory=dict, help="overrides applied by --smoke")
    analysis: Analysis = field(default_factory=Analysis)

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed_offset, self.seed_offset + self.seeds))
