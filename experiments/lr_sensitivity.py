"""lr_sensitivity (K17): how much the learning rate matters, and what the optimizers' schedules confound
(Grosse ch. 5, §2 and §4.3).

One shared set of runs on eff_lr's 3-hidden-layer MLP (BN without its gain and shift, so every hidden
unit's incoming weights are scale invariant), every run to the same horizon, read at its final test
accuracy:

* the grid arms (`grid_arms`) run at each rate of `lr_factors` (c/10, c, 10c) around their own centre c,
  the best rate of pilot runs on seeds that judge nothing (best rates differ about 100x between SGD and
  Adam). A seed's sensitivity is the range of its test accuracies over those three rates (a diverged run
  counts chance). BN with SGD against the same network renormalized after every step (the implicit
  decay removed, §4.3) and against the network without BN; RMSprop and Adam against SGD without BN
  (§2, where no implicit decay confounds them);
* the centre arms run at their centre only: Adagrad and RMSprop with and without BN (Adagrad's own
  1/sqrt(k) decay stacked on the one BN brings, §2), RMSprop with epsilon inside the square root as the
  chapter writes it (§2), and Adam and K-FAC on the BN network with and without renormalization beside
  SGD's centre runs: does the gap between two optimizers depend on the implicit schedules they carry (§4.3)?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Claim, Estimate, Rule
from normlab.engine.config import ConfigError, param
from normlab.engine.experiment import Experiment, Setting, arm_configs
from normlab.engine.results import Tables
from normlab.engine.runs import RunTask
from normlab.engine.spec import Analysis, ExperimentConfig
from normlab.engine.stats import folded_t, paired_t, t_interval

from .bn_placement import GridArm, grid_arms, grid_tasks
from .common import accuracy_by_seed, num_classes, status_note

# the arms by role: name -> (model.norm, optim.name, optim.renormalize, optim.eps_inside)
BN_SGD, RENORM_SGD, SGD, RMSPROP, ADAM = "bn_sgd", "renorm_sgd", "sgd", "rmsprop", "adam"
ADAGRAD, BN_RMSPROP, BN_ADAGRAD, INSIDE, BN_ADAM, RENORM_ADAM, BN_KFAC, RENORM_KFAC = (
    "adagrad", "bn_rmsprop", "bn_adagrad", "rmsprop_inside", "bn_adam", "renorm_adam", "bn_kfac", "renorm_kfac"
)  # fmt: skip
ROLES = {
    BN_SGD: ("batch", "sgd", False, False),
    RENORM_SGD: ("batch", "sgd", True, False),
    SGD: ("none", "sgd", False, False),
    RMSPROP: ("none", "rmsprop", False, False),
    ADAM: ("none", "adam", False, False),
    ADAGRAD: ("none", "adagrad", False, False),
    BN_RMSPROP: ("batch", "rmsprop", False, False),
    BN_ADAGRAD: ("batch", "adagrad", False, False),
    INSIDE: ("none", "rmsprop", False, True),
    BN_ADAM: ("batch", "adam", False, False),
    RENORM_ADAM: ("batch", "adam", True, False),
    BN_KFAC: ("batch", "kfac", False, False),
    RENORM_KFAC: ("batch", "kfac", True, False),
}
GRID = (BN_SGD, RENORM_SGD, SGD, RMSPROP, ADAM)  # the arms run at every rate of lr_factors

_SENS = (
    "per seed, the mean shortfall of the final test accuracy below the seed's best over the arm's five rates c/10, "
    "c/3, c, 3c, 10c (the area above its accuracy-against-rate curve; a diverged run counts chance, 1/classes); "
    "{what}, paired by seed, t interval"
)
K17_BN = Claim(
    "K17-bn",
    MEASURED,
    "The implicit decay makes the learning rate matter less: over a 100x range of rates, a BN network's test accuracy "
    "varies less than the same network's with its weights renormalized after every step, whose effective learning "
    "rate stays constant (Grosse ch. 5, §4.3)",
    _SENS.format(what="renormalized's shortfall minus BN's"),
    Rule(">", "sens_gap_min"),
)
K17_NOBN = Claim(
    "K17-nobn", DESCRIPTIVE, "The same against the network without BN",
    _SENS.format(what="no BN's shortfall minus BN's"), Rule("none"),
)  # fmt: skip
K17_RMSPROP = Claim(
    "K17-rmsprop",
    MEASURED,
    "RMSprop's results depend on its learning rate less than SGD's do: over a 100x range of rates centred on each "
    "one's best, its test accuracy varies less (Grosse ch. 5, §2; networks without BN)",
    _SENS.format(what="SGD's shortfall minus RMSprop's"),
    Rule(">", "sens_gap_min"),
)
K17_RMSPROP_STILL = Claim(
    "K17-rmsprop-still",
    MEASURED,
    "RMSprop's results still depend on its learning rate: over the same range its test accuracy falls short of its "
    "best by more than still_min on average (Grosse ch. 5, §2)",
    _SENS.format(what="RMSprop's shortfall"),
    Rule(">", "still_min"),
)
K17_ADAM = Claim(
    "K17-adam", DESCRIPTIVE, "The same for Adam against SGD (no BN)", _SENS.format(what="SGD's shortfall minus Adam's"),
    Rule("none"),
)  # fmt: skip
_GAP = "final test accuracy at each arm's centre rate: {what}, paired by seed, t interval"
K17_ADAGRAD_BN = Claim(
    "K17-adagrad-bn",
    MEASURED,
    "Normalization already imposes a 1/sqrt(k) decay, so Adagrad's own decay costs more with BN: Adagrad falls "
    "further behind RMSprop on a BN network than on the same network without BN (Grosse ch. 5, §2)",
    _GAP.format(what="(Adagrad - RMSprop) with BN minus (Adagrad - RMSprop) without BN"),
    Rule("<", "adagrad_gap_max"),
)
K17_ADAGRAD = Claim(
    "K17-adagrad", DESCRIPTIVE, "Adagrad against RMSprop without BN (its decay helps where positive)",
    _GAP.format(what="Adagrad minus RMSprop, no BN"), Rule("none"),
)  # fmt: skip
K17_ADAGRAD_WITH = Claim(
    "K17-adagrad-with", DESCRIPTIVE, "Adagrad against RMSprop with BN",
    _GAP.format(what="Adagrad minus RMSprop, BN"), Rule("none"),
)  # fmt: skip
_TWO_SIDED = "; |mean| with the t interval folded at 0 (two-sided: either sign counts)"
K17_EPS = Claim(
    "K17-eps",
    MEASURED,
    "The same epsilon means something else inside the square root: RMSprop as the chapter writes it (sqrt(s + eps)) "
    "and as torch computes it (sqrt(s) + eps), eps = 1e-8 and the same rate, end more than eps_min apart in test "
    "accuracy (Grosse ch. 5, §2)",
    _GAP.format(what="RMSprop with eps inside minus RMSprop with eps outside (no BN)") + _TWO_SIDED,
    Rule(">", "eps_min"),
)
K17_CONFOUND = Claim(
    "K17-confound",
    MEASURED,
    "The optimizers' implicit schedules confound their comparison: on a BN network, Adam's lead over SGD changes "
    "by more than confound_min when the weights are renormalized after every step, each optimizer at its own best "
    "rate (Grosse ch. 5, §4.3)",
    _GAP.format(what="(Adam - SGD) renormalized minus (Adam - SGD) plain BN") + _TWO_SIDED,
    Rule(">", "confound_min"),
)
K17_CONFOUND_KFAC = Claim(
    "K17-confound-kfac",
    MEASURED,
    "The same for K-FAC, which carries no implicit decay of its own: on a BN network, K-FAC's lead over SGD changes "
    "by more than confound_min when the weights are renormalized after every step, each at its own best rate "
    "(Grosse ch. 5, §4.3)",
    _GAP.format(what="(K-FAC - SGD) renormalized minus (K-FAC - SGD) plain BN") + "; |mean| with the t interval "
    "folded at 0 (two-sided: either sign counts)",
    Rule(">", "confound_min"),
)
K17_CONFOUND_GAPS = Claim(
    "K17-confound-gaps", DESCRIPTIVE, "Adam's lead over SGD on the BN network, plain and renormalized",
    _GAP.format(what="Adam minus SGD, plain BN (value); renormalized in the detail"), Rule("none"),
)  # fmt: skip
CLAIMS = (
    K17_BN, K17_NOBN, K17_RMSPROP, K17_RMSPROP_STILL, K17_ADAM, K17_ADAGRAD_BN, K17_ADAGRAD, K17_ADAGRAD_WITH,
    K17_EPS, K17_CONFOUND, K17_CONFOUND_KFAC, K17_CONFOUND_GAPS,
)  # fmt: skip


@dataclass
class SensitivityAnalysis(Analysis):
    sens_gap_min: float = param(
        0.0, help="K17-bn, K17-rmsprop: supported when the paired interval of the shortfall difference lies above this"
    )
    still_min: float = param(0.02, min=0.0, help="K17-rmsprop-still: RMSprop's mean shortfall exceeds this (accuracy)")
    adagrad_gap_max: float = param(
        0.0, help="K17-adagrad-bn: supported when the interval of the interaction lies below this"
    )
    eps_min: float = param(0.01, min=0.0, help="K17-eps: |accuracy difference| above this (two-sided)")
    confound_min: float = param(0.01, min=0.0, help="K17-confound: |interaction| above this (two-sided)")


@dataclass
class SensitivityConfig(ExperimentConfig):
    lr_factors: list[float] = param(
        default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0],
        help="the grid arms run at these multiples of their centre lr",
    )
    grid_arms: list[str] = param(
        default_factory=lambda: list(GRID), help="the arms run at every rate of lr_factors (the others at their lr)"
    )
    analysis: SensitivityAnalysis = field(default_factory=SensitivityAnalysis)

    def check(self, path: str = "") -> None:
        arms = arm_configs(self)
        for arm in self.grid_arms:
            if arm not in arms:
                raise ConfigError(f"grid_arms: {arm!r} is not an arm; use some of {', '.join(arms)}")
        for arm, rc in arms.items():
            if arm not in ROLES:
                raise ConfigError(f"arms.{arm}: not a role of lr_sensitivity; the roles are {', '.join(ROLES)}")
            want = ROLES[arm]
            have = (rc.model.norm, rc.optim.name, rc.optim.renormalize, rc.optim.eps_inside)
            if have != want:
                raise ConfigError(
                    f"arms.{arm}: the role needs (model.norm, optim.name, optim.renormalize, optim.eps_inside) = "
                    f"{want}; it has {have}"
                )
        if sorted(self.lr_factors) != list(self.lr_factors) or 1.0 not in self.lr_factors:
            raise ConfigError(
                "lr_factors: list the factors in increasing order with 1.0 (the centre) among them, e.g. "
                "[0.1, 0.3, 1.0, 3.0, 10.0]"
            )


def all_arms(cfg: SensitivityConfig) -> dict[str, GridArm]:
    """Every run's arm: the grid arms at every factor ('bn_sgd@lr0.1'), the others at their centre (their own name)."""
    out = grid_arms(cfg, only=list(cfg.grid_arms))
    for arm, rc in arm_configs(cfg).items():
        if arm not in cfg.grid_arms:
            out[arm] = GridArm(arm, rc.optim.lr, rc)
    return out


def centre_name(cfg: SensitivityConfig, arm: str) -> str:
    """The run arm that holds `arm` at its centre rate."""
    if arm not in cfg.grid_arms:
        return arm
    lr = float(f"{arm_configs(cfg)[arm].optim.lr:.6g}")
    return f"{arm}@lr{lr:g}"


@dataclass
class SensitivitySetting(Setting):
    @cached_property
    def arms(self) -> dict[str, GridArm]:
        return all_arms(self.cfg)

    @cached_property
    def acc(self) -> dict[str, dict[int, float]]:
        """run arm -> seed -> final test accuracy; a diverged run counts chance, a run that failed is missing."""
        return accuracy_by_seed(self.tables, 1.0 / num_classes(self.cfg.run.data))

    def centre(self, arm: str) -> dict[int, float]:
        return self.acc.get(centre_name(self.cfg, arm), {})

    def sensitivity(self, arm: str) -> dict[int, float]:
        """seed -> the mean shortfall of the test accuracy below the seed's best over the arm's grid (seeds with
        every rate present)."""
        names = [n for n, g in self.arms.items() if g.base == arm]
        seeds = set.intersection(*[set(self.acc.get(n, {})) for n in names]) if names else set()
        out = {}
        for seed in sorted(seeds):
            vals = np.array([self.acc[n][seed] for n in names], dtype=float)
            if np.all(np.isfinite(vals)):
                out[seed] = float(np.mean(vals.max() - vals))
        return out


def _paired(a: dict[int, float], b: dict[int, float]) -> tuple[list[float], list[float]]:
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _missing(s: SensitivitySetting, arms: list[str]) -> str:
    absent = [a for a in arms if a not in arm_configs(s.cfg)]
    return f"the arm(s) {', '.join(absent)} are not in this folder" if absent else ""


def _notes(s: SensitivitySetting, arms: list[str]) -> str:
    names = [n for n, g in s.arms.items() if g.base in arms]
    note = status_note(s.tables, names)
    return f"; {note} (diverged runs count chance)" if note else ""


def sens_gap(s: SensitivitySetting, arm: str, ref: str) -> Estimate:
    """Mean over seeds of arm's accuracy range minus ref's (both over their own grids)."""
    why = _missing(s, [arm, ref])
    if why:
        return Estimate.missing(why)
    x, y = _paired(s.sensitivity(arm), s.sensitivity(ref))
    value, ci, n = paired_t(x, y)
    if not n:
        return Estimate.missing(f"no seed has every rate of both {arm} and {ref}")
    return Estimate(
        value,
        ci,
        n,
        detail=f"shortfall over c/10-10c: {arm} {np.mean(x):.3f}, {ref} {np.mean(y):.3f} (test accuracy, mean over "
        f"{n} seeds){_notes(s, [arm, ref])}",
    )


def sens_level(s: SensitivitySetting, arm: str) -> Estimate:
    why = _missing(s, [arm])
    if why:
        return Estimate.missing(why)
    vals = list(s.sensitivity(arm).values())
    if not vals:
        return Estimate.missing(f"no seed has every rate of {arm}")
    return Estimate(float(np.mean(vals)), t_interval(vals), len(vals), detail=f"per seed {_fmt(vals)}"
                    f"{_notes(s, [arm])}")  # fmt: skip


def _fmt(vals) -> str:
    return ", ".join(f"{v:.3f}" for v in vals)


def two_sided(est: Estimate) -> Estimate:
    """The estimate as |mean| with its interval folded at 0 (the rows that predict a difference of either sign)."""
    if not np.isfinite(est.value):
        return est
    value, ci = folded_t(est.value, est.ci, est.n)
    return Estimate(value, ci, est.n, checks=est.checks, detail=f"mean {est.value:+.4f}; {est.detail}")


def centre_gap(s: SensitivitySetting, arm: str, ref: str) -> Estimate:
    why = _missing(s, [arm, ref])
    if why:
        return Estimate.missing(why)
    x, y = _paired(s.centre(arm), s.centre(ref))
    value, ci, n = paired_t(x, y)
    if not n:
        return Estimate.missing(f"no seed has both {arm} and {ref}")
    return Estimate(
        value, ci, n,
        detail=f"test accuracy at the centre rates: {arm} {np.mean(x):.3f}, {ref} {np.mean(y):.3f}"
        f"{_notes(s, [arm, ref])}",
    )  # fmt: skip


def interaction(s: SensitivitySetting, a1: str, b1: str, a2: str, b2: str) -> Estimate:
    """Per seed (a1 - b1) - (a2 - b2) at the centre rates."""
    why = _missing(s, [a1, b1, a2, b2])
    if why:
        return Estimate.missing(why)
    c = {arm: s.centre(arm) for arm in (a1, b1, a2, b2)}
    seeds = sorted(set.intersection(*[set(v) for v in c.values()]))
    g1 = [c[a1][x] - c[b1][x] for x in seeds]
    g2 = [c[a2][x] - c[b2][x] for x in seeds]
    value, ci, n = paired_t(g1, g2)
    if not n:
        return Estimate.missing("no seed has all four arms")
    return Estimate(
        value, ci, n,
        detail=f"{a1} - {b1}: {np.mean(g1):+.3f}; {a2} - {b2}: {np.mean(g2):+.3f} (test accuracy at the centre "
        f"rates){_notes(s, [a1, b1, a2, b2])}",
    )  # fmt: skip


ESTIMATORS = {
    K17_BN: partial(sens_gap, arm=RENORM_SGD, ref=BN_SGD),
    K17_NOBN: partial(sens_gap, arm=SGD, ref=BN_SGD),
    K17_RMSPROP: partial(sens_gap, arm=SGD, ref=RMSPROP),
    K17_RMSPROP_STILL: partial(sens_level, arm=RMSPROP),
    K17_ADAM: partial(sens_gap, arm=SGD, ref=ADAM),
    K17_ADAGRAD_BN: partial(interaction, a1=BN_ADAGRAD, b1=BN_RMSPROP, a2=ADAGRAD, b2=RMSPROP),
    K17_ADAGRAD: partial(centre_gap, arm=ADAGRAD, ref=RMSPROP),
    K17_ADAGRAD_WITH: partial(centre_gap, arm=BN_ADAGRAD, ref=BN_RMSPROP),
    K17_EPS: lambda s: two_sided(centre_gap(s, INSIDE, RMSPROP)),
    K17_CONFOUND: lambda s: two_sided(interaction(s, RENORM_ADAM, RENORM_SGD, BN_ADAM, BN_SGD)),
    K17_CONFOUND_KFAC: lambda s: two_sided(interaction(s, RENORM_KFAC, RENORM_SGD, BN_KFAC, BN_SGD)),
    K17_CONFOUND_GAPS: partial(centre_gap, arm=BN_ADAM, ref=BN_SGD),
}

_LABELS = {
    BN_SGD: "BN, SGD", RENORM_SGD: "BN renormalized, SGD", SGD: "no BN, SGD", RMSPROP: "no BN, RMSprop",
    ADAM: "no BN, Adam",
}  # fmt: skip


class LRSensitivity(Experiment):
    name = "lr_sensitivity"
    title = "K17: learning-rate sensitivity, Adagrad's decay and the optimizers' confounded schedules"
    short_names = {"K17": "learning-rate sensitivity and implicit schedules"}
    claims = CLAIMS
    config_class = SensitivityConfig
    estimators = ESTIMATORS
    setting_class = SensitivitySetting

    def tasks(self, cfg: SensitivityConfig) -> list[RunTask]:
        return grid_tasks(all_arms(cfg), cfg.seed_list)

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        s = SensitivitySetting(tables, cfg)
        bases = list(cfg.grid_arms)
        col = P.colors(bases)
        fig, axes = P.figure(ncols=2, width=4.4, height=3.2)
        for arm in bases:
            rows = [
                (g.lr / arm_configs(cfg)[arm].optim.lr, s.acc.get(n, {})) for n, g in s.arms.items() if g.base == arm
            ]
            rows.sort(key=lambda r: r[0])
            f = np.array([r[0] for r in rows])
            m = np.array([np.mean(list(r[1].values())) if r[1] else np.nan for r in rows])
            sd = np.array([np.std(list(r[1].values()), ddof=1) if len(r[1]) > 1 else np.nan for r in rows])
            lr = arm_configs(cfg)[arm].optim.lr
            # SGD without BN is the reference of both panels
            for ax in [axes[0, 0]] * (arm in (BN_SGD, RENORM_SGD, SGD)) + [axes[0, 1]] * (
                arm not in (BN_SGD, RENORM_SGD)
            ):
                ax.errorbar(f, m, yerr=sd, color=col[arm], marker="o", capsize=2,
                            label=f"{_LABELS.get(arm, arm)} (c = {lr:g})")  # fmt: skip
        for ax, title in ((axes[0, 0], "BN's implicit decay (§4.3)"), (axes[0, 1], "Adaptive methods, no BN (§2)")):
            ax.set(xscale="log", xlabel="learning rate / its centre c", ylabel="final test accuracy", title=title)
            ax.axhline(1.0 / num_classes(cfg.run.data), color="k", ls=":", lw=1)  # chance
            P.legend(ax, fontsize=6)
        return [P.save(fig, out / "lr_sensitivity.png")]
