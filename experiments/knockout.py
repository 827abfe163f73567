"""knockout (K1): does batch norm help optimization by removing internal covariate shift?

Grosse ch. 5, §4.2, after Santurkar et al. (2018): put the shift back after every BN layer with
a random per-unit affine map a_j <- gamma_j * a_j + m_j, drawn afresh at every step from
distributions that themselves drift over training. If BN helped *because* it removed the shift,
the noisy network should train like the network without BN. The chapter reports that it trains
almost like plain BN.

Design (typed in `design:`, expanded by `arm_specs`): the network without BN (`plain`), with BN
(`bn`), and with BN followed by the drifting per-unit noise at several strengths s (`levels`,
multiplying the noise's half-width, its gain spread and its walks), each at every learning rate of
`lr_grid`; plus Santurkar et al.'s own variant, noise drawn i.i.d. per example and unit (`iid`), at
several strengths (`iid_levels`), and the noise in the network without BN (`plain_noise`), both at
`common_lr`.

The verdict reads the dose-response curve where the noisy network's statistics drift as much as
the plain network's ("resembles a network without BN", §4.2): the drift ratio R(s) (noisy / plain,
scale-free drift of the per-unit means and variances on a fixed probe batch) and the gap ratio
G(s) = (L_noise(s) - L_bn) / (L_plain - L_bn) are interpolated in log s to the level s* where
R = 1; the BCa interval resamples seeds jointly through that whole computation. L is the loss on
the whole training set in eval mode (noise replaced by its expected map), which the noise does not
inflate by itself; the noise-on training loss is a secondary row. Two learning-rate protocols:
the paper's (every arm at `common_lr`) and each arm at its best LR of the grid, chosen on the same
loss on other seeds (cross-fitted). The i.i.d. variant is read the same way: its own dose-response
curve, at the strength where its drift crosses the plain network's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from normlab.engine import metrics as M
from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import Interval, bca, paired_t
from normlab.engine.runs import RunTask

from normlab.engine.experiment import Experiment, Setting

from .noise import NoiseConfig, NoiseFactory
from .common import crossfit_folds, restrict, final_metric, final_train_loss, needs_probes, status_note, values_by_seed

_STATEMENT = (
    "Re-introducing a random per-unit affine map (gain and shift) after every BN layer barely slows training: "
    "BN+noise trains about as well as BN, and both beat no BN (Grosse ch. 5, §4.2; the chapter redraws the map "
    "every batch, normlab's map also drifts over training, as Santurkar et al.'s distributions did)"
)
_AT_MATCH = (
    "read at the noise strength s* where the noisy network's drift equals the plain network's "
    "(log-log interpolation); ratio of means over seeds"
)
K1 = Claim(
    "K1",
    MEASURED,
    _STATEMENT + "; the paper's protocol: every arm at the same LR",
    "G(s*) = (L_noise - L_bn) / (L_plain - L_bn), L = final loss on the whole training set in eval mode, " + _AT_MATCH,
    Rule("<", "max_gap_ratio"),
)
K1_BESTLR = Claim(
    "K1-bestlr",
    MEASURED,
    _STATEMENT + "; every arm at its best LR of the grid, chosen on other seeds",
    "G(s*) as in K1, each arm at its own best learning rate, cross-fitted: the LR is chosen on one half of "
    "the seeds (lowest mean L, the loss the claim is about) and judged on the other half, then the halves swap",
    Rule("<", "max_gap_ratio"),
)
K1_TRAINLOSS = Claim(
    "K1-trainloss",
    MEASURED,
    _STATEMENT + "; secondary statistic, the paper's protocol",
    "G(s*) with L = the training loss the optimizer saw (noise on), mean over the last final_fraction of steps",
    Rule("<", "max_gap_ratio"),
)
K1_IID = Claim(
    "K1-iid",
    MEASURED,
    "With the noise drawn i.i.d. per example and unit (Santurkar et al.'s 2018 own variant; the chapter "
    "describes only the per-unit map), BN+noise still trains about as well as BN",
    "G(s*) as in K1 on the i.i.d. noise's own dose-response curve (iid_levels, every arm at common_lr): the gap "
    "ratio at the strength where its drift equals the plain network's",
    Rule("<", "max_gap_ratio"),
)
K1_NOBN = Claim(
    "K1-nobn",
    DESCRIPTIVE,
    "The same noise in a network without BN: how much does it cost there?",
    "geometric mean over seeds of L_plain_noise / L_plain (eval-mode training-set loss)",
    Rule("none"),
)
K1_BESTLR_SELECTION = Claim(
    "K1-bestlr-selection",
    DESCRIPTIVE,
    "How much K1-bestlr depends on which learning rate each arm wins by: the same statistic with the "
    "choice made again in every bootstrap resample of the seeds",
    "G(s*) as in K1-bestlr; percentile interval over resamples that redo every arm's LR choice",
    Rule("none"),
)
CLAIMS = (K1, K1_BESTLR, K1_TRAINLOSS, K1_IID, K1_NOBN, K1_BESTLR_SELECTION)
SELECTION_RESAMPLES = 2000


@dataclass
class KnockoutDesign:
    levels: list[float] = param(
        default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0],
        help="noise strengths s of the dose-response curve (increasing)",
    )
    lr_grid: list[float] = param(
        default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0], help="learning rates of every arm (increasing)"
    )
    common_lr: float = param(0.1, min=0.0, help="the paper's protocol: one LR for every arm (must be in lr_grid)")
    iid_levels: list[float] = param(
        default_factory=lambda: [1.0, 2.0, 5.0],
        help="strengths of the i.i.d. noise arms, increasing (i.i.d. draws average out in the batch statistics, "
        "so they need larger strengths to drift like the plain network)",
    )
    plain_noise_level: float = param(1.0, min=0.0, help="strength of the noise in the network without BN")


@dataclass
class KnockoutAnalysis(Analysis):
    final_fraction: float = param(0.1, min=0.01, max=1.0, help="K1-trainloss: average over this last fraction of steps")
    max_gap_ratio: float = param(0.25, min=0.0, help="supported if the gap ratio and its CI are below this")
    noisy_layer: str = param("layer3", help="layer whose statistics the figure shows")


@dataclass
class KnockoutConfig(ExperimentConfig):
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    design: KnockoutDesign = field(default_factory=KnockoutDesign)
    analysis: KnockoutAnalysis = field(default_factory=KnockoutAnalysis)

    def check(self, path: str = "") -> None:
        d = self.design
        if self.arms:
            raise C.ConfigError("arms: the knockout builds its arms from `design:` (levels, lr_grid); remove `arms`")
        if d.common_lr not in d.lr_grid:
            raise C.ConfigError(f"design.common_lr: {d.common_lr:g} must be one of design.lr_grid {d.lr_grid}")
        for key, levels in (("levels", d.levels), ("iid_levels", d.iid_levels)):
            if list(levels) != sorted(set(levels)) or not levels or min(levels) <= 0:
                raise C.ConfigError(f"design.{key}: needs positive, increasing noise strengths, e.g. [0.1, 0.3, 1, 3]")
        if self.run.model.norm == "none":
            raise C.ConfigError(
                "run.model.norm: the knockout's base network must have a normalizer (the plain arms remove it)"
            )
        needs_probes(
            self.run,
            "knockout",
            "preacts",
            "the manipulation check (drift) and the training-loss window come from the probes",
        )


@dataclass(frozen=True)
class ArmSpec:
    """What an arm is, typed: the analysis reads roles, levels and learning rates from here."""

    role: Literal["plain", "bn", "noise", "iid", "plain_noise"]
    level: float  # noise strength (0: no noise)
    lr: float
    config: RunConfig


def arm_specs(cfg: KnockoutConfig) -> dict[str, ArmSpec]:
    d = cfg.design
    base = C.to_dict(cfg.run)

    def run(lr: float, plain: bool) -> RunConfig:
        ov = {"optim.lr": lr, **({"model.norm": "none"} if plain else {})}
        return C.from_dict(RunConfig, C.apply_overrides(base, ov))

    specs = {}
    for lr in d.lr_grid:
        specs[f"plain-lr{lr:g}"] = ArmSpec("plain", 0.0, lr, run(lr, True))
        specs[f"bn-lr{lr:g}"] = ArmSpec("bn", 0.0, lr, run(lr, False))
        for s in d.levels:
            specs[f"noise{s:g}-lr{lr:g}"] = ArmSpec("noise", s, lr, run(lr, False))
    for s in d.iid_levels:
        specs[f"iid{s:g}-lr{d.common_lr:g}"] = ArmSpec("iid", s, d.common_lr, run(d.common_lr, False))
    specs[f"plain_noise{d.plain_noise_level:g}-lr{d.common_lr:g}"] = ArmSpec(
        "plain_noise", d.plain_noise_level, d.common_lr, run(d.common_lr, True)
    )
    return specs


def relative_drift(tables: Tables, arm: str) -> tuple[list[float], list[float], list[int]]:
    """Per seed: mean over layers and probes of the scale-free drift of the per-unit statistics
    at the input of each activation: |change of the means| / typical std, and |change of the
    variances| / typical variance (typical = median over units at that probe). Scale-free,
    because BN outputs have unit variance while a plain network's can be 0.02 or 2."""
    key = ["seed", "layer", "step"]

    def of_arm(df: pd.DataFrame) -> pd.Series:
        return df[(df["arm"] == arm) & (df["step"] > 0)].set_index(key)["value"]

    var = of_arm(tables.series(M.PREACT_VAR, "median"))
    mdrift, vdrift = of_arm(tables.series(M.PREACT_MEAN_DRIFT)), of_arm(tables.series(M.PREACT_VAR_DRIFT))
    rel_mean = (mdrift / np.sqrt(var.reindex(mdrift.index))).groupby(level="seed").mean()
    rel_var = (vdrift / var.reindex(vdrift.index)).groupby(level="seed").mean()
    rel_mean, rel_var = rel_mean.sort_index(), rel_var.reindex(rel_mean.index)
    return rel_mean.tolist(), rel_var.tolist(), [int(x) for x in rel_mean.index]


def gap_ratio(plain, bn, noisy):
    return (noisy - bn) / (plain - bn)


def drift_index(tables: Tables) -> dict[str, dict[int, float]]:
    """arm -> seed -> the geometric mean of the relative drifts of the per-unit means and variances."""
    out = {}
    for arm in tables.runs["arm"].unique():
        rel_mean, rel_var, seeds = relative_drift(tables, arm)
        out[arm] = {s: float(np.sqrt(a * b)) for s, a, b in zip(seeds, rel_mean, rel_var)}
    return out


def crossing(levels: np.ndarray, ratio: np.ndarray, gap: np.ndarray) -> float:
    """G at the level where the drift ratio R crosses 1, interpolating log R and G in log s between
    the two levels that bracket the first crossing; NaN if R never crosses 1 within the levels."""
    lr = np.log(ratio)
    for i in range(len(levels) - 1):
        if lr[i] < 0 <= lr[i + 1]:
            t = -lr[i] / (lr[i + 1] - lr[i])
            return float(gap[i] + t * (gap[i + 1] - gap[i]))
    return float("nan")


@dataclass
class Curve:
    """Per-seed arrays (seeds shared by every arm used) of one protocol."""

    seeds: list[int]
    plain: np.ndarray
    bn: np.ndarray
    noise: np.ndarray  # levels x seeds
    drift_plain: np.ndarray
    drift_noise: np.ndarray  # levels x seeds
    arms: dict[str, str]  # role or level -> arm
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # noise strengths (increasing)

    def statistic(self, *arrays) -> float:
        plain, bn, dp, *rest = arrays
        k = len(rest) // 2
        noise, dn = np.array([r.mean() for r in rest[:k]]), np.array([r.mean() for r in rest[k:]])
        return crossing(self.levels, dn / dp.mean(), gap_ratio(plain.mean(), bn.mean(), noise))

    def arrays(self) -> list[np.ndarray]:
        return [self.plain, self.bn, self.drift_plain, *self.noise, *self.drift_noise]


@dataclass
class KnockoutSetting(Setting):
    """What every K1 estimator reads: the typed arms, each run's losses and drift, each arm's best LR."""

    @cached_property
    def specs(self) -> dict[str, ArmSpec]:
        return arm_specs(self.cfg)

    @cached_property
    def eval_loss(self) -> dict[str, dict[int, float]]:
        return values_by_seed(final_metric(self.tables, M.TRAIN_LOSS))

    @cached_property
    def train_loss(self) -> dict[str, dict[int, float]]:
        return values_by_seed(final_train_loss(self.tables, self.a.final_fraction))

    @cached_property
    def drift(self) -> dict[str, dict[int, float]]:
        return drift_index(self.tables)

    @cached_property
    def best(self) -> dict[tuple[str, float], float]:
        return Knockout.best_lrs(self.specs, self.eval_loss)


class Knockout(Experiment):
    name = "knockout"
    title = "K1: the knockout of internal covariate shift (Santurkar et al. 2018)"
    short_names = {"K1": "BN with the covariate shift put back"}
    claims = CLAIMS
    config_class = KnockoutConfig

    def tasks(self, cfg: KnockoutConfig) -> list[RunTask]:
        tasks = []
        for arm, spec in arm_specs(cfg).items():
            factory = (
                None
                if spec.role in ("plain", "bn")
                else NoiseFactory(cfg.noise, iid=spec.role == "iid", level=spec.level)
            )
            for seed in cfg.seed_list:
                tasks.append(RunTask(f"{arm}-s{seed}", arm, seed, spec.config, factory))
        return tasks

    @staticmethod
    def best_lrs(specs: dict[str, ArmSpec], val: dict[str, dict[int, float]]) -> dict[tuple[str, float], float]:
        """(role, level) -> the LR of the grid with the lowest mean of the given loss (the claim's own, L)."""
        return Knockout.choose_lrs(specs, {arm: np.array(list(v.values()), dtype=float) for arm, v in val.items()})

    @staticmethod
    def choose_lrs(specs: dict[str, ArmSpec], val: dict[str, np.ndarray]) -> dict[tuple[str, float], float]:
        """best_lrs on each arm's losses as an array (a bootstrap resample repeats seeds)."""
        best: dict[tuple[str, float], tuple[float, float]] = {}
        for arm, sp in specs.items():
            if sp.role not in ("plain", "bn", "noise") or arm not in val:
                continue
            v = val[arm]
            score = (
                float(np.mean(v)) if len(v) and np.isfinite(v).all() else float("inf")
            )  # a diverged seed rules it out
            key = (sp.role, sp.level)
            if key not in best or score < best[key][1]:
                best[key] = (sp.lr, score)
        return {k: v[0] for k, v in best.items()}

    def curve(self, specs, lrs: dict[tuple[str, float], float], loss, drift, levels, role="noise") -> Curve | None:
        """Per-seed arrays of one protocol: plain, bn and the noisy arms of `role` at every level."""

        def arm_of(role, level):
            lr = lrs.get((role, level))
            return next((a for a, sp in specs.items() if sp.role == role and sp.level == level and sp.lr == lr), None)

        arms = {"plain": arm_of("plain", 0.0), "bn": arm_of("bn", 0.0)}
        arms.update({f"{s:g}": arm_of(role, s) for s in levels})
        if (
            any(a is None or a not in loss or a not in drift for k, a in arms.items() if k != "bn")
            or arms["bn"] not in loss
        ):
            return None
        noise_arms = [arms[f"{s:g}"] for s in levels]
        seeds = sorted(
            set.intersection(
                *(set(loss[a]) for a in arms.values()), *(set(drift[a]) for a in [arms["plain"], *noise_arms])
            )
        )
        pick = lambda d, a: np.array([d[a][s] for s in seeds], dtype=float)  # noqa: E731
        return Curve(
            seeds,
            pick(loss, arms["plain"]),
            pick(loss, arms["bn"]),
            np.array([pick(loss, a) for a in noise_arms]),
            pick(drift, arms["plain"]),
            np.array([pick(drift, a) for a in noise_arms]),
            arms,
            np.asarray(levels, dtype=float),
        )

    def estimate(self, c: Curve, what: str) -> Estimate:
        keep = np.isfinite(np.vstack(c.arrays())).all(axis=0)
        arrays = [a[keep] for a in c.arrays()]
        n = int(keep.sum())
        value = c.statistic(*arrays)
        ratio = c.drift_noise[:, keep].mean(axis=1) / c.drift_plain[keep].mean()
        gaps = gap_ratio(c.plain[keep].mean(), c.bn[keep].mean(), c.noise[:, keep].mean(axis=1))
        helps_est, helps_ci, _ = paired_t(c.plain, c.bn)
        helps = Check(
            "BN helps",
            bool(np.isfinite(helps_ci.low) and helps_ci.low > 0),
            f"L_plain - L_bn = {helps_est:.3g}, {helps_ci.method} CI [{helps_ci.low:.3g}, {helps_ci.high:.3g}] "
            "does not lie above 0, so there is no gap to explain",
        )
        crosses = Check(
            "drift ratio crosses 1",
            bool(np.isfinite(value)),
            "the noisy/plain drift ratio does not cross 1 between the smallest and the largest level "
            f"(it runs from x{ratio[0]:.3g} to x{ratio[-1]:.3g}), so no level resembles the plain network",
        )
        curve = ", ".join(f"s={s:g}: R {r:.3g}, G {g:.3g}" for s, r, g in zip(c.levels, ratio, gaps))
        detail = (
            f"{what}; arms used: plain {c.arms['plain']}, bn {c.arms['bn']}; L plain {c.plain[keep].mean():.4g}, "
            f"bn {c.bn[keep].mean():.4g}; dose-response (drift ratio R, gap ratio G): {curve}"
        )
        return Estimate(value, bca(arrays, c.statistic), n, [helps, crosses], detail)

    @property
    def estimators(self) -> dict:
        return {
            K1: partial(self._gap, protocol="common"),
            K1_BESTLR: partial(self._gap, protocol="best"),
            K1_TRAINLOSS: partial(self._gap, protocol="trainloss"),
            K1_IID: self._iid,
            K1_NOBN: self._nobn,
            K1_BESTLR_SELECTION: self._selection,
        }

    setting_class = KnockoutSetting

    def _gap(self, s: "KnockoutSetting", protocol: str) -> Estimate:
        """The gap ratio G at the strength s* where the noisy network drifts as much as the plain one:
        every arm at common_lr (K1), each at its best LR (K1-bestlr), or on the noise-on training loss."""
        d = s.cfg.design
        common = {(sp.role, sp.level): d.common_lr for sp in s.specs.values()}
        lrs, loss, what = {
            "common": (common, s.eval_loss, f"every arm at lr {d.common_lr:g}"),
            "best": (
                s.best,
                s.eval_loss,
                "each arm at its best LR: "
                + ", ".join(f"{r}{'' if not lv else f' s={lv:g}'} {lr:g}" for (r, lv), lr in s.best.items()),
            ),
            "trainloss": (common, s.train_loss, f"noise-on training loss, lr {d.common_lr:g}"),
        }[protocol]
        if protocol == "best":
            c, what = self.crossfit_curve(s)
        else:
            c = self.curve(s.specs, lrs, loss, s.drift, d.levels)
        if c is None or len(c.seeds) == 0:
            return Estimate.missing("needs plain, bn and every noise level with finished runs")
        est = self.estimate(c, what)
        note = status_note(s.tables, [x for x in c.arms.values() if x])
        est.detail += f"; {note}" if note else ""
        return est

    def crossfit_curve(self, s: "KnockoutSetting") -> tuple[Curve | None, str]:
        """K1-bestlr's per-seed arrays, cross-fitted: each half of the seeds is judged at the LRs chosen
        on the other half (lowest mean L), so no seed both picks an arm's LR and judges it."""
        d = s.cfg.design
        seeds = sorted(set.intersection(*(set(v) for v in s.eval_loss.values()))) if s.eval_loss else []
        if len(seeds) < 2:
            return None, ""
        parts, chosen = [], []
        for judged, chosen_on in crossfit_folds(seeds):
            lrs = Knockout.best_lrs(s.specs, restrict(s.eval_loss, chosen_on))
            c = self.curve(s.specs, lrs, restrict(s.eval_loss, judged), restrict(s.drift, judged), d.levels)
            if c is None:
                return None, ""
            parts.append(c)
            chosen.append(
                f"seeds {judged} at LRs chosen on {chosen_on}: "
                + ", ".join(f"{r}{'' if not lv else f' s={lv:g}'} {lr:g}" for (r, lv), lr in lrs.items())
            )
        a, b = parts
        c = Curve(
            a.seeds + b.seeds,
            np.concatenate([a.plain, b.plain]),
            np.concatenate([a.bn, b.bn]),
            np.concatenate([a.noise, b.noise], axis=1),
            np.concatenate([a.drift_plain, b.drift_plain]),
            np.concatenate([a.drift_noise, b.drift_noise], axis=1),
            {k: a.arms[k] if a.arms[k] == b.arms[k] else f"{a.arms[k]} / {b.arms[k]}" for k in a.arms},
            a.levels,
        )
        return c, "cross-fitted best LRs: " + "; ".join(chosen)

    def _selection(self, s: "KnockoutSetting") -> Estimate:
        """K1-bestlr's interval resamples seeds with each arm's learning rate held at the full-sample
        choice; this row redoes the choice (lowest mean L) inside every resample, so
        its interval also carries the uncertainty of a near-tied choice."""
        specs, best, val, loss, drift, a, d = s.specs, s.best, s.eval_loss, s.eval_loss, s.drift, s.a, s.cfg.design
        candidates: dict[tuple[str, float], list[tuple[float, str]]] = {}
        for arm, sp in specs.items():
            if sp.role in ("plain", "bn", "noise"):
                candidates.setdefault((sp.role, sp.level), []).append((sp.lr, arm))
        arms = [arm for group in candidates.values() for _, arm in group]
        if not all(arm in val and arm in loss for arm in arms):
            return Estimate.missing("needs every plain, bn and noise arm at every learning rate")
        needs_drift = [arm for (role, _), group in candidates.items() if role != "bn" for _, arm in group]
        seeds = sorted(
            set.intersection(*(set(val[x]) & set(loss[x]) for x in arms), *(set(drift.get(x, {})) for x in needs_drift))
        )
        if len(seeds) < 3:
            return Estimate.missing(f"{len(seeds)} seeds shared by every arm; needs >= 3")
        col = lambda table, arm: np.array([table[arm][s] for s in seeds], dtype=float)  # noqa: E731
        V, L = {x: col(val, x) for x in arms}, {x: col(loss, x) for x in arms}
        D = {x: col(drift, x) for x in needs_drift}
        levels = np.asarray(d.levels, dtype=float)
        stat = Curve([], *(np.zeros(0),) * 5, {}, levels).statistic

        def g_of(arm: dict, idx: np.ndarray) -> float:
            noise = [arm[("noise", float(s))] for s in levels]
            plain = arm[("plain", 0.0)]
            return stat(L[plain][idx], L[arm[("bn", 0.0)]][idx], D[plain][idx],
                        *(L[x][idx] for x in noise), *(D[x][idx] for x in noise))  # fmt: skip

        chosen = {k: next(x for lr, x in group if lr == best.get(k)) for k, group in candidates.items()}
        point = g_of(chosen, np.arange(len(seeds)))
        rng = np.random.default_rng(0)
        values, same = [], 0
        for _ in range(SELECTION_RESAMPLES):
            idx = rng.integers(0, len(seeds), len(seeds))
            lrs = self.choose_lrs(specs, {x: V[x][idx] for x in arms})  # the choice, made as best_lrs makes it
            same += all(lrs[k] == best.get(k) for k in candidates)
            values.append(g_of({k: next(x for lr, x in group if lr == lrs[k]) for k, group in candidates.items()}, idx))
        g = np.array(values, dtype=float)
        finite = g[np.isfinite(g)]
        lo, hi = np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan)
        above = float(np.mean(finite >= a.max_gap_ratio)) if len(finite) else np.nan
        detail = (
            f"{SELECTION_RESAMPLES} resamples of {len(seeds)} seeds: every arm's choice equals the full-sample one in "
            f"{same / SELECTION_RESAMPLES:.0%}; G(s*) in [{lo:.3g}, {hi:.3g}] (2.5-97.5%), at or above the "
            f"{a.max_gap_ratio:g} bound in {above:.0%} of the resamples with a crossing; no crossing in "
            f"{1 - len(finite) / len(g):.0%}"
        )
        ci = Interval(float(lo), float(hi), "percentile bootstrap, LR choice redone per resample")
        return Estimate(point, ci, len(seeds), [], detail)

    def _iid(self, s: "KnockoutSetting") -> Estimate:
        """Santurkar et al.'s i.i.d.-per-example noise at common_lr: G at the strength where its drift
        crosses the plain network's, read from its own dose-response curve as K1 reads the per-unit one."""
        d = s.cfg.design
        lrs = {(sp.role, sp.level): d.common_lr for sp in s.specs.values()}
        c = self.curve(s.specs, lrs, s.eval_loss, s.drift, d.iid_levels, role="iid")
        if c is None or len(c.seeds) == 0:
            return Estimate.missing("needs plain, bn and every i.i.d. noise level at common_lr with finished runs")
        est = self.estimate(c, f"i.i.d. noise, every arm at lr {d.common_lr:g}")
        note = status_note(s.tables, [x for x in c.arms.values() if x])
        est.detail += f"; {note}" if note else ""
        return est

    def _nobn(self, s: "KnockoutSetting") -> Estimate:
        """The noise without BN: the loss ratio noisy / plain, paired by seed."""
        specs, loss, d = s.specs, s.eval_loss, s.cfg.design
        plain = next((x for x, sp in specs.items() if sp.role == "plain" and sp.lr == d.common_lr), None)
        noisy = next((x for x, sp in specs.items() if sp.role == "plain_noise"), None)
        if plain not in loss or noisy not in loss:
            return Estimate.missing("needs the plain and plain_noise arms")
        seeds = sorted(set(loss[plain]) & set(loss[noisy]))
        ratio, ci, n = paired_t([loss[noisy][x] for x in seeds], [loss[plain][x] for x in seeds], log_ratio=True)
        return Estimate(ratio, ci, n, [], f"level {d.plain_noise_level:g}, lr {d.common_lr:g}")

    # ---------------------------------------------------------------- figures
    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        d = cfg.design
        specs = arm_specs(cfg)
        present = set(tables.runs["arm"])
        ref = min(d.levels, key=lambda s: abs(np.log(s / d.plain_noise_level)))
        iid = d.iid_levels[len(d.iid_levels) // 2]  # the middle of the i.i.d. curve
        shown = {
            "plain": ("plain", 0.0),
            "bn": ("bn", 0.0),
            f"BN + noise s={ref:g}": ("noise", ref),
            f"BN + i.i.d. noise s={iid:g}": ("iid", iid),
            f"noise without BN s={d.plain_noise_level:g}": ("plain_noise", d.plain_noise_level),
        }
        arms = {
            label: next((x for x, sp in specs.items() if (sp.role, sp.level) == key and sp.lr == d.common_lr), None)
            for label, key in shown.items()
        }
        arms = {k: v for k, v in arms.items() if v in present}
        col = P.colors(list(arms))
        fig, axes = P.figure(ncols=2)
        for label, arm in arms.items():
            c = tables.curve(M.BATCH_LOSS_AVG)
            P.mean_band(axes[0, 0], c[(c["arm"] == arm) & (c["step"] > 0)], label, col[label])
            t = tables.curve(M.TEST_ACC)
            P.mean_band(axes[0, 1], t[t["arm"] == arm].assign(value=lambda x: 100 * x["value"]), label, col[label])
        axes[0, 0].set(
            xlabel="step",
            ylabel="training loss (train mode, mean per interval)",
            yscale="log",
            title=f"Training loss (lr {d.common_lr:g})",
        )
        axes[0, 1].set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy")
        P.legend(axes[0, 0], fontsize=6)
        P.legend(axes[0, 1], loc="lower right", fontsize=6)
        paths = [P.save(fig, out / "knockout_curves.png")]
        paths.append(self._plot_dose(tables, cfg, specs, out))

        layer = cfg.analysis.noisy_layer
        fig, axes = P.figure(ncols=len(arms), nrows=2, width=3.4, height=2.6, sharey="row")
        for j, (label, arm) in enumerate(arms.items()):
            for i, metric in enumerate((M.PREACT_MEAN, M.PREACT_VAR)):
                ax = axes[i, j]
                for stat, ls in (("q25", ":"), ("median", "-"), ("q75", ":")):
                    c = tables.curve(metric, layer, stat)
                    g = c[c["arm"] == arm].groupby("step")["value"].mean()
                    ax.plot(g.index, g.values, ls=ls, color=col[label], label=stat)
                ax.set_title(f"{label}: {layer} {metric.split('_')[1]}", fontsize=7)
                ax.set_xlabel("step" if i else "")
                if metric == M.PREACT_VAR:
                    ax.set_yscale("log")
                if j == 0:
                    ax.set_ylabel(f"per-unit {metric.split('_')[1]}\n(quartiles over units, fixed batch)")
        P.legend(axes[0, 0])
        paths.append(P.save(fig, out / "knockout_distributions.png"))
        return paths

    def _plot_dose(self, tables: Tables, cfg: KnockoutConfig, specs, out: Path) -> Path:
        """Gap ratio against drift ratio, one point per noise level, for both LR protocols."""
        a, d = cfg.analysis, cfg.design
        loss = values_by_seed(final_metric(tables, M.TRAIN_LOSS))
        drift = drift_index(tables)
        protocols = {
            f"same lr {d.common_lr:g}": {(sp.role, sp.level): d.common_lr for sp in specs.values()},
            "best lr per arm": self.best_lrs(specs, values_by_seed(final_metric(tables, M.TRAIN_LOSS))),
        }
        fig, axes = P.figure(ncols=1, width=5.0, height=3.6)
        ax = axes[0, 0]
        col = P.colors(list(protocols))
        for label, lrs in protocols.items():
            c = self.curve(specs, lrs, loss, drift, d.levels)
            if c is None or not c.seeds:
                continue
            r = c.drift_noise / c.drift_plain.mean()
            g = gap_ratio(c.plain.mean(), c.bn.mean(), c.noise)  # levels x seeds
            rm, gm = r.mean(axis=1), gap_ratio(c.plain.mean(), c.bn.mean(), c.noise.mean(axis=1))
            ax.errorbar(
                rm,
                gm,
                yerr=[gm - np.nanmin(g, axis=1), np.nanmax(g, axis=1) - gm],
                fmt="o-",
                color=col[label],
                capsize=3,
                label=label,
            )
            for s, x, y in zip(d.levels, rm, gm):
                ax.annotate(f"s={s:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.axhline(a.max_gap_ratio, color="r", lw=0.8, ls="--", label=f"rule: G < {a.max_gap_ratio:g}")
        ax.set_yscale("symlog", linthresh=0.1)  # linear near 0 (the rule), logarithmic for large gaps
        ax.set(
            xscale="log",
            xlabel="drift ratio R (noisy / plain network)",
            ylabel="gap ratio G = (L_noise - L_bn) / (L_plain - L_bn)",
            title="Dose-response: the verdict reads G where R = 1\n(bars: seed range; y linear below 0.1, log above)",
        )
        P.legend(ax, fontsize=6)
        return P.save(fig, out / "knockout_dose.png")
