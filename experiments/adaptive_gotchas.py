"""adaptive_gotchas (K9, K10): small, exact facts about adaptive optimizers.

Grosse ch. 5, §2 and §2.1 (Eq. 4). Everything here uses torch's own optimizers on fixed,
stationary problems, so the answers are (nearly) exact rather than statistical:
  K9   Adagrad accumulates squared gradients, so on a stationary gradient stream its
       per-coordinate step shrinks like 1/sqrt(t) (log-log slope -1/2); RMSprop's exponential
       average does not (slope 0).
  K9e  Where epsilon sits: Adam (and torch's RMSprop/Adagrad) divide by sqrt(v) + eps; the chapter
       writes RMSprop/Adagrad with sqrt(v + eps). At equal eps the two damp very different
       gradient scales (|g| ~ eps against |g| ~ sqrt(eps)).
  K10  Adam's second-moment estimate depends on the batch size: E[g_B^2] = mu^2 + sigma^2 / B
       per coordinate (for sampling without replacement, times (N - B)/(N - 1)), so the step
       alpha m / sqrt(v) grows with B. Predicted from per-example gradients (kept factored, LinearGradients),
       compared with Adam's own bias-corrected estimate.
No training loop runs: every table is computed at run time and written next to the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.data import load_dataset
from normlab.engine.models import build_model
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.claims import EXACT, Check, Claim, Estimate, Rule
from normlab.engine.executor import ParallelMap, serial_map

from normlab.engine.experiment import Setting, TableExperiment

K9_ADAGRAD = Claim(
    "K9-adagrad",
    EXACT,
    "On a stationary gradient stream, Adagrad's per-coordinate step decays like 1/sqrt(t): "
    "its accumulated squared gradients grow linearly (Grosse ch. 5, §2); a formula check on torch's optimizer",
    "log-log slope of the median |step| vs t, the seed furthest from the band's centre",
    Rule("in", "adagrad_band"),
)
K9_RMSPROP = Claim(
    "K9-rmsprop",
    EXACT,
    "RMSprop's exponential average does not grow, so its step stays flat (Grosse ch. 5, §2); "
    "a formula check on torch's optimizer",
    "log-log slope of the median |step| vs t, the seed furthest from the band's centre",
    Rule("in", "rmsprop_band"),
)
K9_EPS = Claim(
    "K9-eps",
    EXACT,
    "The same epsilon means different things outside the root (Adam: sqrt(v) + eps) and inside it "
    "(the chapter's RMSprop/Adagrad: sqrt(v + eps)) (Grosse ch. 5, §2); an identity check on torch's Adam",
    "max |torch Adam first step - g/(|g| + eps)| over the table",
    Rule("<", "eps_match_tol"),
)
K10 = Claim(
    "K10",
    EXACT,
    "Adam's second-moment estimate is mu^2 + sigma^2/B per coordinate (Grosse ch. 5, §2.1, Eq. 4); "
    "an identity check against per-example gradients",
    "max over seeds and batch sizes of |Adam's v / (mu^2 + sigma^2 (N-B)/(B(N-1))) - 1|",
    Rule("<", "v_tolerance"),
)
K10_STEP = Claim(
    "K10-step",
    EXACT,
    "So Adam's step alpha m/sqrt(v) grows with the batch size: larger batches act as a larger "
    "effective learning rate (Grosse ch. 5, §2.1)",
    "smallest over seeds of the log-log slope of the median Adam step vs B",
    Rule(">", "min_step_slope"),
)

# The chapter states the batch-size effect twice, in opposite directions: §2.1 (after Eq. 4) says
# larger batches give larger effective learning rates, the summary of §6 (the Discussion, its line 556)
# says larger batches give smaller steps, very likely a slip for smaller batches. K10-step measures
# which one holds.
CONTRADICTION = (
    "the chapter contradicts itself here: §2.1 says larger batches mean larger effective learning "
    "rates, the summary in §6 says larger batches mean smaller steps; a positive slope supports §2.1 "
    "and refutes the §6 sentence"
)


@dataclass
class GotchasConfigPart:
    stream_steps: int = param(3000, min=20, help="K9: gradients fed to each optimizer")
    coords: int = param(1000, min=1, help="K9: coordinates of the parameter")
    grad_mean: float = param(0.1, help="K9: mean of every coordinate's gradient")
    grad_std: float = param(1.0, min=0.0, help="K9: its standard deviation")
    lr: float = param(0.01, min=0.0, help="K9 and K10: step size")
    rmsprop_alpha: float = param(0.99, min=0.0, max=1.0, help="K9: RMSprop's averaging constant")
    eps_values: list[float] = param(default_factory=lambda: [1e-8, 1e-4], help="K9e: epsilons compared")
    batch_sizes: list[int] = param(default_factory=lambda: [8, 16, 32, 64, 128, 256, 512, 1024])
    examples: int = param(2000, min=16, help="K10: training examples whose gradients are used")
    adam_steps: int = param(300, min=2, help="K10: batches fed to Adam (with lr 0) per batch size")
    beta2: float = param(0.999, min=0.0, max=1.0, help="K10: Adam's beta2")


@dataclass
class GotchasAnalysis(Analysis):
    adagrad_band: list[float] = param(default_factory=lambda: [-0.55, -0.45], help="allowed Adagrad slope")
    rmsprop_band: list[float] = param(default_factory=lambda: [-0.05, 0.05], help="allowed RMSprop slope")
    fit_from: float = param(0.1, min=0.0, max=0.9, help="fit slopes on the steps after this fraction")
    v_tolerance: float = param(0.1, min=0.0, help="K10: |Adam's v / predicted v - 1| allowed")
    min_step_slope: float = param(0.0, help="K10-step: the fitted slope of the step vs B must exceed this")
    eps_match_tol: float = param(1e-9, min=0.0, help="K9-eps: |torch Adam - outside-the-root formula| allowed")
    eps_differ_min: float = param(
        1e-3,
        min=0.0,
        help="K9-eps precondition: the inside-the-root formula must differ by more than this somewhere in the table",
    )


@dataclass
class GotchasConfig(ExperimentConfig):
    problem: GotchasConfigPart = field(default_factory=GotchasConfigPart)
    analysis: GotchasAnalysis = field(default_factory=GotchasAnalysis)


def _stream_steps(opt_name: str, p: GotchasConfigPart, seed: int) -> pd.DataFrame:
    """Median |step| per coordinate of a torch optimizer fed a stationary gradient stream."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(p.coords, dtype=torch.float64, requires_grad=True)
    opt = (
        torch.optim.Adagrad([w], lr=p.lr)
        if opt_name == "adagrad"
        else torch.optim.RMSprop([w], lr=p.lr, alpha=p.rmsprop_alpha)
    )
    rec = set(np.unique(np.round(np.logspace(0, np.log10(p.stream_steps), 60))).astype(int).tolist())
    rows = []
    for t in range(1, p.stream_steps + 1):
        before = w.detach().clone()
        w.grad = p.grad_mean + p.grad_std * torch.randn(p.coords, generator=g, dtype=torch.float64)
        opt.step()
        with torch.no_grad():
            w.copy_(before)  # the problem stays fixed: only the optimizer's state moves
        if t in rec:
            step = opt.state[w]["sum"] if opt_name == "adagrad" else opt.state[w]["square_avg"]
            # the step the optimizer just took, recomputed from its state: lr * g / (sqrt(state) + eps)
            eps = opt.param_groups[0]["eps"]
            taken = p.lr * w.grad.abs() / (step.sqrt() + eps)
            rows.append({"optimizer": opt_name, "seed": seed, "step": t, "median_abs_step": float(taken.median())})
    return pd.DataFrame(rows)


def _eps_table(p: GotchasConfigPart) -> pd.DataFrame:
    """First-step size of torch's Adam (m_hat = g, v_hat = g^2) against both placements of eps."""
    rows = []
    for eps in p.eps_values:
        for gval in np.logspace(-10, 1, 23):
            w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
            w.grad = torch.full((1,), gval, dtype=torch.float64)
            torch.optim.Adam([w], lr=1.0, eps=eps).step()
            rows.append(
                {
                    "eps": eps,
                    "grad": gval,
                    "torch_adam": float(-w.detach()[0]),
                    "outside": gval / (gval + eps),
                    "inside": gval / np.sqrt(gval**2 + eps),
                }
            )
    return pd.DataFrame(rows)


class LinearGradients:
    """Per-example gradients of a network of linear layers, kept factored.

    For a linear layer s = W a + b, example n's gradient is delta_n a_n^T (and delta_n for the
    bias), with delta_n = d loss_n / d s_n. So the mean gradient over any set of examples is one
    matmul, delta_B^T a_B / |B|, and the per-coordinate second moment over all examples is another,
    (delta^2)^T (a^2) / N: no N x d matrix of gradients is ever formed. Needs examples that do not
    interact (eval mode, no batch statistics) and every parameter inside an nn.Linear; coordinates
    are in `named_parameters` order, weights row-major, as a flattened gradient would be."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        layers = {m for m in model.modules() if isinstance(m, torch.nn.Linear)}
        owner = {id(p): m for m in layers for p in m.parameters(recurse=False)}
        names = [(n, p) for n, p in model.named_parameters()]
        if any(id(p) not in owner for _, p in names):
            raise ValueError("LinearGradients needs every parameter inside an nn.Linear")
        captured: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        hooks = [m.register_forward_hook(lambda m, i, o: captured.__setitem__(m, (i[0].detach(), o))) for m in layers]
        try:
            with torch.enable_grad():
                loss = F.cross_entropy(model(x), y, reduction="sum")  # sum: delta_n is example n's own
                mods = list(captured)
                deltas = torch.autograd.grad(loss, [captured[m][1] for m in mods])
        finally:
            for h in hooks:
                h.remove()
        self.factors = {m: (captured[m][0], d.detach()) for m, d in zip(mods, deltas)}
        self.params = [(owner[id(p)], "bias" if p is owner[id(p)].bias else "weight") for _, p in names]
        self.n = x.shape[0]

    def _cat(self, pieces: dict) -> torch.Tensor:
        return torch.cat([pieces[(m, kind)].reshape(-1) for m, kind in self.params])

    def mean(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The mean gradient over the examples `index` (all when None)."""
        pieces = {}
        for m, (a, d) in self.factors.items():
            a, d = (a, d) if index is None else (a[index], d[index])
            pieces[(m, "weight")], pieces[(m, "bias")] = d.T @ a / a.shape[0], d.mean(0)
        return self._cat(pieces)

    def mean_square(self) -> torch.Tensor:
        """Per coordinate, the mean over examples of the squared per-example gradient."""
        pieces = {}
        for m, (a, d) in self.factors.items():
            pieces[(m, "weight")], pieces[(m, "bias")] = (d * d).T @ (a * a) / self.n, (d * d).mean(0)
        return self._cat(pieces)


def _batch_second_moment(p: GotchasConfigPart, cfg: GotchasConfig, seed: int) -> pd.DataFrame:
    data = load_dataset(cfg.run.data)
    x, y = data.x_train[: p.examples].double(), data.y_train[: p.examples]
    torch.manual_seed(seed)
    model = build_model(cfg.run.model, data.input_shape, data.num_classes).double().eval()
    grads = LinearGradients(model, x, y)
    n = grads.n
    mean = grads.mean()
    mu2 = mean**2
    var = (grads.mean_square() - mu2) * n / (n - 1)  # unbiased, as torch.var over the examples
    g = torch.Generator().manual_seed(seed + 1)
    rows = []
    for b in p.batch_sizes:
        if b > n:
            continue
        predicted = mu2 + var / b * (n - b) / (n - 1)  # E[g_B^2] per coordinate
        w = torch.zeros(mean.shape[0], dtype=torch.float64, requires_grad=True)
        adam = torch.optim.Adam([w], lr=0.0, betas=(0.9, p.beta2))
        for _ in range(p.adam_steps):
            w.grad = grads.mean(torch.randperm(n, generator=g)[:b])
            adam.step()
        st = adam.state[w]
        t = p.adam_steps
        v_hat = st["exp_avg_sq"] / (1 - p.beta2**t)
        m_hat = st["exp_avg"] / (1 - 0.9**t)
        rows.append(
            {
                "seed": seed,
                "batch_size": b,
                "v_adam": float(v_hat.mean()),
                "v_predicted": float(predicted.mean()),
                "mu_sq": float(mu2.mean()),
                "sigma_sq": float(var.mean()),
                "step_adam": float((p.lr * m_hat.abs() / (v_hat.sqrt() + 1e-8)).median()),
            }
        )
    return pd.DataFrame(rows)


def _slope(d: pd.DataFrame, x: str, y: str) -> float:
    d = d[(d[x] > 0) & (d[y] > 0)]
    return float(np.polyfit(np.log(d[x]), np.log(d[y]), 1)[0]) if len(d) >= 3 else float("nan")


# ---------------------------------------------------------------- claims: one estimator each
def _decay_slope(s: Setting, opt: str, band: list[float]) -> Estimate:
    """The late log-log slope of the median |step| per seed; the seed farthest from the band's centre."""
    st = s.tables.read("streams")
    start = s.a.fit_from * st["step"].max()
    slopes = [
        _slope(g[g["step"] >= start], "step", "median_abs_step") for _, g in st[st["optimizer"] == opt].groupby("seed")
    ]
    centre = (band[0] + band[1]) / 2
    worst = max(slopes, key=lambda v: abs(v - centre)) if slopes else float("nan")
    detail = f"fit over t >= {start:.0f}; slope per seed " + ", ".join(f"{v:.4f}" for v in slopes)
    return Estimate(worst, n=len(slopes), detail=detail)


def k9_adagrad(s: Setting) -> Estimate:
    return _decay_slope(s, "adagrad", s.a.adagrad_band)


def k9_rmsprop(s: Setting) -> Estimate:
    return _decay_slope(s, "rmsprop", s.a.rmsprop_band)


def k9_eps(s: Setting) -> Estimate:
    """Torch's Adam against epsilon outside the root, where the inside-the-root formula differs."""
    eps = s.tables.read("eps_table")
    err_out = float((eps["torch_adam"] - eps["outside"]).abs().max())
    err_in = float((eps["torch_adam"] - eps["inside"]).abs().max())
    half = [
        f"eps {e:g}: step halves at |g| = {e:g} outside the root, at |g| = {np.sqrt(e / 3):.2g} inside"
        for e, _ in eps.groupby("eps")
    ]
    differ = Check(
        "the placements differ on this table",
        err_in > s.a.eps_differ_min,
        f"the inside-the-root formula is within {err_in:.3g} of torch's Adam everywhere, so the table "
        "cannot tell the placements apart",
    )
    detail = f"largest gap to the inside-the-root formula: {err_in:.3g}; " + "; ".join(half)
    return Estimate(err_out, n=len(eps), checks=[differ], detail=detail)


def _moments(s: Setting) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch-size table and its means by batch size."""
    bm = s.tables.read("batch_moments")
    return bm, bm.groupby("batch_size")[["v_adam", "v_predicted", "step_adam"]].mean()


def k10(s: Setting) -> Estimate:
    """Adam's second moment against its prediction from the batch size (Eq. 4)."""
    bm, m = _moments(s)
    rel = (bm["v_adam"] / bm["v_predicted"] - 1).abs()
    detail = f"{bm['seed'].nunique()} seeds; v by batch size: " + ", ".join(
        f"B={b}: {r.v_adam:.3g} (pred {r.v_predicted:.3g})" for b, r in m.iterrows()
    )
    return Estimate(float(rel.max()), n=len(bm), detail=detail)


def k10_step(s: Setting) -> Estimate:
    """The slope of Adam's step size on the batch size, the smallest over seeds."""
    bm, m = _moments(s)
    step_slopes = [_slope(g, "batch_size", "step_adam") for _, g in bm.groupby("seed")]
    detail = (
        "slope per seed "
        + ", ".join(f"{v:.3f}" for v in step_slopes)
        + "; median step by batch size: "
        + ", ".join(f"B={b}: {r.step_adam:.3g}" for b, r in m.iterrows())
        + f"; {CONTRADICTION}"
    )
    return Estimate(float(min(step_slopes)) if step_slopes else float("nan"), n=len(step_slopes), detail=detail)


class AdaptiveGotchas(TableExperiment):
    name = "adaptive_gotchas"
    title = "K9, K10: Adagrad vs RMSprop decay, where epsilon sits, and Adam's batch-size dependence"
    short_names = {"K9": "Adagrad vs RMSprop decay", "K10": "Adam's epsilon and batch size"}
    claims = (K9_ADAGRAD, K9_RMSPROP, K9_EPS, K10, K10_STEP)
    config_class = GotchasConfig
    estimators = {K9_ADAGRAD: k9_adagrad, K9_RMSPROP: k9_rmsprop, K9_EPS: k9_eps, K10: k10, K10_STEP: k10_step}

    def derived(self, cfg: GotchasConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        p = cfg.problem
        streams = pd.concat(
            [_stream_steps(o, p, s) for o in ("adagrad", "rmsprop") for s in cfg.seed_list], ignore_index=True
        )
        batches = pd.concat([_batch_second_moment(p, cfg, s) for s in cfg.seed_list], ignore_index=True)
        return {"streams": streams, "eps_table": _eps_table(p), "batch_moments": batches}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        fig, axes = P.figure(ncols=3, width=3.8)
        st = tables.read("streams")
        col = P.colors(["adagrad", "rmsprop"])
        for opt in ("adagrad", "rmsprop"):
            d = st[st["optimizer"] == opt].rename(columns={"median_abs_step": "value"})
            P.mean_band(axes[0, 0], d, opt, col[opt])
        t = np.logspace(0, np.log10(st["step"].max()), 20)
        axes[0, 0].plot(
            t, st[st["optimizer"] == "adagrad"]["median_abs_step"].iloc[0] / np.sqrt(t), "k:", lw=1, label="slope -1/2"
        )
        axes[0, 0].set(
            xscale="log",
            yscale="log",
            xlabel="step t",
            ylabel="median |step| per coordinate",
            title="Stationary gradient stream",
        )
        P.legend(axes[0, 0])
        eps = tables.read("eps_table")
        ecol = P.colors([f"{e:g}" for e in sorted(eps["eps"].unique())])
        for e, g in eps.groupby("eps"):
            axes[0, 1].plot(g["grad"], g["torch_adam"], color=ecol[f"{e:g}"], label=f"torch Adam, eps {e:g}")
            axes[0, 1].plot(g["grad"], g["inside"], color=ecol[f"{e:g}"], ls="--", label=f"sqrt(v + eps), eps {e:g}")
        axes[0, 1].set(
            xscale="log", xlabel="|gradient|", ylabel="first step / lr", title="Where epsilon sits (solid: outside)"
        )
        P.legend(axes[0, 1], fontsize=6)
        bm = tables.read("batch_moments")
        ax = axes[0, 2]
        g = bm.groupby("batch_size")[["v_adam", "v_predicted", "step_adam"]].mean().reset_index()
        ax.plot(g["batch_size"], g["v_adam"], "o-", label="Adam's v (mean over coords)")
        ax.plot(g["batch_size"], g["v_predicted"], "k--", label="mu^2 + sigma^2/B (per-example)")
        ax.set(
            xscale="log", yscale="log", xlabel="batch size B", ylabel="second moment", title="Adam's v vs batch size"
        )
        ax2 = ax.twinx()
        ax2.plot(g["batch_size"], g["step_adam"], "s:", color="#d62728", label="median Adam step")
        ax2.set_ylabel("median Adam step", color="#d62728")
        ax2.set_yscale("log")
        P.legend(ax, fontsize=6, loc="lower left")
        return [P.save(fig, out / "adaptive_gotchas.png")]
