"""exp_lr (K14): weight decay on a scale-invariant network is an exponentially growing learning rate.

Li & Arora (2020); Grosse ch. 5, §5.1. If the loss is invariant to the scale of every trained
weight, grad L(c w) = grad L(w) / c. Then SGD with learning rate eta and weight decay lambda,
    w_{t+1} = (1 - eta lambda) w_t - eta grad L(w_t),
and SGD without weight decay whose learning rate grows as eta_t = eta (1 - eta lambda)^(-2t-1),
    v_{t+1} = v_t - eta_t grad L(v_t),
visit the same functions: v_t = w_t (1 - eta lambda)^(-t) at every step (substitute and use the
invariance). With heavy-ball momentum gamma the same holds with alpha, the larger root of
x^2 - (1 + gamma - eta lambda) x + gamma = 0, in place of 1 - eta lambda: v_t = w_t alpha^(-t),
eta_t = eta alpha^(-2t-1) and momentum gamma / alpha^2 for the no-decay run.

The network: the engine's BN MLP (BN before every ReLU, no affine, no bias, BN eps 1e-12) with
its read-out held fixed at its initialization, so every trained weight feeds BN. Both runs see the
same batches, in float64, with the updates written out in heavy-ball form. (In torch's buffer
form, b = gamma b + g and w -= eta_t b, a learning rate that grows by alpha^-2 per step turns the
same gamma into heavy-ball momentum gamma / alpha^2: that is Li & Arora's "same momentum".)
No training loop of the engine runs: the comparison is written to a table next to the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, EXACT, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.data import Batcher, load_dataset
from normlab.engine.models import build_model
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, ModelConfig
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Setting, TableExperiment

_STAT = (
    "max over logged steps and seeds of the twin gap over the run's own rounding floor: gap = max(relative "
    "difference of the two networks' outputs on a fixed batch, largest distance between their unit-normalized "
    "incoming weight vectors); floor = the same gap between the weight-decay run and a copy of it moved by one "
    "ulp at every update, at the same step (at least float64 epsilon)"
)
K14 = Claim(
    "K14",
    EXACT,
    "SGD with weight decay lambda on a scale-invariant network and SGD without it but with learning rate "
    "eta (1 - eta lambda)^(-2t-1) compute the same function at every step (Li & Arora's 2020 theorem; the chapter "
    "cites it in §4.3 only for its corollary, that a constant effective LR needs an exponentially growing LR)",
    _STAT,
    Rule("<", "floor_factor"),
)
K14_MOMENTUM = Claim(
    "K14-momentum",
    EXACT,
    "With heavy-ball momentum the same equivalence holds with alpha, the larger root of "
    "x^2 - (1 + gamma - eta lambda) x + gamma = 0 (Li & Arora's 2020 theorem, not a statement of the chapter)",
    _STAT,
    Rule("<", "floor_factor"),
)
K14_RANGE = Claim(
    "K14-range",
    DESCRIPTIVE,
    "How far float64 carries the growing learning rate: the step at which eta_t would pass the largest float64",
    "log10 of the largest eta_t reached in the run; the detail gives the overflow step",
    Rule("none"),
)


@dataclass
class ExpLRProblem:
    steps: int = param(2000, min=1, help="updates of each run")
    log_every: int = param(50, min=1, help="compare the two runs every this many steps")
    lr: float = param(0.1, min=0.0, help="eta")
    weight_decay: float = param(0.01, min=0.0, help="lambda of the run with weight decay")
    momentum: float = param(0.9, min=0.0, max=0.999, help="gamma of the momentum variant")
    batch_size: int = param(128, min=1)
    probe_examples: int = param(256, min=1, help="the fixed batch whose outputs are compared")
    width: int = param(100, min=1)
    depth: int = param(2, min=1)
    norm_eps: float = param(1e-12, min=1e-30, help="BN epsilon (breaks exact invariance if large)")


@dataclass
class ExpLRAnalysis(Analysis):
    floor_factor: float = param(
        10.0, min=1.0, help="the twin gap may reach this many times the rounding floor at any logged step"
    )


@dataclass
class ExpLRConfig(ExperimentConfig):
    problem: ExpLRProblem = field(default_factory=ExpLRProblem)
    analysis: ExpLRAnalysis = field(default_factory=ExpLRAnalysis)


def growth_root(lr: float, wd: float, momentum: float) -> float:
    """alpha: 1 - eta lambda without momentum, else the larger root of x^2 - (1 + gamma - eta lambda) x + gamma."""
    if momentum == 0:
        return 1.0 - lr * wd
    b = 1.0 + momentum - lr * wd
    return (b + math.sqrt(b * b - 4.0 * momentum)) / 2.0


def overflow_step(lr: float, alpha: float) -> float:
    """The first t at which eta alpha^(-2t-1) exceeds the largest float64."""
    if alpha >= 1.0:
        return float("inf")
    return ((math.log(np.finfo(np.float64).max) - math.log(lr)) / -math.log(alpha) - 1.0) / 2.0


def _network(cfg: ExpLRConfig, seed: int, shape, classes: int):
    p = cfg.problem
    raw = C.apply_overrides(
        C.to_dict(cfg.run.model),
        {"arch": "mlp", "width": p.width, "depth": p.depth, "norm": "batch", "norm_position": "before"},
    )
    raw.update({"norm_affine": False, "bias": "false", "norm_eps": p.norm_eps})
    torch.manual_seed(seed)
    model = build_model(C.from_dict(ModelConfig, raw), shape, classes).double().train()
    for q in model.out.parameters():
        q.requires_grad_(False)  # the read-out is fixed: every trained weight then feeds BN
    return model


def _compare(a, b, x) -> tuple[float, float]:
    with torch.no_grad():
        fa, fb = a(x), b(x)
        out = float((fa - fb).norm() / fa.norm())
        ang = 0.0
        for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            if pa.requires_grad:
                ua, ub = pa / pa.norm(dim=1, keepdim=True), pb / pb.norm(dim=1, keepdim=True)
                ang = max(ang, float((ua - ub).norm(dim=1).max()))
    return out, ang


EPS64 = float(np.finfo(np.float64).eps)


def compare_runs(cfg: ExpLRConfig, seed: int, momentum: float, exponent_offset: int = 1) -> pd.DataFrame:
    """Train the weight-decay run (a), the growing-LR run (b) and the rounding floor (c: run a again,
    its weights moved by one ulp after every update) side by side on the same batches. `exponent_offset`: the schedule
    eta alpha^(-2t-offset); 1 is Li & Arora's, any other value a wrong schedule (a negative control)."""
    p = cfg.problem
    data = load_dataset(cfg.run.data)
    x_probe = data.x_train[: p.probe_examples].double()
    a = _network(cfg, seed, data.input_shape, data.num_classes)
    b = _network(cfg, seed, data.input_shape, data.num_classes)
    c = _network(cfg, seed, data.input_shape, data.num_classes)
    alpha = growth_root(p.lr, p.weight_decay, momentum)
    gamma_b = momentum / alpha**2
    params_a = [q for q in a.parameters() if q.requires_grad]
    params_b = [q for q in b.parameters() if q.requires_grad]
    params_c = [q for q in c.parameters() if q.requires_grad]
    nudges = torch.Generator().manual_seed(seed + 7919)  # the floor's own stream, apart from the batches

    def nudge() -> None:
        """Move every weight of run c one ulp up or down (a fair coin per weight): rounding's size at
        every update, the null model of two float64 computations of one trajectory."""
        for q in params_c:
            up = torch.rand(q.shape, generator=nudges, dtype=q.dtype) < 0.5
            q.copy_(torch.nextafter(q, torch.where(up, math.inf, -math.inf)))

    with torch.no_grad():
        nudge()
    prev_a = [q.detach().clone() for q in params_a]  # w_{-1} = w_0: no initial velocity
    prev_c = [q.detach().clone() for q in params_c]
    prev_b = [alpha * q.detach().clone() for q in params_b]  # v_{-1} = alpha w_{-1}
    batches = Batcher(data.x_train, data.y_train, p.batch_size, torch.Generator().manual_seed(seed))
    rows = []
    for t in range(p.steps + 1):
        if t % p.log_every == 0 or t == p.steps:
            out, ang = _compare(a, b, x_probe)
            floor_out, floor_ang = _compare(a, c, x_probe)
            lr_t = p.lr * alpha ** (-2 * t - exponent_offset)
            norm_b = math.sqrt(sum(float(q.detach().pow(2).sum()) for q in params_b))
            rows.append(
                {"seed": seed, "momentum": momentum, "step": t, "output_rel_diff": out, "direction_diff": ang,
                 "floor_output_rel_diff": floor_out, "floor_direction_diff": floor_ang,
                 "lr_growing": lr_t, "weight_norm_growing": norm_b, "alpha": alpha}
            )  # fmt: skip
        if t == p.steps:
            break
        x, y = batches.next()
        x = x.double()
        ga = torch.autograd.grad(F.cross_entropy(a(x), y), params_a)
        gb = torch.autograd.grad(F.cross_entropy(b(x), y), params_b)
        gc = torch.autograd.grad(F.cross_entropy(c(x), y), params_c)
        lr_t = p.lr * alpha ** (-2 * t - exponent_offset)
        with torch.no_grad():
            for params, prevs, grads in ((params_a, prev_a, ga), (params_c, prev_c, gc)):
                for q, prev, g in zip(params, prevs, grads):  # heavy ball with coupled weight decay
                    step = momentum * (q - prev) - p.lr * (g + p.weight_decay * q)
                    prev.copy_(q)
                    q.add_(step)
            nudge()
            for q, prev, g in zip(params_b, prev_b, gb):  # heavy ball, no decay, growing learning rate
                step = gamma_b * (q - prev) - lr_t * g
                prev.copy_(q)
                q.add_(step)
    return pd.DataFrame(rows)


def compare_job(job: tuple[ExpLRConfig, int, float]) -> pd.DataFrame:
    """compare_runs(cfg, seed, momentum) for one job of `pmap`."""
    return compare_runs(*job)


def twin_gap(s: Setting, plain: bool) -> Estimate:
    """The largest gap between the two twins (outputs and unit directions), over steps and seeds."""
    p, t = s.cfg.problem, s.tables.read("equivalence")
    d = t[(t["momentum"] == 0) == plain] if len(t) else t
    if d.empty:
        return Estimate.missing("no rows for this variant in equivalence.csv")
    ratio = floor_ratio(d)
    at = d.loc[ratio.idxmax()]
    gap = d[["output_rel_diff", "direction_diff"]].max(axis=1)
    end = d[d["step"] == d["step"].max()]
    return Estimate(
        float(ratio.max()),
        n=int(d["seed"].nunique()),
        detail=f"{int(d['step'].max())} steps, eta {p.lr:g}, lambda {p.weight_decay:g}, alpha "
        f"{float(d['alpha'].iloc[0]):.6g}; worst at step {int(at['step'])} (seed {int(at['seed'])}): twin gap "
        f"{gap[ratio.idxmax()]:.2g} against a floor of {_floor(d)[ratio.idxmax()]:.2g}; largest twin gap "
        f"{gap.max():.2g}, at the last step the gap {gap[end.index].max():.2g} and the floor "
        f"{_floor(d)[end.index].max():.2g} (both grow with the steps: rounding, amplified); the no-decay "
        f"run's weight norm grew to {d['weight_norm_growing'].max():.3g}",
    )


def _floor(d: pd.DataFrame) -> pd.Series:
    """The rounding floor at each logged step: the gap between run a and its one-ulp copy, at least eps."""
    return d[["floor_output_rel_diff", "floor_direction_diff"]].max(axis=1).clip(lower=EPS64)


def floor_ratio(d: pd.DataFrame) -> pd.Series:
    """Per logged step: the twin gap in units of that step's rounding floor."""
    return d[["output_rel_diff", "direction_diff"]].max(axis=1) / _floor(d)


def lr_range(s: Setting) -> Estimate:
    """How far (log10) the growing learning rate climbed, and where float64 would overflow."""
    p, t = s.cfg.problem, s.tables.read("equivalence")
    if not len(t):
        return Estimate.missing("equivalence.csv is empty")
    reach = [
        f"{'momentum' if m else 'plain'}: overflow at step {overflow_step(p.lr, float(g['alpha'].iloc[0])):.3g}"
        for m, g in t.groupby("momentum")
    ]
    return Estimate(float(np.log10(t["lr_growing"].max())), n=int(t["seed"].nunique()), detail="; ".join(reach))


class ExpLR(TableExperiment):
    name = "exp_lr"
    title = "K14: weight decay on a scale-invariant network equals an exponentially growing learning rate"
    short_names = {"K14": "decay as a growing learning rate"}
    claims = (K14, K14_MOMENTUM, K14_RANGE)
    estimators = {K14: partial(twin_gap, plain=True), K14_MOMENTUM: partial(twin_gap, plain=False), K14_RANGE: lr_range}
    config_class = ExpLRConfig

    def derived(self, cfg: ExpLRConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        with torch.random.fork_rng(devices=[]):
            jobs = [(cfg, s, m) for m in (0.0, cfg.problem.momentum) for s in cfg.seed_list]
            tables = pmap(compare_job, jobs)  # independent pairs of runs: spread over the workers
        return {"equivalence": pd.concat(tables, ignore_index=True)}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        a = self.typed_config(tables).analysis
        t = tables.read("equivalence")
        if t.empty:
            return []
        fig, axes = P.figure(ncols=2, width=4.4)
        col = P.colors(["plain", "momentum"])
        for m, g in t.groupby("momentum"):
            name = "momentum" if m else "plain"
            for column, ls in (("output_rel_diff", "-"), ("direction_diff", "--")):
                d = g.rename(columns={column: "value"})[["seed", "step", "value"]]
                d = d.assign(value=d["value"].clip(lower=1e-18))
                P.mean_band(axes[0, 0], d, f"{name}: {column.replace('_', ' ')}", col[name])
                axes[0, 0].lines[-1].set_linestyle(ls)
            d = g.rename(columns={"lr_growing": "value"})[["seed", "step", "value"]]
            P.mean_band(axes[0, 1], d, f"{name}: eta_t", col[name])
        for m, g in t.groupby("momentum"):  # the floor each twin gap is judged against, times the factor
            name = "momentum" if m else "plain"
            d = g.assign(value=_floor(g) * a.floor_factor)[["seed", "step", "value"]]
            P.mean_band(axes[0, 0], d, f"{name}: {a.floor_factor:g} x rounding floor", "#d62728" if m else "#ff9896")
            axes[0, 0].lines[-1].set_linestyle(":")
        axes[0, 0].set(yscale="log", xlabel="step", ylabel="difference", title="Weight decay vs growing LR")
        P.legend(axes[0, 0], fontsize=6)
        axes[0, 1].set(yscale="log", xlabel="step", ylabel="learning rate of the no-decay run", title="eta_t")
        P.legend(axes[0, 1], fontsize=7)
        return [P.save(fig, out / "exp_lr.png")]
