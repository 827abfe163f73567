"""second_moments (K19): which second moments Adam should average (Grosse ch. 5, §2.1, a question the chapter
leaves open).

Adam's second moment averages the batch gradient squared. Eq. 4 splits its expectation into the mean
gradient's square and the gradient variance over the batch size, so Adam's step, unlike SGD's, depends on
the batch size. Two other estimates do not: the mean of the examples' squared gradients (the empirical
Fisher's diagonal) and the same with each label drawn from the model's own prediction (the Fisher's
diagonal, one sample); `optim.second_moment` computes both from per-example gradients (torch.func), so
the network has no normalizer that couples the examples.

Each form trains eff_lr's 3-hidden-layer MLP, without BN, at two batch sizes over a grid of learning rates
a quarter-decade apart around its own centre (a pilot's best). Per seed, the optimum in log alpha is the
vertex of the parabola through the best rate of the grid and its two neighbours (final training loss, on
a log scale); an optimum at the grid's edge is censored. Does only the batch form's optimum move with the
batch size, and which form trains to the lowest loss at its best rate?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from normlab.engine import metrics as M
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.experiment import Experiment, Setting, arm_configs
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import paired_t, t_interval

from .bn_placement import GridArm, grid_arms, grid_tasks
from .common import status_note

FORMS = ("batch", "per_example", "fisher")
_LABEL = {"batch": "batch gradient squared (Adam's)", "per_example": "mean of per-example squares",
          "fisher": "per-example squares, labels from the model"}  # fmt: skip

_SHIFT = (
    "per seed, the optimum in log10 alpha at the large batch minus the one at the small batch (each the vertex of "
    "the parabola through the best grid rate's log final training loss and its two neighbours), paired by seed"
)
K19_BATCH = Claim(
    "K19-batch-moves",
    MEASURED,
    "Only Adam's own second moment depends on the batch size (Eq. 4's variance term shrinks as the batch grows, "
    "lengthening the step): when the batch grows, its best learning rate moves down against the per-example "
    "form's, by more than shift_min decades (Grosse ch. 5, §2.1)",
    "per seed, the batch form's shift minus the per-example form's, each shift the optimum in log10 alpha at the "
    "large batch minus the one at the small batch (each optimum the vertex of the parabola through the best grid "
    "rate's log final training loss and its two neighbours), paired by seed, t interval",
    Rule("<", "neg_shift_min"),
)
K19_BATCH_SHIFT = Claim(
    "K19-batch-shift", DESCRIPTIVE, "The batch form's own shift of the best alpha (batch gradient squared)",
    _SHIFT + ", t interval", Rule("none"),
)  # fmt: skip
K19_FISHER_PE = Claim(
    "K19-fisher-pe", DESCRIPTIVE, "The Fisher form's shift against the per-example form's",
    "per seed, the Fisher form's shift minus the per-example form's, paired by seed, t interval", Rule("none"),
)  # fmt: skip
_STAYS = (
    "With the {what} as the second moment, which does not depend on the batch size, the best learning rate stays "
    "within stay_band decades when the batch grows (Grosse ch. 5, §2.1's open question)"
)
_STAYS_STAT = _SHIFT + ", t interval; a band: supported inside it, not supported wholly outside it"
K19_STAYS = {
    "per_example": Claim("K19-pe-stays", MEASURED, _STAYS.format(what=_LABEL["per_example"]), _STAYS_STAT,
                         Rule("abs<=", "stay_band")),
    "fisher": Claim("K19-fisher-stays", MEASURED, _STAYS.format(what=_LABEL["fisher"]), _STAYS_STAT,
                    Rule("abs<=", "stay_band")),
}  # fmt: skip
_FASTEST = (
    "per seed, the log final training loss at each form's best grid rate; value: per-example minus batch (negative: "
    "per-example trains lower), the Fisher form's in the detail"
)
K19_FASTEST = {
    "small": Claim("K19-fastest-small", DESCRIPTIVE, "Which form trains to the lowest loss at its best rate (small "
                   "batch)?", _FASTEST, Rule("none")),
    "large": Claim("K19-fastest-large", DESCRIPTIVE, "Which form trains to the lowest loss at its best rate (large "
                   "batch)?", _FASTEST, Rule("none")),
}  # fmt: skip
CLAIMS = (K19_BATCH, *K19_STAYS.values(), K19_BATCH_SHIFT, K19_FISHER_PE, *K19_FASTEST.values())


@dataclass
class MomentsAnalysis(Analysis):
    shift_min: float = param(
        0.1, min=0.0, help="K19-batch-moves: the batch form's shift lies below the per-example form's by more than this"
    )
    stay_band: float = param(0.15, min=0.0, help="K19-*-stays: |shift| within this many decades")

    @property
    def neg_shift_min(self) -> float:
        return -self.shift_min


@dataclass
class MomentsConfig(ExperimentConfig):
    lr_factors: list[float] = param(
        default_factory=lambda: [0.178, 0.316, 0.562, 1.0, 1.78, 3.16, 5.62],
        help="every arm runs at these multiples of its centre lr (a quarter-decade apart, in increasing order)",
    )
    batch_sizes: list[int] = param(default_factory=lambda: [16, 64], help="the small and the large batch")
    analysis: MomentsAnalysis = field(default_factory=MomentsAnalysis)

    def check(self, path: str = "") -> None:
        if len(self.batch_sizes) != 2 or self.batch_sizes[0] >= self.batch_sizes[1]:
            raise ConfigError("batch_sizes: give two, the small then the large, e.g. [16, 64]")
        if len(self.lr_factors) < 3 or sorted(self.lr_factors) != list(self.lr_factors):
            raise ConfigError("lr_factors: give at least three, in increasing order (the parabola needs neighbours)")
        want = {arm_name(f, b) for f in FORMS for b in self.batch_sizes}
        arms = arm_configs(self)
        if set(arms) != want:
            raise ConfigError(f"arms: second_moments needs exactly the arms {', '.join(sorted(want))}")
        for f in FORMS:
            for b in self.batch_sizes:
                rc = arms[arm_name(f, b)]
                if (rc.optim.second_moment, rc.train.batch_size) != (f, b):
                    raise ConfigError(
                        f"arms.{arm_name(f, b)}: needs optim.second_moment {f} and train.batch_size {b}; it has "
                        f"{rc.optim.second_moment} and {rc.train.batch_size}"
                    )


def arm_name(form: str, batch: int) -> str:
    return f"{form}_b{batch}"


def optimum(lrs: np.ndarray, log_loss: np.ndarray) -> tuple[float, bool]:
    """(log10 alpha at the fitted minimum, censored): the vertex of the parabola through the best point of the grid
    and its neighbours (points equally spaced in log alpha); the best grid point itself, censored, when it is at
    the grid's edge. Missing losses (diverged runs) count as +inf."""
    x = np.log10(lrs)
    y = np.where(np.isfinite(log_loss), log_loss, np.inf)
    i = int(np.argmin(y))
    if i == 0 or i == len(y) - 1 or not np.isfinite(y[i - 1] + y[i + 1]):
        return float(x[i]), True
    h = (x[i + 1] - x[i - 1]) / 2
    curv = y[i + 1] - 2 * y[i] + y[i - 1]
    return float(x[i] - h / 2 * (y[i + 1] - y[i - 1]) / curv), False


@dataclass
class MomentsSetting(Setting):
    @cached_property
    def grid(self) -> dict[str, GridArm]:
        return grid_arms(self.cfg)

    @cached_property
    def loss(self) -> dict[str, dict[int, float]]:
        """grid arm -> seed -> log final training loss (NaN for a run that did not finish)."""
        r = self.tables.runs
        v = np.log(r[M.final(M.TRAIN_LOSS)].astype(float).where(r["status"] == "ok"))
        out: dict[str, dict[int, float]] = {}
        for arm, seed, x in zip(r["arm"], r["seed"].astype(int), v):
            out.setdefault(arm, {})[seed] = float(x)
        return out

    def curve(self, arm: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
        names = sorted((g.lr, n) for n, g in self.grid.items() if g.base == arm)
        return np.array([lr for lr, _ in names]), np.array([self.loss.get(n, {}).get(seed, np.nan) for _, n in names])

    def optima(self, arm: str) -> dict[int, tuple[float, bool]]:
        return {seed: optimum(*self.curve(arm, seed)) for seed in self.cfg.seed_list if self._ran(arm, seed)}

    def _ran(self, arm: str, seed: int) -> bool:
        return any(seed in self.loss.get(n, {}) for n, g in self.grid.items() if g.base == arm)

    def best_loss(self, arm: str) -> dict[int, float]:
        out = {}
        for seed in self.cfg.seed_list:
            _, y = self.curve(arm, seed)
            if np.isfinite(y).any():
                out[seed] = float(np.nanmin(y))
        return out


def _shifts(s: MomentsSetting, form: str) -> tuple[dict[int, float], list[str]]:
    """seed -> the form's shift in log10 alpha (large batch minus small), and the censored optima by name."""
    small, large = (arm_name(form, b) for b in s.cfg.batch_sizes)
    a, b = s.optima(small), s.optima(large)
    seeds = sorted(set(a) & set(b))
    cens = [f"{arm} s{x}" for arm, o in ((small, a), (large, b)) for x in seeds if o[x][1]]
    return {x: b[x][0] - a[x][0] for x in seeds}, cens


def _optima_text(s: MomentsSetting, form: str) -> str:
    parts = []
    for b in s.cfg.batch_sizes:
        o = [v for v, _ in s.optima(arm_name(form, b)).values()]
        if o:
            parts.append(f"batch {b}: alpha {10 ** np.mean(o):.2g}")
    return f"{form}: " + ", ".join(parts)


def shift(s: MomentsSetting, form: str, ref: str | None = None) -> Estimate:
    """The form's shift (or its shift minus ref's), per seed, with a check that no optimum is censored."""
    mine, cens = _shifts(s, form)
    if ref is not None:
        theirs, cens_ref = _shifts(s, ref)
        mine = {x: v - theirs[x] for x, v in mine.items() if x in theirs}
        cens += cens_ref
    if not mine:
        return Estimate.missing(f"no seed ran {form}{' and ' + ref if ref else ''} at both batch sizes")
    d = list(mine.values())
    checks = [Check("optima inside the grid", not cens, f"at the grid's edge (censored): {', '.join(cens)}")]
    arms = [arm_name(f, b) for f in ([form] + ([ref] if ref else [])) for b in s.cfg.batch_sizes]
    note = status_note(s.tables, [n for n, g in s.grid.items() if g.base in arms])
    text = "; ".join(_optima_text(s, f) for f in [form] + ([ref] if ref else []))
    return Estimate(
        float(np.mean(d)), t_interval(d), len(d), checks=checks,
        detail=f"{text}; per seed {', '.join(f'{v:+.2f}' for v in d)}" + (f"; {note}" if note else ""),
    )  # fmt: skip


def fastest(s: MomentsSetting, which: str) -> Estimate:
    b = s.cfg.batch_sizes[0 if which == "small" else 1]
    best = {f: s.best_loss(arm_name(f, b)) for f in FORMS}
    x, y = list(best["per_example"].items()), best["batch"]
    value, ci, n = paired_t([v for _, v in x], [y.get(k, np.nan) for k, _ in x])
    if not n:
        return Estimate.missing(f"no seed ran every form at batch {b}")
    means = ", ".join(f"{f} {np.exp(np.mean(list(best[f].values()))):.3g}" for f in FORMS if best[f])
    return Estimate(value, ci, n, detail=f"batch {b}, final training loss at each form's best rate: {means}")


ESTIMATORS = {
    K19_BATCH: partial(shift, form="batch", ref="per_example"),
    **{claim: partial(shift, form=form) for form, claim in K19_STAYS.items()},
    K19_BATCH_SHIFT: partial(shift, form="batch"),
    K19_FISHER_PE: partial(shift, form="fisher", ref="per_example"),
    **{claim: partial(fastest, which=b) for b, claim in K19_FASTEST.items()},
}


class SecondMoments(Experiment):
    name = "second_moments"
    title = "K19: Adam's second moments: batch, per-example, or sampled from the model"
    short_names = {"K19": "Adam's second moments"}
    claims = CLAIMS
    config_class = MomentsConfig
    estimators = ESTIMATORS
    setting_class = MomentsSetting

    def tasks(self, cfg: MomentsConfig) -> list[RunTask]:
        return grid_tasks(grid_arms(cfg), cfg.seed_list)

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        s = MomentsSetting(tables, cfg)
        col = P.colors(list(FORMS))
        fig, axes = P.figure(ncols=2, width=4.4, height=3.2)
        for j, b in enumerate(cfg.batch_sizes):
            ax = axes[0, j]
            for f in FORMS:
                arm = arm_name(f, b)
                curves = [s.curve(arm, seed) for seed in cfg.seed_list]
                lrs = curves[0][0]
                y = np.exp(np.nanmean(np.array([c[1] for c in curves]), axis=0))
                ax.plot(lrs, y, marker="o", color=col[f], label=_LABEL[f])
                opt = [o for o, _ in s.optima(arm).values()]
                if opt:
                    ax.axvline(10 ** np.mean(opt), color=col[f], ls=":", lw=1)
            ax.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="final training loss",
                   title=f"batch {b} (dotted: mean fitted optimum)")  # fmt: skip
            P.legend(ax, fontsize=6)
        return [P.save(fig, out / "second_moments.png")]
