"""identities (K6, K7): the exact gradient identities behind scale invariance and batch centering.

Grosse ch. 5, §4.3 (Eqs. 16-18) and §4.2 (Eqs. 13-14). Both are algebra, so they are checked as
maximum errors (kind `exact`) in float64, through the engine's own models, on a batch of real
data, at the initialization of every seed and after a few SGD steps:
  K6   A unit whose incoming weights w_j feed batch norm has a loss that ignores the scale of w_j:
       w_j . grad J(w_j) = 0 (Eq. 16 with k = 0) and grad J(gamma w_j) = grad J(w_j) / gamma
       (Eq. 18). BN's epsilon breaks this slightly; the check uses eps = 1e-12 and also reports the
       deviation at torch's default eps = 1e-5.
  K7   With batch centering after a layer (S = R - 1 mu(R)^T, Eq. 13), backprop through the centering
       subtracts the mean of the output gradient (Eq. 14), so the gradient that reaches R is centered
       and the weight gradient R_bar^T A equals S_bar^T A_tilde, the gradient computed from centered
       inputs: the inputs' mean drops out.
No training loop runs: the tables are computed at run time and written next to the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, EXACT, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.data import load_dataset
from normlab.engine.models import build_model
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, ModelConfig
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Setting, TableExperiment

K6_ORTH = Claim(
    "K6-orth",
    EXACT,
    "Incoming weights of a unit that feeds BN are orthogonal to their gradient: w . grad J(w) = 0 "
    "(Grosse ch. 5, §4.3, Eq. 16 with k = 0); float64, BN eps 1e-12",
    "max over units, layers, positions (BN before/after ReLU), checkpoints and seeds of |cos(w_j, grad_j)|",
    Rule("<", "orth_tol"),
)
K6_SCALE = Claim(
    "K6-scale",
    EXACT,
    "Scaling w_j by gamma scales its gradient by 1/gamma: grad J(gamma w) = grad J(w) / gamma (Grosse ch. 5, "
    "§4.3, Eq. 18); float64, BN eps 1e-12, a different gamma per unit",
    "max over units, layers, positions, checkpoints and seeds of ||grad J(gamma w) - grad J(w)/gamma|| / "
    "||grad J(w)/gamma||",
    Rule("<", "scale_tol"),
)
K6_EPS = Claim(
    "K6-eps",
    DESCRIPTIVE,
    "At torch's default BN eps (1e-5) the invariance is only approximate",
    "the same maximum |cos(w_j, grad_j)| with eps 1e-5",
    Rule("none"),
)
K7 = Claim(
    "K7",
    EXACT,
    "With batch centering after a layer, its weight gradient equals the gradient computed from centered "
    "inputs: R_bar^T A = S_bar^T (A - 1 m^T) (Grosse ch. 5, §4.2, Eqs. 13-14); float64",
    "max over layers, checkpoints and seeds of ||W_bar - S_bar^T A_tilde||_F / ||W_bar||_F",
    Rule("<", "center_tol"),
)
K7_GRAD = Claim(
    "K7-gradcenter",
    EXACT,
    "Backprop through batch centering centers the gradient: R_bar = S_bar - 1 mu(S_bar)^T has zero column "
    "means (Grosse ch. 5, §4.2, Eq. 14); float64",
    "max over layers, checkpoints and seeds of ||1^T R_bar|| / (sqrt(N) ||R_bar||_F)",
    Rule("<", "center_tol"),
)


@dataclass
class IdentityProblem:
    examples: int = param(256, min=4, help="the first N training examples form the batch")
    width: int = param(100, min=2, help="hidden units per layer")
    depth: int = param(3, min=1, help="hidden layers")
    sgd_steps: int = param(20, min=0, help="second checkpoint: after this many SGD steps (lr 0.1) on the batch")
    gamma_range: list[float] = param(
        default_factory=lambda: [0.1, 10.0], help="K6-scale: per-unit gamma, log-uniform in this range"
    )
    eps_exact: float = param(1e-12, min=1e-30, help="BN epsilon of the exact checks")
    eps_default: float = param(1e-5, min=1e-30, help="BN epsilon whose deviation is reported")


@dataclass
class IdentityAnalysis(Analysis):
    orth_tol: float = param(1e-8, min=0.0, help="K6-orth: largest |cos(w, grad)| allowed")
    scale_tol: float = param(1e-8, min=0.0, help="K6-scale: largest relative error allowed")
    center_tol: float = param(1e-10, min=0.0, help="K7: largest relative error allowed")


@dataclass
class IdentitiesConfig(ExperimentConfig):
    problem: IdentityProblem = field(default_factory=IdentityProblem)
    analysis: IdentityAnalysis = field(default_factory=IdentityAnalysis)


def _model(cfg: IdentitiesConfig, norm: str, position: str, eps: float, seed: int, shape, classes: int):
    p = cfg.problem
    raw = C.apply_overrides(
        C.to_dict(cfg.run.model),
        {
            "arch": "mlp",
            "width": p.width,
            "depth": p.depth,
            "norm": norm,
            "norm_position": position,
            "norm_eps": eps,
            "norm_affine": False,
            "bias": "false",
        },
    )
    torch.manual_seed(seed)
    return build_model(C.from_dict(ModelConfig, raw), shape, classes).double().train()


def _checkpoints(model, x, y, steps: int):
    """The model at init, then after `steps` SGD steps on the batch (a state that is not special)."""
    yield "init"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    yield f"sgd{steps}"


def _scale_rows(cfg: IdentitiesConfig, seed: int, x, y, shape, classes) -> list[dict]:
    p = cfg.problem
    rows = []
    for position in ("before", "after"):
        for eps in (p.eps_exact, p.eps_default):
            model = _model(cfg, "batch", position, eps, seed, shape, classes)
            for ckpt in _checkpoints(model, x, y, p.sgd_steps):
                for wl in model.weight_layers:
                    if wl.invariance != "unit":
                        continue
                    w = wl.module.weight
                    g = torch.autograd.grad(F.cross_entropy(model(x), y), w)[0]
                    cos = (w * g).sum(1).abs() / (w.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-300)
                    gen = torch.Generator().manual_seed(seed)
                    lo, hi = torch.tensor(p.gamma_range, dtype=torch.float64).log()
                    gamma = (lo + (hi - lo) * torch.rand(w.shape[0], 1, generator=gen, dtype=torch.float64)).exp()
                    w0 = w.detach().clone()
                    with torch.no_grad():
                        w.mul_(gamma)
                    g_scaled = torch.autograd.grad(F.cross_entropy(model(x), y), w)[0]
                    with torch.no_grad():
                        w.copy_(w0)
                    expected = g / gamma
                    scale_err = (g_scaled - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-300)
                    base = {"seed": seed, "position": position, "eps": eps, "checkpoint": ckpt, "layer": wl.name}
                    rows.append({**base, "check": "orth", "max_error": float(cos.detach().max())})
                    rows.append({**base, "check": "scale", "max_error": float(scale_err.detach().max())})
    return rows


def _center_rows(cfg: IdentitiesConfig, seed: int, x, y, shape, classes) -> list[dict]:
    """Batch centering before each ReLU: compare autograd's weight gradient with S_bar^T A_tilde."""
    model = _model(cfg, "center", "before", cfg.problem.eps_exact, seed, shape, classes)
    rows = []
    for ckpt in _checkpoints(model, x, y, cfg.problem.sgd_steps):
        inputs, pre, post = {}, {}, {}
        hooks = []
        for i, block in enumerate(model.blocks):
            hooks.append(block.weight_layer.register_forward_hook(lambda m, a, out, i=i: inputs.update({i: a[0]})))
            hooks.append(block.weight_layer.register_forward_hook(lambda m, a, out, i=i: pre.update({i: out})))
            hooks.append(block.norm.register_forward_hook(lambda m, a, out, i=i: post.update({i: out})))
        loss = F.cross_entropy(model(x), y)
        for h in hooks:
            h.remove()
        weights = [b.weight_layer.weight for b in model.blocks]
        grads = torch.autograd.grad(loss, weights + [pre[i] for i in pre] + [post[i] for i in post])
        n = len(weights)
        w_bar, r_bar, s_bar = grads[:n], grads[n : 2 * n], grads[2 * n :]
        for i in range(n):
            a = inputs[i].detach()
            a_tilde = a - a.mean(0, keepdim=True)
            predicted = s_bar[i].T @ a_tilde
            err = float((w_bar[i] - predicted).norm() / w_bar[i].norm())
            col = float(r_bar[i].sum(0).norm() / (len(a) ** 0.5 * r_bar[i].norm()))
            base = {"seed": seed, "position": "before", "eps": 0.0, "checkpoint": ckpt, "layer": f"layer{i + 1}"}
            rows.append({**base, "check": "center", "max_error": err})
            rows.append({**base, "check": "gradcenter", "max_error": col})
    return rows


def max_error(s: Setting, check: str, eps: str) -> Estimate:
    """The largest error of one identity over layers, checkpoints and seeds (eps: BN's epsilon in the
    check, `exact` or `default` from the config's problem section, `none` for the centering rows)."""
    t, p = s.tables.read("identities"), s.cfg.problem
    value = {"exact": p.eps_exact, "default": p.eps_default, "none": 0.0}[eps]
    d = t[(t["check"] == check) & (t["eps"] == value)] if len(t) else t
    if d.empty:
        return Estimate.missing(f"no '{check}' rows in identities.csv")
    worst = d.loc[d["max_error"].idxmax()]
    where = ", ".join(f"{k} {worst[k]}" for k in ("layer", "position", "checkpoint", "seed"))
    by_ckpt = d.groupby("checkpoint")["max_error"].max()
    detail = f"worst at {where}; by checkpoint: " + ", ".join(f"{k} {v:.2g}" for k, v in by_ckpt.items())
    if (check, eps) == ("orth", "exact"):
        dflt = t[(t["check"] == "orth") & (t["eps"] == p.eps_default)]["max_error"].max()
        detail += f"; at eps {p.eps_default:g} the same maximum is {dflt:.2g}"
    return Estimate(float(d["max_error"].max()), n=int(d["seed"].nunique()), detail=detail)


class Identities(TableExperiment):
    name = "identities"
    title = "K6, K7: scale invariance and the batch-centering gradient identity, as exact checks"
    short_names = {"K6": "scale-invariance identities", "K7": "the batch-centering gradient"}
    claims = (K6_ORTH, K6_SCALE, K6_EPS, K7, K7_GRAD)
    estimators = {
        K6_ORTH: partial(max_error, check="orth", eps="exact"),
        K6_SCALE: partial(max_error, check="scale", eps="exact"),
        K6_EPS: partial(max_error, check="orth", eps="default"),
        K7: partial(max_error, check="center", eps="none"),
        K7_GRAD: partial(max_error, check="gradcenter", eps="none"),
    }
    config_class = IdentitiesConfig

    def derived(self, cfg: IdentitiesConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        data = load_dataset(cfg.run.data)
        x, y = data.x_train[: cfg.problem.examples].double(), data.y_train[: cfg.problem.examples]
        rows = []
        with torch.random.fork_rng(devices=[]):
            for seed in cfg.seed_list:
                rows += _scale_rows(cfg, seed, x, y, data.input_shape, data.num_classes)
                rows += _center_rows(cfg, seed, x, y, data.input_shape, data.num_classes)
        return {"identities": pd.DataFrame(rows)}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        a, p = cfg.analysis, cfg.problem
        t = tables.read("identities")
        if t.empty:
            return []
        checks = [
            ("orth", p.eps_exact, "|cos(w, grad)|", a.orth_tol),
            ("orth", p.eps_default, f"|cos(w, grad)|, eps {p.eps_default:g}", None),
            ("scale", p.eps_exact, "grad J(gamma w) vs grad J(w)/gamma", a.scale_tol),
            ("scale", p.eps_default, f"same, eps {p.eps_default:g}", None),
            ("center", 0.0, "W_bar vs S_bar^T A_tilde", a.center_tol),
            ("gradcenter", 0.0, "column means of R_bar", a.center_tol),
        ]
        fig, axes = P.figure(width=7.5, height=3.6)
        ax = axes[0, 0]
        for i, (check, eps, label, tol) in enumerate(checks):
            v = t[(t["check"] == check) & (t["eps"] == eps)]["max_error"].clip(lower=1e-18)
            ax.scatter(v, [i] * len(v), s=12, color="#1f77b4" if tol else "#7f7f7f", alpha=0.6)
            if tol:
                ax.plot([tol, tol], [i - 0.35, i + 0.35], color="#d62728", lw=2)
        ax.set_yticks(range(len(checks)), [c[2] for c in checks])
        ax.set(
            xscale="log",
            xlabel="relative error (every unit layer, checkpoint and seed; red: tolerance)",
            title="Exact identities in float64 (K6: scale invariance, K7: batch centering)",
        )
        ax.invert_yaxis()
        return [P.save(fig, out / "identities.png")]
