"""Which weight layers of an arbitrary model the training loss ignores the scale of (Grosse ch. 5,
§4.3-4.4): each unit's incoming weights ("unit": a layer feeding batch norm, or group norm with a
group per channel), only the whole matrix ("layer": layer norm, group norm), or neither (None).

Found from the module graph: the model is traced with torch.fx (standard torch.nn layers are
leaves, everything else is traced through), and for each weight layer the effect of multiplying
its weights by c > 0 is followed forward node by node as a small algebra of states:
  FREE        the tensor does not depend on c;
  Scaled(d)   the tensor is c^d times what it was (degree d), possibly plus a per-channel
              constant (`offset`: a bias that was not scaled);
  MIXED       anything else (a residual sum of a scaled and an unscaled tensor, a tanh, ...).
A normalizer turns Scaled into FREE where it removes that scale (batch norm per channel, offsets
included; layer norm only a whole-tensor scale without offsets); positively homogeneous maps (ReLU,
pooling, dropout, reshapes of a whole-tensor scale) keep the degree; linear maps keep a whole-tensor
scale; an operation the algebra does not know turns Scaled into MIXED. The layer is invariant when
the model's output is FREE. The analysis is conservative: "not invariant" may mean "not provable".

A model torch.fx cannot trace (data-dependent control flow) falls back to `rescale_invariance`:
the model is run on a real batch with each unit's weights multiplied by random factors (then the
whole matrix by one), and its output compared with the unchanged model's, in training mode, with
the random state and every buffer restored afterwards.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

UNIT, LAYER = "unit", "layer"


@dataclass(frozen=True)
class Invariance:
    """One weight layer's verdict: kind (UNIT, LAYER or None), how it was found ("graph" or
    "rescale"), and why, in words, for a report."""

    kind: Optional[str]
    source: str
    reason: str
    normalizer: Optional[str] = None  # the module that removes the scale (graph), where one does
    # a statistic of the layer's scaled output left out of backprop on the way to the loss (graph): the
    # loss still ignores the scale, but its gradient is no longer orthogonal to the weights
    detached: Optional[str] = None


@dataclass(frozen=True)
class Scaled:
    degree: int
    offset: bool = False  # plus a per-channel constant that c does not scale
    columns: bool = False  # a transposed weight matrix: its units (rows) are now columns


def _scaled(degree: int, offset: bool = False):
    """c^degree times a tensor (plus a constant): of degree 0 it does not depend on c at all."""
    return FREE if degree == 0 else Scaled(degree, offset)


class _Mixed:
    def __init__(self, where: str):
        self.where = where  # the first operation that mixed the scale in


FREE = None

# Leaves whose effect on a scaled input the algebra knows
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_LINEAR_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RESHAPES = {"view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "contiguous"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze}
_KEEP_METHODS = {"contiguous", "clone", "float", "to", "type_as", "detach"}  # detach: c still scales the values
EPS_MAX = 1e-3  # a constant added to a scaled statistic up to this size counts as a normalizer's epsilon
_STAT_METHODS = {"mean": 1, "sum": 1, "var": 2, "std": 1}  # a reduction -> its degree per degree of its input
_STAT_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.var: "var", torch.std: "std"}
_HOMOGENEOUS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d,
                          F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}  # fmt: skip
_ADD = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module, torch.nn.Parameter]]:
    """(name, module, tensor) for every matrix whose rows are units, each tensor once (a tied weight
    under its first name): each module's own `weight` of two or more dimensions (Linear,
    convolutions, custom layers) under the module's name; a multi-head attention's input projection
    (its `in_proj_weight`) under the attention's name; a parametrized weight (torch.nn.utils.
    parametrize, weight_norm's) under the module's name, measured on the tensor the optimizer steps
    (weight norm's direction v); and a bare matrix parameter (`self.W = nn.Parameter(...)`, used as
    `x @ W.t()`) under its own path, MODULE.NAME. Embeddings and transposed convolutions (no
    incoming-weight rows) are left out; `parameter_kinds` accounts for them."""
    out, seen = [], set()

    def add(name: str, mod: nn.Module, w: Any) -> None:
        if isinstance(w, nn.Parameter) and w.ndim >= 2 and id(w) not in seen:
            seen.add(id(w))
            out.append((name, mod, w))

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag, nn.modules.conv._ConvTransposeNd)):
            continue  # no rows of units (a tied output layer is measured under its own name)
        if _parametrized(mod):
            add(name or "model", mod, parametrized_tensor(mod))
            continue
        if ".parametrizations." in f".{name}.":
            continue  # the parametrization's own tensors: measured under the module they parametrize
        w = mod._parameters.get("weight")
        if w is None and isinstance(mod, nn.MultiheadAttention):
            w = mod._parameters.get("in_proj_weight")
        add(name or "model", mod, w)
        for pname, p in mod._parameters.items():
            if p is not w and pname not in ("in_proj_weight",) and not isinstance(mod, _LINEAR_MODULES):
                add(f"{name}.{pname}" if name else pname, mod, p)  # a bare matrix: units are its rows
    return out


def _parametrized(mod: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(mod, "weight")


def parametrized_tensor(mod: nn.Module) -> Optional[nn.Parameter]:
    """The tensor the optimizer steps behind a parametrized weight: weight norm's direction v
    (original1; original0 is its gain g), or the single `original` of any other parametrization."""
    p = mod.parametrizations.weight
    return getattr(p, "original1", None) if hasattr(p, "original1") else getattr(p, "original", None)


def constructed_invariance(model: nn.Module) -> dict[str, Invariance]:
    """Layers invariant by construction: a weight-normalized one (w = g v / ||v|| per output unit,
    torch.nn.utils.parametrizations.weight_norm over dim 0) in its direction v, whatever follows it."""
    out = {}
    for name, mod in model.named_modules():
        if _parametrized(mod):
            kinds = [type(p).__name__ for p in mod.parametrizations.weight]
            dim = getattr(mod.parametrizations.weight[0], "dim", None)
            if kinds == ["_WeightNorm"] and dim in (0, None):
                out[name or "model"] = Invariance(
                    UNIT, "parametrization", "weight norm: w = g v/||v|| per output unit, so each unit's scale of "
                    "v (the tensor the optimizer steps) never reaches the loss"
                )  # fmt: skip
    return out


def unwrap(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """The user's own module inside torch.compile's OptimizedModule (`_orig_mod`) and DataParallel or
    DistributedDataParallel (`module`), and the wrappers' names, outermost first: layers are named
    as the user's model names them, and the graph is traced on it."""
    wrappers = []
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            wrappers.append(type(model).__name__)
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            wrappers.append(type(model).__name__)
            model = model.module
        else:
            return model, wrappers


class _Tracer(fx.Tracer):
    """Standard torch.nn layers without children (and multi-head attention) are leaves; any other
    module, the user's own included, is traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.MultiheadAttention):
            return True
        return m.__module__.startswith("torch.nn") and not any(True for _ in m.children())


def trace(model: nn.Module) -> fx.Graph:
    """The model's graph (raises whatever torch.fx raises on untraceable code)."""
    return _Tracer().trace(model)


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} `{node.target}`"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"`{target}` ({node.name})"


def _flat_nodes(arg: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


class _Propagation:
    """One pass of the algebra over the graph for one weight layer and one kind of rescaling."""

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module], seed_module: str, seed_param: str, kind: str):
        self.graph, self.modules, self.kind = graph, modules, kind
        self.seed_module, self.seed_param = seed_module, seed_param
        self.state: dict[fx.Node, Any] = {}
        self.data: set[fx.Node] = set()  # nodes that depend on the model's input
        self.seen = False  # whether the layer's call (or its weight) appears in the graph
        self.freed_by: Optional[str] = None  # the first normalizer module that removed the scale
        self.detached: list[fx.Node] = []  # detach calls that a scaled tensor passed through

    def run(self) -> Any:
        for node in self.graph.nodes:
            ins = _flat_nodes((node.args, node.kwargs))
            if node.op == "placeholder" or any(i in self.data for i in ins):
                self.data.add(node)
            if node.op == "output":
                states = [self.state.get(i, FREE) for i in ins]
                mixed = [s for s in states if isinstance(s, _Mixed)]
                if mixed:
                    return mixed[0]
                scaled = [s for s in states if isinstance(s, Scaled)]
                return _Mixed("the model's output (nothing between the layer and the output removes the scale)") \
                    if scaled else FREE  # fmt: skip
            self.state[node] = self._step(node, ins)
        return FREE

    def _get(self, arg: Any) -> Any:
        return self.state.get(arg, FREE) if isinstance(arg, fx.Node) else FREE

    def _mixed(self, node: fx.Node) -> _Mixed:
        return _Mixed(_op_name(node, self.modules))

    def _step(self, node: fx.Node, ins: list[fx.Node]) -> Any:
        if node.op == "get_attr":
            owner, _, pname = node.target.rpartition(".")
            if (owner, pname) != (self.seed_module, self.seed_param):
                return FREE
            self.seen = True
            return Scaled(1)
        states = [self.state.get(i, FREE) for i in ins]
        mixed = [s for s in states if isinstance(s, _Mixed)]
        if node.op == "call_module" and self.seed_module.startswith(node.target + "."):
            # the layer lives inside this leaf: only an attention's output projection, applied last
            self.seen = True
            mod, proj = self.modules[node.target], self.modules[self.seed_module]
            if isinstance(mod, nn.MultiheadAttention) and proj is mod.out_proj and not mixed and not any(states):
                return Scaled(1, offset=proj.bias is not None)
            return mixed[0] if mixed else self._mixed(node)
        if node.op == "call_module" and node.target == self.seed_module:
            self.seen = True  # the layer itself
            if mixed:
                return mixed[0]
            if self.seed_param not in ("weight", "in_proj_weight"):
                return self._mixed(node)  # another matrix of a leaf module (an LSTM's): its algebra is unknown
            mod = self.modules[node.target]
            if isinstance(mod, nn.MultiheadAttention):  # the input projection feeds a softmax
                return self._mixed(node)
            if any(isinstance(s, Scaled) for s in states):  # the layer applied to its own output
                return self._mixed(node)
            return Scaled(1, offset=getattr(mod, "bias", None) is not None)
        own_weight = self.seed_param in ("weight", "in_proj_weight")  # not a bare matrix of the module's
        if node.op == "call_module" and own_weight and node.target.startswith(self.seed_module + "."):
            return self._mixed(node)  # a leaf inside the layer itself (not a standard layer)
        if mixed:
            return mixed[0]
        if not any(isinstance(s, Scaled) for s in states):
            return FREE
        if node.op == "call_module":
            return self._module(node, self.modules[node.target], states)
        if node.op == "call_function":
            return self._function(node, node.target, node.args, node.kwargs)
        if node.op == "call_method":
            return self._method(node, node.target, node.args, node.kwargs)
        return self._mixed(node)

    # -- the algebra -------------------------------------------------------------------------
    def _module(self, node: fx.Node, mod: nn.Module, states: list) -> Any:
        s = next(s for s in states if isinstance(s, Scaled))
        if len([x for x in states if x is not FREE]) > 1:
            return self._mixed(node)
        if isinstance(mod, _BATCH_NORMS + _INSTANCE_NORMS):
            self.freed_by = self.freed_by or node.target
            return FREE  # per channel: its mean (a bias included) and its scale are removed
        if isinstance(mod, nn.GroupNorm):
            per_channel = mod.num_groups == mod.num_channels
            return FREE if (per_channel or (self.kind == LAYER and not s.offset)) else self._mixed(node)
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):  # one scale over an example's features (no shift for RMS)
            return FREE if (self.kind == LAYER and not s.offset) else self._mixed(node)
        if isinstance(mod, _HOMOGENEOUS):
            keeps_offset = isinstance(mod, nn.Identity)
            return s if (keeps_offset or not s.offset) else self._mixed(node)
        if isinstance(mod, _POOLS):
            return s  # a per-channel constant stays one under max and average pooling
        if isinstance(mod, nn.Flatten):
            return s if self.kind == LAYER else self._mixed(node)
        if isinstance(mod, _LINEAR_MODULES) and self.kind == LAYER and not s.offset:
            return Scaled(s.degree, offset=mod.bias is not None)  # W(cz) + b
        return self._mixed(node)

    def _binary(self, node: fx.Node, a: Any, b: Any, how: str) -> Any:
        sa, sb = self._get(a), self._get(b)
        if isinstance(sa, Scaled) and isinstance(sb, Scaled) and _minus_own_mean(node, a, b):
            return Scaled(sa.degree)  # x - mean(x): a per-channel offset cancels
        if isinstance(sa, Scaled) and isinstance(sb, Scaled):
            if how == "add":
                return Scaled(sa.degree, sa.offset or sb.offset) if sa.degree == sb.degree else self._mixed(node)
            if sa.offset or sb.offset:
                return self._mixed(node)
            return _scaled(sa.degree + sb.degree if how == "mul" else sa.degree - sb.degree)
        s, other, scaled_first = (sa, b, True) if isinstance(sa, Scaled) else (sb, a, False)
        constant = not (isinstance(other, fx.Node) and other in self.data)
        if how == "add" and isinstance(other, (int, float)) and 0 < abs(other) <= EPS_MAX and not s.offset:
            return s  # a normalizer's epsilon (batch norm's own is ignored alike): invariant up to it
        if how == "add":
            # plus a constant (a bias): an offset; plus anything computed from the input: a residual
            return Scaled(s.degree, True) if constant else _Mixed(f"a sum with an unscaled input, {_op_name(node, {})}")
        if how == "div" and not scaled_first:
            return _scaled(-s.degree) if not s.offset else self._mixed(node)
        if s.offset and not constant:
            return self._mixed(node)
        return s  # times or over a factor that c does not change

    def _function(self, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> Any:
        if fn in _ADD:
            return self._binary(node, args[0], args[1], "add")
        if fn in _MUL:
            return self._binary(node, args[0], args[1], "mul")
        if fn in _DIV:
            return self._binary(node, args[0], args[1], "div")
        if fn in (operator.neg, torch.neg):
            return self._get(args[0])
        if fn in (operator.matmul, torch.matmul, torch.mm):
            return self._matmul(node, args[0], args[1])
        if fn is torch.t or (fn is getattr and len(args) > 1 and args[1] in ("T", "mT")):
            return self._transposed(self._get(args[0]))
        if fn in (F.linear, F.conv1d, F.conv2d, F.conv3d):
            x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            sx, sw, sb = self._get(x), self._get(w), self._get(b)
            if sb is not FREE or (isinstance(sx, Scaled) and (sx.offset or self.kind == UNIT)):
                return self._mixed(node)
            if isinstance(sx, Scaled) and isinstance(sw, Scaled):
                return _scaled(sx.degree + sw.degree) if b is None else self._mixed(node)
            s = sx if isinstance(sx, Scaled) else sw
            return Scaled(s.degree, offset=b is not None)  # a weight's rows are the output's channels
        if fn is F.instance_norm:
            return FREE
        if fn is F.batch_norm:  # with the batch's statistics only: the running ones make it affine
            training = kwargs.get("training", args[5] if len(args) > 5 else False)
            return FREE if training is True else self._mixed(node)
        if fn in _STAT_FUNCTIONS:
            return self._statistic(node, _STAT_FUNCTIONS[fn], args, kwargs)
        if fn in (torch.rsqrt, torch.sqrt, torch.pow):
            return self._power(node, fn.__name__, args, kwargs)
        if fn is torch.detach:
            return self._detach(node, args[0])
        if fn in (F.layer_norm, F.rms_norm):
            s = self._get(args[0])
            return FREE if self.kind == LAYER and not s.offset else self._mixed(node)
        s = self._get(args[0]) if args else FREE
        if fn in _HOMOGENEOUS_FUNCTIONS and len([a for a in _flat_nodes((args, kwargs)) if self._get(a)]) == 1:
            pools = fn not in (F.relu, torch.relu, F.leaky_relu, F.dropout)
            return s if (not s.offset or pools) else self._mixed(node)
        if fn in _RESHAPE_FUNCTIONS and self.kind == LAYER:
            return s
        if fn is operator.getitem and self.kind == LAYER:
            return s
        return self._mixed(node)

    def _transposed(self, s: Any) -> Any:
        """A matrix transposed: a weight's units (rows) become its columns, and back."""
        return Scaled(s.degree, s.offset, not s.columns) if isinstance(s, Scaled) and not s.offset else s

    def _matmul(self, node: fx.Node, a: Any, b: Any) -> Any:
        """x @ W.t() (a bare weight matrix): each output channel is a unit's row of W, so it scales as
        the unit does; the whole product scales with the whole matrix either way round."""
        sa, sb = self._get(a), self._get(b)
        if isinstance(sa, Scaled) and isinstance(sb, Scaled):
            return _scaled(sa.degree + sb.degree) if self.kind == LAYER and not (sa.offset or sb.offset) else \
                self._mixed(node)  # fmt: skip
        s = sb if isinstance(sb, Scaled) else sa
        if s.offset:
            return self._mixed(node)
        if self.kind == LAYER or (s is sb and s.columns):
            return Scaled(s.degree)
        return self._mixed(node)

    def _method(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
        if name in ("t", "t_") or (name in ("transpose", "swapaxes") and set(args[1:3]) in ({0, 1}, {-1, -2})):
            return self._transposed(self._get(args[0]))
        if name == "matmul":
            return self._matmul(node, args[0], args[1])
        if name in ("add", "add_", "sub", "sub_"):
            return self._binary(node, args[0], args[1], "add")
        if name in ("mul", "mul_"):
            return self._binary(node, args[0], args[1], "mul")
        if name in ("div", "div_"):
            return self._binary(node, args[0], args[1], "div")
        if name in _STAT_METHODS:
            return self._statistic(node, name, args, kwargs)
        if name in ("rsqrt", "sqrt", "pow"):
            return self._power(node, name, args, kwargs)
        if name == "detach":
            return self._detach(node, args[0])
        s = self._get(args[0])
        if any(self._get(a) is not FREE for a in _flat_nodes((args[1:], kwargs))):
            return self._mixed(node)
        if name in _KEEP_METHODS or name in ("relu", "relu_"):
            return s if (name not in ("relu", "relu_") or not s.offset) else self._mixed(node)
        if name == "norm" and not s.offset:
            # a weight's per-row norm (weight normalization) keeps the rows' degree; a whole norm too
            dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
            return s if (self.kind == LAYER or dim in (1, -1)) else self._mixed(node)
        if name in _RESHAPES and (self.kind == LAYER or name == "unsqueeze"):
            return s
        if name == "size" or name == "dim":
            return FREE
        return self._mixed(node)

    def _statistic(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
        """A reduction of a scaled tensor (a mean, a sum, a variance, a standard deviation, as a hand-written
        normalizer computes its statistics): the whole matrix's scale passes any reduction; a unit's passes
        one over the batch and positions only (explicit non-negative dims without the channel dim 1). A mean
        or sum keeps a per-channel offset; a variance or standard deviation over the batch and positions removes
        it (it is a common shift there), one over the channels does not."""
        s = self._get(args[0])
        if any(self._get(a) is not FREE for a in _flat_nodes((args[1:], kwargs))):
            return self._mixed(node)
        per_channel = _per_channel(args, kwargs)
        if self.kind == UNIT and not per_channel:
            return self._mixed(node)
        if name in ("mean", "sum"):
            return s
        if s.offset and not per_channel:  # over the channels a per-channel offset is no common shift
            return self._mixed(node)
        return Scaled(s.degree * _STAT_METHODS[name])

    def _power(self, node: fx.Node, name: str, args: tuple, kwargs: dict) -> Any:
        """sqrt, rsqrt and a constant power of a scaled tensor without an offset (an epsilon aside)."""
        s = self._get(args[0])
        exponent = {"sqrt": 0.5, "rsqrt": -0.5}.get(name, kwargs.get("exponent", args[1] if len(args) > 1 else None))
        if not isinstance(s, Scaled) or s.offset or not isinstance(exponent, (int, float)):
            return self._mixed(node)
        degree = s.degree * exponent
        return _scaled(int(degree)) if float(degree).is_integer() else self._mixed(node)

    def _detach(self, node: fx.Node, arg: Any) -> Any:
        """Left out of backprop: the values still scale with c, so the function's invariance is unchanged,
        but the gradient no longer flows through here; noted, to be named where it reaches the loss."""
        s = self._get(arg)
        if isinstance(s, Scaled):
            self.detached.append(node)
        return s


def _per_channel(args: tuple, kwargs: dict) -> bool:
    """Whether a reduction's explicit dims leave out the channel dim 1 (over the batch and positions only)."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return dim is not None and all(isinstance(d, int) and d >= 0 and d != 1 for d in dims)


def _minus_own_mean(node: fx.Node, a: Any, b: Any) -> bool:
    """Whether `node` is a - b with b the mean of a itself over the batch and positions, detached or not: a
    per-channel offset is a common shift there and cancels (a mean over the channels does not cancel it)."""
    subtracts = node.target in (operator.sub, operator.isub, torch.sub, "sub", "sub_")
    while isinstance(b, fx.Node) and b.target in ("detach", torch.detach) and b.args:  # its value is the mean's
        b = b.args[0]
    mean = isinstance(b, fx.Node) and (
        (b.op == "call_method" and b.target == "mean") or (b.op == "call_function" and b.target is torch.mean)
    )
    return subtracts and mean and bool(b.args) and b.args[0] is a and _per_channel(b.args, b.kwargs)


def _feeds_output(graph: fx.Graph) -> set[fx.Node]:
    """Every node the graph's output depends on."""
    seen: set[fx.Node] = set()
    todo = [n for n in graph.nodes if n.op == "output"]
    while todo:
        n = todo.pop()
        for i in n.all_input_nodes:
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return seen


def graph_invariance(model: nn.Module, graph: Optional[fx.Graph] = None) -> dict[str, Invariance]:
    """Every weight layer's invariance (module name -> Invariance) from the traced graph, under
    training-mode semantics (batch norm normalizing with the batch's statistics). A layer whose call
    the graph does not show is left out."""
    graph = graph if graph is not None else trace(model)
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for name, mod, w in weight_layers(model):
        pname = next((k for k, v in mod._parameters.items() if v is w), None)
        if pname is None:
            continue  # a parametrized weight: decided by construction or by rescaling
        mname = names[id(mod)]
        verdicts = {}
        for kind in (UNIT, LAYER):
            prop = _Propagation(graph, modules, mname, pname, kind)
            verdicts[kind] = prop.run()
            if kind == UNIT:
                unit_prop = prop
        if not prop.seen:
            continue  # called in a way the graph does not show (left to rescale_invariance)
        if verdicts[UNIT] is FREE:
            detached = _on_the_way(unit_prop, graph)
            why = "every path to the output passes a per-channel normalizer" + _detached_reason(detached)
            out[name] = Invariance(UNIT, "graph", why, unit_prop.freed_by, detached)
        elif verdicts[LAYER] is FREE:
            detached = _on_the_way(prop, graph)
            why = f"only the whole matrix's scale is removed (per unit it is not, at {verdicts[UNIT].where})"
            out[name] = Invariance(LAYER, "graph", why + _detached_reason(detached), detached=detached)
        else:
            out[name] = Invariance(None, "graph", f"the scale reaches the loss through {verdicts[LAYER].where}")
    return out


def _on_the_way(prop: "_Propagation", graph: fx.Graph) -> Optional[str]:
    """The first detach of the layer's scaled output that the loss depends on (a running statistic's
    update, which the output does not read, is not one)."""
    feeds = _feeds_output(graph)
    node = next((n for n in prop.detached if n in feeds), None)
    if node is None:
        return None
    source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    return f"{node.name} (of {source.name})" if source is not None else node.name


def _detached_reason(detached: Optional[str]) -> str:
    if detached is None:
        return ""
    return (
        f", but a statistic of it is detached from backprop at `{detached}`: the loss ignores the weights' scale, "
        "its gradient is not orthogonal to them (their norm need not grow, and decay need not hold it)"
    )


@torch.no_grad()
def rescale_invariance(
    model: nn.Module, args: tuple, kwargs: dict, rtol: float = 1e-2, seed: int = 0
) -> dict[str, Invariance]:
    """Every weight layer's invariance, tested on one batch: the output with the layer's units
    multiplied by factors drawn from [0.5, 2] (then the whole matrix by 1.7) against the output
    without, in training mode, the same random state for both passes; the weights, the buffers
    and the caller's random state are restored. `rtol` is relative to the output's largest entry:
    batch norm's epsilon moves an invariant layer's output by up to ~1e-3 where a unit's variance
    over the batch is small (measured), a layer that is not invariant by 0.1 or more."""
    saved_buffers = [(b, b.clone()) for b in model.buffers()]
    devices = [p.device.index or 0 for p in model.parameters() if p.is_cuda][:1]

    def output() -> torch.Tensor:
        torch.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        with torch.no_grad():  # a side pass: no layer that learns in its forward pass (CenteredLinear) moves
            out = model(*args, **kwargs)
        for b, copy in saved_buffers:
            b.copy_(copy)
        flat = [t for t in _tensors(out)]
        return torch.cat([t.detach().flatten().double() for t in flat])

    out: dict[str, Invariance] = {}
    with torch.random.fork_rng(devices=devices):
        ref = output()
        scale = ref.abs().max().clamp_min(1e-12)
        gen = torch.Generator().manual_seed(seed)
        for name, _mod, w in weight_layers(model):
            original = w.detach().clone()
            kind = None
            try:
                factors = (0.5 + 1.5 * torch.rand(w.shape[0], generator=gen)).to(w.device, w.dtype)
                w.mul_(factors.view(-1, *([1] * (w.ndim - 1))))
                if ((output() - ref).abs().max() / scale) <= rtol:
                    kind = UNIT
                else:
                    w.copy_(original).mul_(1.7)
                    kind = LAYER if ((output() - ref).abs().max() / scale) <= rtol else None
            finally:
                w.copy_(original)
            reason = {UNIT: "the output did not move when each unit's weights were rescaled",
                      LAYER: "the output did not move when the whole matrix was rescaled (it did per unit)",
                      None: "rescaling the weights changed the output"}[kind]  # fmt: skip
            out[name] = Invariance(kind, "rescale", reason + " (one batch; the graph could not be traced)")
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []
