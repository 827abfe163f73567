"""decoupled_wd (K18): decoupled weight decay against L2 in Adam's gradient, and whether decay helps at all
(Grosse ch. 5, §5, §5.1 and §6).

Four settings on eff_lr's 3-hidden-layer MLP, each a grid of learning rates alpha and decay strengths
lambda run on a few tuning seeds (`tuning_seeds`) and selected on validation accuracy (examples carved
from the training set; the test set is never looked at to choose):

* adamw: Adam with Eq. 22's decay applied directly (AdamW: w shrinks by alpha lambda w every step),
  lambda = 0 among the grid (plain Adam);
* adam_l2: Adam with lambda w added to the gradient, which Adam's normalizer then rescales (§5);
* sgd and bn_sgd: plain SGD without and with BN (without its gain and shift, so that decay acts on the
  BN-fed weights only through their scale, the effective learning rate of §5.1), lambda = 0 among the grid.

Each setting's selected (alpha, lambda), and its best alpha at lambda = 0, then re-run on fresh seeds
(the seeds of `seeds`/`seed_offset`), where every verdict is read: AdamW against Adam with L2, each tuned
alike; each setting's tuned decay against none, tuned alike, the three settings judged as one family.
Beside them, on the tuning seeds, the best lambda at each alpha: does it move with the learning rate?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any
from pathlib import Path

import numpy as np
import pandas as pd

from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.experiment import Experiment, Setting
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import Interval, paired, paired_t, t_interval, t_test_p

from .common import accuracy_by_seed, num_classes, selection_accuracy, status_note

ADAMW, ADAM_L2, SGD, BN_SGD = "adamw", "adam_l2", "sgd", "bn_sgd"
ROLES = {  # setting -> (model.norm, optim.name, optim.wd_mode)
    ADAMW: ("none", "adamw", "l2"),  # torch's AdamW decouples the decay itself (wd_mode is Adam's L2 switch)
    ADAM_L2: ("none", "adam", "l2"),
    SGD: ("none", "sgd", "l2"),  # for plain SGD, L2 and Eq. 22 are the same step (§5, Eq. 22)
    BN_SGD: ("batch", "sgd", "l2"),
}
BENEFIT = (ADAMW, SGD, BN_SGD)  # the family of K18-benefit-*: the settings whose grid holds lambda = 0
BEST, ZERO = "best", "zero"

K18_ADAMW = Claim(
    "K18-adamw",
    MEASURED,
    "Applying the decay directly (AdamW) works better than putting L2 into Adam's gradient: each tuned over "
    "(alpha, lambda) on the tuning seeds, AdamW's test accuracy on fresh seeds exceeds Adam with L2's (Grosse ch. 5, "
    "§5; Loshchilov and Hutter)",
    "final test accuracy, AdamW's selected (alpha, lambda) minus Adam with L2's, on the fresh seeds, paired by seed, "
    "t interval",
    Rule(">", "adamw_min"),
)
_BENEFIT = (
    "final test accuracy on the fresh seeds, the setting's selected (alpha, lambda) minus its best alpha at lambda = "
    "0 (both chosen on the tuning seeds' validation accuracy), paired by seed; one family of three rows "
    "(K18-benefit-*): t interval at the Bonferroni level 1 - 0.05/3, p x 3"
)
K18_BENEFIT = {
    ADAMW: Claim(
        "K18-benefit-adamw", MEASURED,
        "Weight decay improves generalization: with AdamW, the tuned decay beats none, both tuned over alpha (Grosse "
        "ch. 5, §5)",
        _BENEFIT, Rule(">", "benefit_min"),
    ),
    SGD: Claim(
        "K18-benefit-sgd", MEASURED,
        "Weight decay improves generalization: with SGD on the network without BN, the tuned decay beats none (Grosse "
        "ch. 5, §5)",
        _BENEFIT, Rule(">", "benefit_min"),
    ),
    BN_SGD: Claim(
        "K18-benefit-bn", MEASURED,
        "Weight decay improves generalization through the effective learning rate: with SGD on the BN network, where "
        "decay changes the BN-fed weights' scale only, the tuned decay beats none (Grosse ch. 5, §5.1)",
        _BENEFIT, Rule(">", "benefit_min"),
    ),
}  # fmt: skip
_MOVES = (
    "on the tuning seeds, the lambda > 0 of the grid with the best mean validation accuracy at each alpha; value: "
    "log10 of that lambda at the largest alpha over the one at the smallest (0: it does not move; -1 per decade: "
    "lambda x alpha fixed); the detail says where lambda = 0 was better"
)
K18_MOVES = {
    ADAMW: Claim("K18-moves-adamw", DESCRIPTIVE, "Does the best lambda move with alpha? AdamW", _MOVES, Rule("none")),
    ADAM_L2: Claim("K18-moves-l2", DESCRIPTIVE, "Does the best lambda move with alpha? Adam with L2", _MOVES,
                   Rule("none")),
    SGD: Claim("K18-moves-sgd", DESCRIPTIVE, "Does the best lambda move with alpha? SGD without BN", _MOVES,
               Rule("none")),
    BN_SGD: Claim("K18-moves-bn", DESCRIPTIVE, "Does the best lambda move with alpha? SGD with BN", _MOVES,
                  Rule("none")),
}  # fmt: skip
CLAIMS = (K18_ADAMW, *K18_BENEFIT.values(), *K18_MOVES.values())


@dataclass
class DecayAnalysis(Analysis):
    adamw_min: float = param(0.0, help="K18-adamw: supported when AdamW's lead's interval lies above this")
    benefit_min: float = param(0.0, help="K18-benefit-*: supported when the decay's lead's interval lies above this")


@dataclass
class DecayConfig(ExperimentConfig):
    settings: dict[str, dict[str, Any]] = param(
        default_factory=dict, help="setting -> overrides of `run` (adamw, adam_l2, sgd, bn_sgd; see the module)"
    )
    alphas: dict[str, list[float]] = param(default_factory=dict, help="setting -> its learning rates")
    lambdas: dict[str, list[float]] = param(default_factory=dict, help="setting -> its decay strengths (0 allowed)")
    tuning_seeds: list[int] = param(default_factory=lambda: [0, 1, 2], help="the seeds the grids run on")
    analysis: DecayAnalysis = field(default_factory=DecayAnalysis)

    def check(self, path: str = "") -> None:
        if self.arms:
            raise ConfigError("arms: decoupled_wd builds its runs from `settings`, `alphas` and `lambdas`; drop arms")
        for name in self.settings:
            if name not in ROLES:
                raise ConfigError(f"settings.{name}: not a setting of decoupled_wd; use {', '.join(ROLES)}")
            rc = setting_config(self, name)
            have = (rc.model.norm, rc.optim.name, rc.optim.wd_mode)
            if have != ROLES[name]:
                raise ConfigError(
                    f"settings.{name}: the setting needs (model.norm, optim.name, optim.wd_mode) = {ROLES[name]}; "
                    f"it has {have}"
                )
            for key in ("alphas", "lambdas"):
                vals = getattr(self, key).get(name)
                if not vals or any(v < 0 for v in vals) or (key == "alphas" and min(vals) <= 0):
                    raise ConfigError(
                        f"{key}.{name}: list the setting's {key[:-1]} values ({'> 0' if key == 'alphas' else '>= 0'})"
                    )
        for key in ("alphas", "lambdas"):
            extra = set(getattr(self, key)) - set(self.settings)
            if extra:
                raise ConfigError(f"{key}: {', '.join(sorted(extra))} is not among settings")
        if set(self.tuning_seeds) & set(self.seed_list):
            raise ConfigError(
                "tuning_seeds: the fresh seeds (seeds, seed_offset) must not overlap the tuning seeds; move seed_offset"
            )
        if self.run.data.val_size <= 0:
            raise ConfigError("run.data.val_size: selection reads validation accuracy; set it above 0 (e.g. 500)")


def setting_config(cfg: DecayConfig, setting: str, alpha: float | None = None, lam: float | None = None) -> RunConfig:
    over = dict(cfg.settings[setting])
    if alpha is not None:
        over["optim.lr"] = alpha
    if lam is not None:
        over["optim.weight_decay"] = lam
    return C.from_dict(RunConfig, C.apply_overrides(C.to_dict(cfg.run), over), f"settings.{setting}")


def grid_name(setting: str, alpha: float, lam: float) -> str:
    return f"{setting}@lr{alpha:g}@wd{lam:g}"


def grid(cfg: DecayConfig) -> dict[str, tuple[str, float, float]]:
    """grid arm -> (setting, alpha, lambda), in the order of the config."""
    return {grid_name(s, a, lam): (s, a, lam) for s in cfg.settings for a in cfg.alphas[s] for lam in cfg.lambdas[s]}


def final_arms(cfg: DecayConfig) -> list[str]:
    """'adamw-best', 'adamw-zero', ...: the re-runs on the fresh seeds (zero only where lambda = 0 is in the grid)."""
    out = []
    for s in cfg.settings:
        out.append(f"{s}-{BEST}")
        if 0.0 in cfg.lambdas[s]:
            out.append(f"{s}-{ZERO}")
    return out


def tuning_table(cfg: DecayConfig, runs: pd.DataFrame) -> pd.DataFrame:
    """Per grid arm: setting, alpha, lambda and the mean validation accuracy over the tuning seeds it ran on."""
    g = grid(cfg)
    r = runs[runs["arm"].isin(g) & runs["seed"].isin(cfg.tuning_seeds)]
    acc = selection_accuracy(r).groupby(r["arm"]).agg(["mean", "size"])
    rows = [
        {"arm": a, "setting": s, "alpha": al, "lambda": lam, "val": acc.loc[a, "mean"], "n": int(acc.loc[a, "size"])}
        for a, (s, al, lam) in g.items()
        if a in acc.index
    ]
    return pd.DataFrame(rows, columns=["arm", "setting", "alpha", "lambda", "val", "n"])


def selection(cfg: DecayConfig, runs: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """final arm -> (alpha, lambda, mean validation accuracy): each setting's best grid point, and its best at
    lambda = 0; the first in the grid's order on an exact tie (the grid's order is alpha, then lambda)."""
    t = tuning_table(cfg, runs)
    out = {}
    for s, g in t.groupby("setting", sort=False):
        for kind, sub in ((BEST, g), (ZERO, g[g["lambda"] == 0.0])):
            if len(sub) and (kind == BEST or 0.0 in cfg.lambdas[s]):
                i = int(np.argmax(sub["val"].to_numpy()))
                row = sub.iloc[i]
                out[f"{s}-{kind}"] = (float(row["alpha"]), float(row["lambda"]), float(row["val"]))
    return out


@dataclass
class DecaySetting(Setting):
    @cached_property
    def chosen(self) -> dict[str, tuple[float, float, float]]:
        return selection(self.cfg, self.tables.runs)

    @cached_property
    def test(self) -> dict[str, dict[int, float]]:
        """final arm -> fresh seed -> test accuracy (a diverged run counts chance; a failed one is missing)."""
        acc = accuracy_by_seed(self.tables, 1.0 / num_classes(self.cfg.run.data))
        keep = set(self.cfg.seed_list)
        return {a: {x: v for x, v in d.items() if x in keep} for a, d in acc.items() if a in final_arms(self.cfg)}

    def picked(self, arm: str) -> str:
        if arm not in self.chosen:
            return f"{arm}: not selected"
        a, lam, v = self.chosen[arm]
        return f"{arm} alpha {a:g}, lambda {lam:g} (val {v:.3f})"


def _diff(s: DecaySetting, arm: str, ref: str) -> tuple[np.ndarray, str]:
    missing = [a for a in (arm, ref) if a not in s.test]
    if missing:
        return np.array([]), f"no fresh-seed runs of {', '.join(missing)}"
    x, y = paired([s.test[arm].get(k, np.nan) for k in s.cfg.seed_list], [s.test[ref].get(k, np.nan) for k in
                  s.cfg.seed_list])  # fmt: skip
    return x - y, f"{s.picked(arm)}: {np.mean(x):.3f}; {s.picked(ref)}: {np.mean(y):.3f} (test accuracy, fresh seeds)"


def adamw_lead(s: DecaySetting) -> Estimate:
    d, text = _diff(s, f"{ADAMW}-{BEST}", f"{ADAM_L2}-{BEST}")
    if not len(d):
        return Estimate.missing(text)
    note = status_note(s.tables, [f"{ADAMW}-{BEST}", f"{ADAM_L2}-{BEST}"])
    _, ci, n = paired_t(d, np.zeros_like(d))
    return Estimate(float(d.mean()), ci, n, detail=text + (f"; {note}" if note else ""))


def benefit(s: DecaySetting, setting: str) -> Estimate:
    """The setting's tuned decay minus none, at the family's Bonferroni level."""
    family = [x for x in BENEFIT if x in s.cfg.settings]
    if setting not in s.cfg.settings:
        return Estimate.missing(f"the setting {setting} is not in this folder")
    d, text = _diff(s, f"{setting}-{BEST}", f"{setting}-{ZERO}")
    if not len(d):
        return Estimate.missing(text)
    k = len(family)
    level = 1 - 0.05 / k
    ci = t_interval(d, level)

    def p_of(bound: float, side: int, d=d, k=k) -> float:
        return min(1.0, k * t_test_p(d, bound, side))

    note = status_note(s.tables, [f"{setting}-{BEST}", f"{setting}-{ZERO}"])
    return Estimate(
        float(d.mean()),
        Interval(ci.low, ci.high, f"paired t at {100 * level:.1f}% (Bonferroni over {k})", p_of=p_of),
        len(d),
        detail=text + (f"; {note}" if note else ""),
    )


def moves(s: DecaySetting, setting: str) -> Estimate:
    if setting not in s.cfg.settings:
        return Estimate.missing(f"the setting {setting} is not in this folder")
    t = tuning_table(s.cfg, s.tables.runs)
    t = t[t["setting"] == setting]
    if t.empty:
        return Estimate.missing(f"no tuning runs of {setting}")
    best, parts = {}, []
    for alpha, g in t.groupby("alpha", sort=True):
        pos = g[g["lambda"] > 0]
        if pos.empty:
            continue
        top = pos.iloc[int(np.argmax(pos["val"].to_numpy()))]
        best[alpha] = float(top["lambda"])
        zero = g[g["lambda"] == 0]
        beat = (
            f", lambda 0 better ({zero['val'].iloc[0]:.3f})" if len(zero) and zero["val"].iloc[0] > top["val"] else ""
        )
        parts.append(f"alpha {alpha:g}: lambda {top['lambda']:g} ({top['val']:.3f}){beat}")
    if len(best) < 2:
        return Estimate.missing("fewer than two alphas with a lambda > 0")
    lo, hi = min(best), max(best)
    return Estimate(float(np.log10(best[hi] / best[lo])), n=int(t["n"].min()), detail="; ".join(parts))


ESTIMATORS = {
    K18_ADAMW: adamw_lead,
    **{claim: partial(benefit, setting=s) for s, claim in K18_BENEFIT.items()},
    **{claim: partial(moves, setting=s) for s, claim in K18_MOVES.items()},
}


class DecoupledWD(Experiment):
    name = "decoupled_wd"
    title = "K18: decoupled weight decay against L2 in Adam, and whether decay helps generalization"
    short_names = {"K18": "decoupled decay and its benefit"}
    claims = CLAIMS
    config_class = DecayConfig
    estimators = ESTIMATORS
    setting_class = DecaySetting

    def tasks(self, cfg: DecayConfig) -> list[RunTask]:
        return [
            RunTask(f"{arm}-s{seed}", arm, seed, setting_config(cfg, s, a, lam))
            for arm, (s, a, lam) in grid(cfg).items()
            for seed in cfg.tuning_seeds
        ]

    def followup(self, cfg: DecayConfig, runs: pd.DataFrame, done: list[RunTask]) -> list[RunTask]:
        """The final stage: each setting's selected (alpha, lambda), and its best alpha at lambda = 0, on the fresh
        seeds; nothing once it has run."""
        if any(t.seed in cfg.seed_list for t in done):
            return []
        tasks = []
        for arm, (a, lam, _) in selection(cfg, runs).items():
            s = arm.rsplit("-", 1)[0]
            tasks += [RunTask(f"{arm}-s{seed}", arm, seed, setting_config(cfg, s, a, lam)) for seed in cfg.seed_list]
        return tasks

    def planned_followups(self, cfg: DecayConfig) -> list[int]:
        return [len(final_arms(cfg)) * len(cfg.seed_list) * cfg.run.train.steps]

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        s = DecaySetting(tables, cfg)
        t = tuning_table(cfg, tables.runs)
        names = list(cfg.settings)
        fig, axes = P.figure(ncols=len(names) + 1, width=3.4, height=3.0)
        for j, name in enumerate(names):
            ax = axes[0, j]
            g = t[t["setting"] == name].pivot_table(index="lambda", columns="alpha", values="val")
            if g.empty:
                continue
            im = ax.imshow(g.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
            ax.set_xticks(range(g.shape[1]), [f"{v:g}" for v in g.columns], fontsize=6)
            ax.set_yticks(range(g.shape[0]), [f"{v:g}" for v in g.index], fontsize=6)
            for (i, k), v in np.ndenumerate(g.to_numpy()):
                ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=5, color="w")
            ax.set(xlabel="alpha", ylabel="lambda", title=f"{name}: validation acc (tuning seeds)")
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[0, -1]
        arms = [a for a in final_arms(cfg) if a in s.test]
        for i, arm in enumerate(arms):
            v = list(s.test[arm].values())
            ax.scatter([i] * len(v), v, s=10, color="C0" if arm.endswith(BEST) else "C1")
            ax.errorbar([i], [np.mean(v)], yerr=[np.std(v, ddof=1)] if len(v) > 1 else None, color="k", capsize=3)
        ax.set_xticks(range(len(arms)), arms, rotation=60, fontsize=6)
        ax.set(ylabel="final test accuracy", title="Fresh seeds: selected (best) and lambda = 0 (zero)")
        return [P.save(fig, out / "decoupled_wd.png")]
