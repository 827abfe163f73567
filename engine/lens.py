"""The lens: the experiments' probes on anyone's training loop, through the optimizer's step hooks.

    lens = Lens(model, optimizer, every=50, out="lens-run")
    ...                       # the loop, unchanged: forward, backward, optimizer.step()
    lens.close()              # lens-run/lens.csv complete, lens-run/lens.json written

Every `every`-th optimizer step (the first included), the pre-step hook reads each weight
layer's weights and gradients (after backward, before the update) and the post-step hook the
weights after it, plus an Adam-family optimizer's second moments. Nothing the loop computes
changes: the hooks read tensors under no_grad, and the one side pass (the rescaling test for a
model torch.fx cannot trace) restores the random state and every buffer (a test holds the loss
trajectory bit-identical with and without the lens).

lens.csv is long: step, layer, metric, stat, value; `stat` is mean/median/q10/q90 over a layer's
units (nearest-rank quantiles, engine/instruments.py, the probes' own code) or `value` for one
number per layer. Metrics (names in METRICS):
  scale_invariant        1 when the loss ignores the scale of each unit's weights or of the whole
                         matrix (engine/invariance.py), else 0
  weight_norm_sq         ||w_j||^2 (and, for a layer-invariant matrix, ||W||^2 as `value`)
  grad_cos               cos(w_j, g_j) (value: cos(W, G) for a layer-invariant matrix); about 0
                         where the loss is scale invariant (Grosse ch. 5, Eq. 16)
  eff_lr                 alpha / ||w_j||^2 (value: alpha / ||W||^2), invariant layers under SGD
  angular_update         the angle each unit turned in the step (value: the whole matrix's)
  lr, weight_decay       the layer's parameter group's (value)
  wd_equilibrium_angle   sqrt(2 alpha lambda / (1 + beta)) (Eq. 25 at beta = 0), invariant layers
                         in SGD groups with weight decay (value)
  wd_equilibrium_ratio   the measured angle (root mean square over units, or the matrix's) over it
                         (value); about 1 at equilibrium
  adam_eps_share         the share of the weight's entries whose epsilon is at least sqrt(v_hat),
                         Adam-family groups (value): where it is large Adam steps like momentum SGD
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .errors import ConfigError
from .files import atomic_write_text
from .instruments import directions, summarize, turned, wd_equilibrium_angle, weight_metrics
from .invariance import (
    LAYER,
    UNIT,
    Invariance,
    constructed_invariance,
    graph_invariance,
    rescale_invariance,
    trace,
    unwrap,
    weight_layers,
)

STATS = ["mean", "median", "q10", "q90"]
COLUMNS = ["step", "layer", "metric", "stat", "value"]
SCALE_INVARIANT = "scale_invariant"
WEIGHT_NORM_SQ = "weight_norm_sq"
GRAD_COS = "grad_cos"
EFF_LR = "eff_lr"
ANGULAR_UPDATE = "angular_update"
LR = "lr"
WEIGHT_DECAY = "weight_decay"
WD_EQUILIBRIUM_ANGLE = "wd_equilibrium_angle"
WD_EQUILIBRIUM_RATIO = "wd_equilibrium_ratio"
ADAM_EPS_SHARE = "adam_eps_share"
METRICS = (SCALE_INVARIANT, WEIGHT_NORM_SQ, GRAD_COS, EFF_LR, ANGULAR_UPDATE, LR, WEIGHT_DECAY,
           WD_EQUILIBRIUM_ANGLE, WD_EQUILIBRIUM_RATIO, ADAM_EPS_SHARE)  # fmt: skip
CSV_NAME, MANIFEST_NAME = "lens.csv", "lens.json"
FLUSH_SECONDS = 5.0  # pending probes reach lens.csv at least this often (and at close or exit)


class Lens:
    """Attached to one model and its optimizer until `close()` (or the end of a `with` block)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, every: int = 50,
                 out: str | Path = "lens-run", overwrite: bool = False,
                 on_probe: Optional[Callable[[list[dict]], Any]] = None):  # fmt: skip
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every: expected a whole number of steps >= 1, got {every!r}")
        if on_probe is not None and not callable(on_probe):
            raise ConfigError(f"on_probe: expected a function of one probe's rows, got {type(on_probe).__name__}")
        self.on_probe = on_probe  # each probe's rows as they are measured (a tracker: W&B, MLflow, TensorBoard)
        self.out = Path(out)
        if (self.out / CSV_NAME).exists() and not overwrite:
            raise ConfigError(f"out: {self.out / CSV_NAME} exists; pass another out= or overwrite=True to replace it")
        # the user's own module inside torch.compile / DDP: layers named as the user names them
        self._outer = model
        self.model, self.wrappers = unwrap(model)
        model = self.model
        self.optimizer, self.every = optimizer, every
        self.layers = weight_layers(model)
        if not self.layers:
            raise ConfigError("model: it has no weight layer (no Linear, convolution or attention weights) to measure")
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.layers = [(n, m, w) for n, m, w in self.layers if id(w) in owned]
        if not self.layers:
            raise ConfigError("optimizer: it updates none of the model's weight layers; attach the optimizer "
                              "that trains this model")  # fmt: skip
        # every name a tensor has (a tied weight has several), the one a layer is measured under first
        self._names: dict[int, list[str]] = {}
        for pname, p in model.named_parameters(remove_duplicate=False):
            self._names.setdefault(id(p), []).append(pname)
        self.invariance: dict[str, Invariance] = {}
        self.trace_error = ""
        try:
            self.invariance = graph_invariance(model, trace(model))
        except Exception as exc:  # data-dependent control flow and the like: test on a real batch instead
            self.trace_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        self.invariance.update(constructed_invariance(model))  # weight norm: invariant in v by construction
        # the normalizer behind each invariant layer: its mode, eps and the units' variance at the probes, so
        # that a layer whose numbers disagree with the graph is given its cause with the numbers
        self._norm_stats: dict[str, dict[str, Any]] = {}
        self._rescaling = False
        modules = dict(model.named_modules())
        self._norm_hooks = [
            modules[inv.normalizer].register_forward_pre_hook(self._norm_observer(inv.normalizer))
            for inv in {inv.normalizer: inv for inv in self.invariance.values() if inv.normalizer}.values()
            if inv.normalizer in modules
        ]
        self._batch: Optional[tuple[tuple, dict]] = None
        self._capture = None
        if any(n not in self.invariance for n, _, _ in self.layers):  # the batch the wrapper (if any) is called on
            self._capture = self._outer.register_forward_pre_hook(self._keep_batch, with_kwargs=True)
        self.step = 0  # optimizer steps seen
        self.probes = 0
        self._probing = False
        self._before: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._keys: list[tuple[str, str, str]] = []
        self._values: list[torch.Tensor] = []
        self._cos: dict[str, list[torch.Tensor]] = {}  # per layer: the probes' median |cos(w, g)| (numeric check)
        self.started = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MANIFEST_NAME).unlink(missing_ok=True)  # overwrite: an old run's manifest would say "closed"
        self._csv_path = self.out / CSV_NAME
        self._file = open(self._csv_path, "w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(COLUMNS)
        self._pending: list[tuple[int, list, list]] = []
        self._flushed_at = time.monotonic()
        atexit.register(self.flush)  # a loop that dies (an exception, sys.exit) keeps every probe taken
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]
        self.closed = False

    # -- hooks -------------------------------------------------------------------------------
    def _norm_observer(self, name: str):
        """A forward pre-hook on a normalizer: on the forward pass of a probe step (the step the lens is
        about to measure), its mode, eps and the per-channel variance of what it normalizes."""

        def observe(module, args):
            if self._rescaling or self.step % self.every or not args or not isinstance(args[0], torch.Tensor):
                return
            with torch.no_grad():
                x = args[0].detach()
                dims = [d for d in range(x.ndim) if d != 1]
                var = x.double().var(dim=dims, unbiased=False) if x.ndim > 1 else x.double().var(unbiased=False)
                eps = float(getattr(module, "eps", 0.0))
                self._norm_stats[name] = {"module": name, "training": bool(module.training), "eps": eps,
                                          "var": var, "eps_share": eps / (var + eps)}  # fmt: skip

        return observe

    def normalizer_check(self, name: str) -> Optional[dict[str, Any]]:
        """The layer's normalizer at the last probe: its module, mode, eps, the median variance of its
        units' inputs and epsilon's median share eps / (var + eps) (about 0 for exact invariance)."""
        inv = self.invariance.get(name)
        stats = self._norm_stats.get(inv.normalizer) if inv is not None and inv.normalizer else None
        if stats is None:
            return None
        return {"module": stats["module"], "training": stats["training"], "eps": stats["eps"],
                "var_median": float(stats["var"].median()), "eps_share_median": float(stats["eps_share"].median()),
                "eps_share_max": float(stats["eps_share"].max())}  # fmt: skip

    def _keep_batch(self, _module, args, kwargs):
        self._batch = (args, kwargs)

    def _group_of(self) -> dict[int, dict]:
        return {id(p): g for g in self.optimizer.param_groups for p in g["params"]}

    def _resolve_by_rescaling(self) -> None:
        if self._batch is None:
            return
        args, kwargs = self._batch
        self._rescaling = True  # its passes run rescaled weights: the normalizers' watch skips them
        try:
            found = rescale_invariance(self.model, args, kwargs)
        finally:
            self._rescaling = False
        for name, inv in found.items():
            self.invariance.setdefault(name, inv)
        self._batch = None
        if self._capture is not None:
            self._capture.remove()
            self._capture = None

    def _add(self, metric: str, layer: str, stat: str, value: torch.Tensor | float) -> None:
        self._keys.append((layer, metric, stat))
        self._values.append(value.reshape(1) if isinstance(value, torch.Tensor) else float(value))

    def _add_summaries(self, metric: str, layer: str, per_unit: torch.Tensor) -> None:
        self._keys.extend((layer, metric, s) for s in STATS)
        self._values.append(summarize(per_unit.unsqueeze(0), STATS).flatten())

    def _pre(self, optimizer, args, kwargs) -> None:
        # every step passes here: the test and the return are all a step between probes pays
        self._probing = self.step % self.every == 0
        if self._probing:
            with torch.no_grad():
                self._measure_before(optimizer)

    def _post(self, optimizer, args, kwargs) -> None:
        if self._probing:
            with torch.no_grad():
                self._measure_after(optimizer)
            self._probing = False
        self.step += 1

    def _measure_before(self, optimizer) -> None:
        if self._capture is not None:
            self._resolve_by_rescaling()
        groups = self._group_of()
        is_sgd = isinstance(optimizer, torch.optim.SGD)
        for name, _mod, p in self.layers:
            if p.grad is None:
                continue
            group = groups[id(p)]
            lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
            inv = self.invariance.get(name)
            kind = inv.kind if inv is not None else None
            w, g = p.detach().flatten(1), p.grad.detach().flatten(1)
            rows, wn2, wn, _gn = weight_metrics(w, g)
            if inv is not None:
                self._add(SCALE_INVARIANT, name, "value", 1.0 if kind else 0.0)
            self._add(LR, name, "value", lr)
            self._add(WEIGHT_DECAY, name, "value", wd)
            # the per-unit rows summarized together (one sort), |cos| last for the numeric check
            names, mat = [WEIGHT_NORM_SQ, GRAD_COS], [wn2, rows[3]]
            if kind == UNIT and is_sgd:
                names.append(EFF_LR)
                mat.append(lr / wn2)
            summ = summarize(torch.stack(mat + [rows[3].abs()]), STATS)
            self._keys.extend((name, metric, stat) for metric in names for stat in STATS)
            self._values.append(summ[:-1].flatten())
            check = summ[-1, STATS.index("median")]
            whole = None
            if kind == LAYER:
                total = wn2.sum()
                whole = (w / total.sqrt()).flatten()
                check = (w * g).sum() / (total.sqrt() * g.norm()).clamp_min(1e-30)
                self._add(WEIGHT_NORM_SQ, name, "value", total)
                self._add(GRAD_COS, name, "value", check)
                check = check.abs()
                if is_sgd:
                    self._add(EFF_LR, name, "value", lr / total)
            self._cos.setdefault(name, []).append(check)
            self._before[name] = (directions(w, wn), whole)

    def _measure_after(self, optimizer) -> None:
        groups = self._group_of()
        is_sgd = isinstance(optimizer, torch.optim.SGD)
        for name, _mod, p in self.layers:
            if name not in self._before:
                continue
            before, whole = self._before.pop(name)
            w = p.detach().flatten(1)
            turn = turned(before, w)
            self._add_summaries(ANGULAR_UPDATE, name, turn)
            measured = None
            if whole is not None:
                measured = turned(whole, w.flatten())
                self._add(ANGULAR_UPDATE, name, "value", measured)
            group = groups[id(p)]
            inv = self.invariance.get(name)
            wd = float(group.get("weight_decay", 0.0))
            if is_sgd and wd > 0 and inv is not None and inv.kind:
                if measured is None:  # per unit: the root mean square (Eq. 23 balances squared steps)
                    measured = turn.square().mean().sqrt()
                angle = wd_equilibrium_angle(float(group["lr"]), wd, float(group.get("momentum", 0.0)))
                self._add(WD_EQUILIBRIUM_ANGLE, name, "value", angle)
                self._add(WD_EQUILIBRIUM_RATIO, name, "value", measured / angle)
            share = _adam_eps_share(optimizer.state.get(p, {}), group)
            if share is not None:
                self._add(ADAM_EPS_SHARE, name, "value", share)
        self._flush_rows(self.step)
        self.probes += 1

    def _flush_rows(self, step: int) -> None:
        """Keep this probe's numbers (still tensors, on their device); write what is pending every
        FLUSH_SECONDS, so that a probe costs its measurements and not a host copy and a file write."""
        self._pending.append((step, self._keys, self._values))
        self._keys, self._values = [], []
        if self.on_probe is not None:  # a tracker wants each probe now: this probe's host copy, then the file
            self.on_probe([dict(zip(COLUMNS, row)) for row in self.flush()])
        elif time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> list[tuple]:
        """Write every pending probe to lens.csv (one host copy for all of them) and flush the file;
        returns the rows written, (step, layer, metric, stat, value)."""
        if not self._pending or self._file.closed:
            return []
        tensors = [v for _, _, values in self._pending for v in values if isinstance(v, torch.Tensor)]
        # float64 on the host: the summaries are the weights' own dtype (float32 mostly), written exactly
        copied = iter(torch.cat([t.to(tensors[0].device, torch.float64) for t in tensors]).tolist() if tensors else [])
        rows = []
        for step, keys, values in self._pending:
            flat: list[float] = []
            for v in values:
                flat.extend([next(copied) for _ in range(v.numel())] if isinstance(v, torch.Tensor) else [v])
            rows.extend((step, layer, metric, stat, v) for (layer, metric, stat), v in zip(keys, flat))
        self._writer.writerows([*row[:4], repr(row[4])] for row in rows)
        self._file.flush()
        self._pending = []
        self._flushed_at = time.monotonic()
        return rows

    # -- the end -----------------------------------------------------------------------------
    def numeric_check(self, name: str) -> dict[str, Any]:
        """How the probes' |cos(w, g)| bears out the layer's invariance: the largest median |cos|
        over probes (the whole matrix's |cos| for a layer-invariant one)."""
        seen = self._cos.get(name, [])
        inv = self.invariance.get(name)
        worst = float(torch.stack(seen).max()) if seen else None
        out: dict[str, Any] = {"max_median_abs_cos": worst, "probes": len(seen), "tolerance": COS_TOLERANCE}
        if worst is None or inv is None:
            out["agrees"] = None
        elif inv.kind and inv.detached:  # invariant, but a detached statistic: no orthogonality to expect
            out["agrees"] = None
            out["detached"] = inv.detached
        elif inv.kind:
            out["agrees"] = worst <= COS_TOLERANCE
        else:
            out["agrees"] = not worst <= COS_TOLERANCE / 10  # a non-invariant layer whose cos stays tiny: say so
        return out

    def _own_name(self, layer: str, p: torch.Tensor) -> str:
        """The tensor's name under the layer it is measured as (a tied weight has others too)."""
        names = self._names.get(id(p), [layer])
        return next((n for n in names if n.rpartition(".")[0] == layer or n == layer), names[0])

    def parameters(self) -> dict[str, Any]:
        """Every tensor the optimizer steps, accounted for: measured as a layer above, or counted by kind
        (bias, a normalizer's gain or shift, an embedding, weight norm's gain g, another parameter),
        with their names, so that nothing the optimizer steps is missing without a word."""
        measured = {id(p) for _, _, p in self.layers}
        owner = {id(p): m for _, m in self.model.named_modules() for p in m._parameters.values() if p is not None}
        stepped = list({id(p): p for g in self.optimizer.param_groups for p in g["params"]}.values())
        by_kind: dict[str, list[str]] = {}
        for p in stepped:
            if id(p) in measured:
                continue
            name = self._names.get(id(p), ["(a tensor not in the model)"])[0]
            by_kind.setdefault(_kind_of(name, p, owner.get(id(p))), []).append(name)
        return {
            "stepped": len(stepped),
            "measured": sum(1 for p in stepped if id(p) in measured),
            "by_kind": {k: {"count": len(v), "names": v} for k, v in sorted(by_kind.items())},
        }

    def table(self):
        """Every probe so far as a tidy pandas table (step, layer, metric, stat, value), for a notebook."""
        self.flush()
        return tidy(self.out)

    def manifest(self) -> dict[str, Any]:
        groups = self._group_of()
        layers = []
        for name, mod, p in self.layers:
            inv = self.invariance.get(name)
            g = groups[id(p)]
            layers.append({
                "layer": name, "module": type(mod).__name__, "shape": list(p.shape),
                "tensor": self._own_name(name, p), "shared_with": [n for n in self._names[id(p)]
                                                                    if n != self._own_name(name, p)],
                "scale_invariant": (1 if inv.kind else 0) if inv else None,
                "invariance": inv.kind if inv else None, "found_by": inv.source if inv else None,
                "reason": inv.reason if inv else "not determined (no forward pass seen before the first probe)",
                "numeric_check": self.numeric_check(name), "normalizer": self.normalizer_check(name),
                "group": {k: _plain(v) for k, v in g.items() if k != "params"},
            })  # fmt: skip
        return {
            "lens": 1,
            "every": self.every,
            "steps_seen": self.step,
            "probes": self.probes,
            "optimizer": type(self.optimizer).__name__,
            "model": type(self.model).__name__,
            "wrappers": self.wrappers,
            "parameters": self.parameters(),
            "device": str(next(iter(self.model.parameters())).device),
            "traced": not self.trace_error,
            "trace_error": self.trace_error,
            "layers": layers,
            "closed": True,
            "versions": {"torch": torch.__version__, "python": platform.python_version(), "normlab": _version()},
            "wall_seconds": round(time.time() - self.started, 3),
        }

    def close(self) -> Path:
        """Remove the hooks, flush lens.csv and write lens.json; returns the folder. Idempotent."""
        if self.closed:
            return self.out
        for h in self._handles + self._norm_hooks:
            h.remove()
        if self._capture is not None:
            self._capture.remove()
        self.flush()
        atexit.unregister(self.flush)
        self._file.close()
        atomic_write_text(self.out / MANIFEST_NAME, json.dumps(self.manifest(), indent=1) + "\n")
        self.closed = True
        return self.out

    def __enter__(self) -> "Lens":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


COS_TOLERANCE = 1e-2  # a scale-invariant layer's median |cos(w, g)| stays below this (batch norm's
# epsilon breaks the invariance slightly for units whose pre-normalizer variance is tiny)


def _adam_eps_share(state: dict, group: dict) -> Optional[torch.Tensor]:
    """Share of entries with eps >= sqrt(v_hat) (v_hat = the bias-corrected second moment the step
    just used; AMSGrad: its running maximum), or None for a group that is not Adam-like."""
    v = state.get("max_exp_avg_sq") if group.get("amsgrad") else state.get("exp_avg_sq")
    if v is None or "eps" not in group or "betas" not in group or "step" not in state:
        return None
    t = float(state["step"])
    v_hat = v / (1.0 - group["betas"][1] ** t)
    return (v_hat.sqrt() <= group["eps"]).double().mean()


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _kind_of(name: str, p: torch.Tensor, owner: Optional[nn.Module]) -> str:
    """What a stepped tensor that is not measured as a layer is, for the accounting in lens.json."""
    if ".parametrizations.weight.original0" in f".{name}":
        return "weight-norm gain g"
    if isinstance(owner, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(owner, _NORMS) or (owner is not None and type(owner).__name__.lower().endswith("norm")):
        return "normalizer gain or shift"
    if name.rsplit(".", 1)[-1] in ("bias", "in_proj_bias"):
        return "bias"
    if p.ndim <= 1:
        return "vector or scalar parameter"
    return "other matrix (no rows of units)"


def _plain(v: Any) -> Any:
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return str(v)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("normlab")
    except Exception:
        return "unknown"


def tidy(folder: str | Path):
    """A lens folder as one tidy pandas table: lens.csv's rows (step, layer, metric, stat, value), each
    with its layer's module, scale invariance and what decided it (from lens.json, once it is written)."""
    table, manifest = read(folder)
    layers = {e["layer"]: e for e in manifest.get("layers", [])}
    for column, key in (("module", "module"), ("invariance", "invariance"), ("found_by", "found_by")):
        table[column] = table["layer"].map(lambda n, key=key: layers.get(n, {}).get(key))
    return table


class TensorBoardProbes:
    """An `on_probe` that writes each probe's numbers to TensorBoard as scalars LAYER/METRIC/STAT at
    the probe's optimizer step (torch's SummaryWriter; needs the tensorboard package)."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "on_probe: TensorBoard needs the tensorboard package; pip install 'normlab[export]'"
            ) from None
        self.writer = SummaryWriter(str(log_dir))

    def __call__(self, rows: list[dict]) -> None:
        for r in rows:
            self.writer.add_scalar(f"{r['layer']}/{r['metric']}/{r['stat']}", r["value"], r["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read(folder: str | Path) -> tuple[Any, dict]:
    """(lens.csv as a pandas table, lens.json as a dict) of a lens folder; a clear error when it is not one."""
    import pandas as pd

    folder = Path(folder)
    if not (folder / CSV_NAME).is_file():
        raise ConfigError(f"{folder}: no {CSV_NAME} here; pass the folder given to normlab.lens.attach(out=...)")
    manifest: dict = {}
    if (folder / MANIFEST_NAME).is_file():
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    # layer names are text even where they read as numbers (nn.Sequential's "0", "1", ...)
    table = pd.read_csv(io.StringIO((folder / CSV_NAME).read_text()), dtype={"layer": str, "metric": str, "stat": str})
    return table, manifest
