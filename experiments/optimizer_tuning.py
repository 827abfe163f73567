"""optimizer_tuning (K5): does careful tuning close the gap between SGD and Adam?

Grosse ch. 5, §6, after Choi et al. (2019): comparisons between optimizers depend on how each was
tuned. Two protocols with the same code and step budget:
  narrow  - the habits the folklore came from: Adam at its default lr 1e-3, SGD with momentum 0.9
            on a small lr grid, constant learning rate;
  careful - a seeded, scrambled Sobol search (scipy.stats.qmc) over a space declared as data in
            the config (AlgoPerf style: one entry per hyperparameter, with its distribution and
            range), with the same number of trials for every optimizer.
Adam's space includes momentum SGD as a limit (Choi et al.'s inclusion argument): epsilon reaches
values far above sqrt(v), where Adam's step is alpha m / eps, and the learning rate is drawn as a
ratio r with alpha = r (eps_ref + eps), so alpha / eps stays in a useful range when eps is large.
Selection uses a validation split carved from train. Each protocol's selected configuration is
re-run with the experiment's seeds (`seeds`, `seed_offset`: fresh, never used by a trial; --seeds
is honoured) and judged on test accuracy. The verdict uses the careful protocol's gap alone
(equivalence: its CI contains 0 or lies within the margin); how much the gap shrinks from the
narrow protocol is a descriptive row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, partial
from math import comb
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine import stats as S
from normlab.engine.claims import DESCRIPTIVE, MEASURED, Check, Claim, Estimate, Rule
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import bca, mean_std, paired_t
from normlab.engine.runs import RunTask

from .base import Experiment, Setting

_GAP = Rule("contains0_or_abs<=", "equivalence_margin_points", "points")
_GAP_STAT = (
    "careful protocol: mean test accuracy SGD - Adam (points) of the selected configs re-run on shared "
    "fresh seeds, paired by seed"
)
K5_MLP = Claim(
    "K5-mlp",
    MEASURED,
    "On the MLP, after a careful, equal-budget search, SGD (momentum) and Adam "
    "reach the same test accuracy within noise or within the margin (Grosse ch. 5, §6; Choi et al. 2019)",
    _GAP_STAT,
    _GAP,
)
K5_CNN = Claim(
    "K5-cnn",
    MEASURED,
    "On the 1-D CNN, after a careful, equal-budget search, SGD (momentum) and "
    "Adam reach the same test accuracy within noise or within the margin (Grosse ch. 5, §6; Choi et al. "
    "2019)",
    _GAP_STAT,
    _GAP,
)
_SHRINK_STAT = "|narrow gap| - |careful gap| (points), BCa interval over the shared fresh seeds"
K5_MLP_SHRINK = Claim(
    "K5-mlp-shrink",
    DESCRIPTIVE,
    "How much the SGD-Adam gap on the MLP shrinks from the narrow protocol to the careful one",
    _SHRINK_STAT,
    Rule("none"),
)
K5_CNN_SHRINK = Claim(
    "K5-cnn-shrink",
    DESCRIPTIVE,
    "How much the SGD-Adam gap on the 1-D CNN shrinks from the narrow protocol to the careful one",
    _SHRINK_STAT,
    Rule("none"),
)
CLAIMS_OF_WORKLOAD = {"mlp": (K5_MLP, K5_MLP_SHRINK), "cnn": (K5_CNN, K5_CNN_SHRINK)}

_GRAFT_STAT = (
    "share of the careful protocol's SGD-Adam gap that {graft} closes: (acc_{graft} - acc_sgd) / (acc_adam - "
    "acc_sgd), test accuracy of the selected configs over the shared fresh seeds, BCa interval"
)
_GRAFT = (
    "Grafting Adam's per-layer step length onto SGD's direction (Adam#SGD) closes most of the SGD-Adam gap "
    "(Grosse ch. 5, §2.2; Agarwal et al. 2020), under the same careful protocol and budget"
)
K11_MLP = Claim(
    "K11-mlp", MEASURED, f"{_GRAFT}: MLP", _GRAFT_STAT.format(graft="adam#sgd"), Rule(">=", "graft_closed_min")
)
K11_CNN = Claim(
    "K11-cnn", MEASURED, f"{_GRAFT}: 1-D CNN", _GRAFT_STAT.format(graft="adam#sgd"), Rule(">=", "graft_closed_min")
)
K11_MLP_REVERSE = Claim(
    "K11-mlp-reverse",
    DESCRIPTIVE,
    "The reverse graft, SGD's step length with Adam's direction (SGD#Adam), on the MLP",
    _GRAFT_STAT.format(graft="sgd#adam"),
    Rule("none"),
)
K11_CNN_REVERSE = Claim(
    "K11-cnn-reverse",
    DESCRIPTIVE,
    "The reverse graft, SGD's step length with Adam's direction (SGD#Adam), on the 1-D CNN",
    _GRAFT_STAT.format(graft="sgd#adam"),
    Rule("none"),
)
GRAFT_CLAIMS_OF_WORKLOAD = {"mlp": (K11_MLP, K11_MLP_REVERSE), "cnn": (K11_CNN, K11_CNN_REVERSE)}


@dataclass
class SearchDim:
    """One hyperparameter of a search space: the run key it sets and how it is drawn from u in [0, 1)."""

    key: str = param(help="dotted key of the run config, e.g. optim.lr")
    dist: Literal["log_uniform", "uniform", "one_minus_log_uniform", "choice", "fraction_of_steps"] = param(
        help="log_uniform/uniform over range; one_minus_log_uniform: 1 - log-uniform(range) (momenta); "
        "choice: one of values; fraction_of_steps: uniform(range) x train.steps, rounded"
    )
    range: list[float] = param(default_factory=list, help="[low, high]")
    values: list[Any] = param(default_factory=list, help="choice: the options")
    scale_by_eps: float = param(
        0.0,
        min=0.0,
        help="if > 0: the drawn value is multiplied by (this + optim.eps) "
        "(Adam's lr as a ratio, so that large eps gives momentum SGD)",
    )

    def check(self, path: str) -> None:
        if self.dist == "choice" and not self.values:
            raise C.ConfigError(f"{path}.values: a choice needs at least one value")
        if self.dist != "choice" and (len(self.range) != 2 or self.range[0] > self.range[1]):
            raise C.ConfigError(f"{path}.range: needs [low, high] with low <= high")
        if "log" in self.dist and self.range and self.range[0] <= 0:
            raise C.ConfigError(f"{path}.range: log-uniform ranges must be positive")

    def draw(self, u: float, steps: int) -> Any:
        lo, hi = (self.range + [0.0, 0.0])[:2]
        if self.dist == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.dist == "uniform":
            return float(lo + u * (hi - lo))
        if self.dist == "fraction_of_steps":
            return int(round(steps * (lo + u * (hi - lo))))
        x = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
        return 1.0 - x if self.dist == "one_minus_log_uniform" else x


def sobol(n: int, dims: int, seed: int) -> np.ndarray:
    """n scrambled Sobol points in [0, 1)^dims (Owen scrambling, seeded)."""
    import warnings

    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n need not be a power of two; balance is then approximate
        return qmc.Sobol(dims, scramble=True, seed=np.random.default_rng(seed)).random(n)


def _default_space(opt: str) -> list[SearchDim]:
    common = [
        SearchDim("optim.weight_decay", "log_uniform", [1e-6, 1e-2]),
        SearchDim("optim.schedule", "choice", values=["constant", "cosine"]),
        SearchDim("optim.warmup_steps", "fraction_of_steps", [0.0, 0.1]),
    ]
    if opt == "adam":
        return [
            SearchDim("optim.eps", "log_uniform", [1e-10, 10.0]),
            SearchDim("optim.lr", "log_uniform", [1e-2, 1e2], scale_by_eps=1e-3),
            SearchDim("optim.beta1", "one_minus_log_uniform", [1e-3, 0.5]),
            SearchDim("optim.beta2", "one_minus_log_uniform", [1e-4, 0.1]),
        ] + common
    return [
        SearchDim("optim.lr", "log_uniform", [1e-3, 3.0]),
        SearchDim("optim.momentum", "one_minus_log_uniform", [1e-3, 0.5]),
    ] + common


@dataclass
class TuningAnalysis(Analysis):
    equivalence_margin_points: float = param(
        1.0, min=0.0, help="K5: supported if the careful gap's CI contains 0 or lies within +- this many points"
    )
    graft_closed_min: float = param(0.75, help="K11: Adam#SGD must close at least this share of the SGD-Adam gap")


@dataclass
class TuningConfig(ExperimentConfig):
    workloads: dict[str, dict[str, Any]] = param(
        default_factory=lambda: {"mlp": {}, "cnn": {"model.arch": "cnn1d"}},
        help="name -> overrides of run; names with a claim: mlp, cnn",
    )
    optimizers: list[str] = param(default_factory=lambda: ["sgd", "adam"])
    narrow_sgd_lrs: list[float] = param(default_factory=lambda: [0.01, 0.1])
    narrow_sgd_momentum: float = param(0.9, min=0.0, max=1.0)
    narrow_adam_lrs: list[float] = param(default_factory=lambda: [0.001])
    careful_trials: int = param(64, min=1, help="trials per optimizer and workload")
    search: dict[str, list[SearchDim]] = param(
        default_factory=lambda: {"sgd": _default_space("sgd"), "adam": _default_space("adam")},
        help="optimizer -> its search space, one entry per hyperparameter",
    )
    search_seed: int = param(0, min=0, help="seed of the Sobol scrambling and of every trial's training")
    analysis: TuningAnalysis = field(default_factory=TuningAnalysis)

    def check(self, path: str = "") -> None:
        for opt in self.optimizers:
            if opt not in self.search:
                raise C.ConfigError(f"search.{opt}: the careful protocol needs a search space for every optimizer")
        if self.search_seed in self.seed_list:
            raise C.ConfigError(
                f"seeds: the final re-runs must use fresh seeds, but {self.search_seed} (search_seed) "
                "is among them; raise seed_offset (default 1000)"
            )


BAND_RESAMPLES = 200  # bootstrap resamples of the figure's budget-curve band (descriptive, not a verdict)
BAND_SEED = 0  # its own seed, so the figure regenerates byte for byte


def _narrow(cfg: TuningConfig, opt: str) -> list[tuple[str, dict]]:
    if "#" in opt:  # grafts are judged under the careful protocol only
        return []
    if opt == "adam":
        return [(f"lr={lr:g}", {"optim.name": "adam", "optim.lr": lr}) for lr in cfg.narrow_adam_lrs]
    return [
        (f"lr={lr:g}", {"optim.name": opt, "optim.lr": lr, "optim.momentum": cfg.narrow_sgd_momentum})
        for lr in cfg.narrow_sgd_lrs
    ]


def _careful(cfg: TuningConfig, opt: str, steps: int) -> list[tuple[str, dict]]:
    space = cfg.search[opt]
    pts = sobol(cfg.careful_trials, len(space), cfg.search_seed + cfg.optimizers.index(opt))
    out = []
    for i, u in enumerate(pts):
        ov: dict[str, Any] = {"optim.name": opt}
        for dim, ui in zip(space, u):
            ov[dim.key] = dim.draw(float(ui), steps)
        for dim in space:  # after every draw: a ratio scaled by the drawn eps
            if dim.scale_by_eps:
                ov[dim.key] = ov[dim.key] * (dim.scale_by_eps + ov.get("optim.eps", cfg.run.optim.eps))
        out.append((f"t{i:02d}", ov))
    return out


@dataclass(frozen=True)
class Trial:
    """What an arm is, typed: the analysis groups runs by these fields, never by parsing names."""

    workload: str
    opt: str
    protocol: Literal["narrow", "careful"]
    label: str  # the trial's name, or "final" for the re-run of the selected one
    overrides: tuple = ()  # (dotted key, value) pairs over the workload's run config


def trials(cfg: TuningConfig) -> dict[str, Trial]:
    """Every arm of the experiment, the final re-runs included."""
    out = {}
    for workload in cfg.workloads:
        for opt in cfg.optimizers:
            for protocol, made in (("narrow", _narrow(cfg, opt)), ("careful", _careful(cfg, opt, cfg.run.train.steps))):
                if not made:
                    continue
                for label, ov in made:
                    out[f"{workload}-{opt}-{protocol}-{label}"] = Trial(
                        workload, opt, protocol, label, tuple(ov.items())
                    )
                out[f"{workload}-{opt}-{protocol}-final"] = Trial(workload, opt, protocol, "final")
    return out


def _span(values: np.ndarray) -> str:
    """'62.8-93.5%': the lowest and highest finished value (a diverged run is NaN, left out)."""
    ok = values[np.isfinite(values)]
    return f"{ok.min():.1f}-{ok.max():.1f}%" if len(ok) else "no finished run"


def _with_parts(runs: pd.DataFrame, arms: dict[str, Trial]) -> pd.DataFrame:
    """runs plus the workload/opt/protocol/label of each run's arm, from the typed trial table."""
    get = lambda f: runs["arm"].map(lambda a: getattr(arms[a], f) if a in arms else None)  # noqa: E731
    return runs.assign(workload=get("workload"), opt=get("opt"), protocol=get("protocol"), label=get("label"))


# ---------------------------------------------------------------- claims: one estimator each
@dataclass
class TuningSetting(Setting):
    """The final runs (the selected configs on fresh seeds), with each run's workload, optimizer and protocol."""

    @cached_property
    def final(self) -> pd.DataFrame:
        r = _with_parts(self.tables.runs, trials(self.cfg))
        return r[r["label"] == "final"]

    def test_acc(self, workload: str, opt: str, protocol: str) -> pd.Series:
        """Test accuracy (points) of the selected config's final runs, by seed (NaN where a run failed)."""
        f = self.final
        sel = f[(f["workload"] == workload) & (f["opt"] == opt) & (f["protocol"] == protocol)]
        return (100 * sel["final_test_acc"].where(sel["status"] == "ok")).set_axis(sel["seed"])


def k5(s: TuningSetting, workload: str, row: str) -> Estimate | None:
    """K5 (row "gap"): the careful protocol's SGD - Adam gap, paired by seed; K5-shrink (row
    "shrink"): how much the gap shrinks from the narrow to the careful protocol."""
    if workload not in s.cfg.workloads:
        return None
    acc = {(opt, protocol): s.test_acc(workload, opt, protocol) for protocol in ("narrow", "careful")
           for opt in ("sgd", "adam")}  # fmt: skip
    if not all(len(v) for v in acc.values()):
        why = (
            "needs the selected configs of both optimizers under both protocols"
            if row == "gap"
            else "needs both protocols"
        )
        return Estimate.missing(why)
    seeds = sorted(set.intersection(*(set(v.index) for v in acc.values())))
    v = {k: x.reindex(seeds).to_numpy(dtype=float) for k, x in acc.items()}
    gap, ci, n = paired_t(v[("sgd", "careful")], v[("adam", "careful")])
    narrow, ci_n, _ = paired_t(v[("sgd", "narrow")], v[("adam", "narrow")])
    if row == "shrink":
        shrink = lambda sn, an, sc, ac: abs(sn.mean() - an.mean()) - abs(sc.mean() - ac.mean())  # noqa: E731
        arrays = [v[("sgd", "narrow")], v[("adam", "narrow")], v[("sgd", "careful")], v[("adam", "careful")]]
        detail = f"narrow gap {narrow:+.2f}, careful gap {gap:+.2f} points"
        return Estimate(shrink(*arrays), bca(arrays, shrink), n, [], detail)
    m = {k: mean_std(x)[0] for k, x in v.items()}
    accs = "test acc: " + ", ".join(f"{o} {p} {m[(o, p)]:.1f}%" for p in ("narrow", "careful") for o in ("sgd", "adam"))
    # the spread over the fresh seeds shows a selected config that fails on some of them
    accs += "; careful, per seed: " + ", ".join(f"{o} {_span(v[(o, 'careful')])}" for o in ("sgd", "adam"))
    detail = f"narrow gap {narrow:+.2f} points ({ci_n.method} CI {ci_n.low:+.2f} to {ci_n.high:+.2f}); {accs}"
    return Estimate(gap, ci, n, [], detail)


def k11(s: TuningSetting, workload: str, graft: str) -> Estimate | None:
    """K11: the share of the careful SGD-Adam gap the graft closes, where a gap exists."""
    if workload not in s.cfg.workloads:
        return None
    acc = {opt: s.test_acc(workload, opt, "careful") for opt in ("sgd", "adam", graft)}
    if not len(acc[graft]) or not len(acc["sgd"]) or not len(acc["adam"]):
        return Estimate.missing(f"needs the careful finals of sgd, adam and {graft} (optimizers:)")
    seeds = sorted(set(acc["sgd"].index) & set(acc["adam"].index) & set(acc[graft].index))
    s_, a_, g_ = (acc[o].reindex(seeds).to_numpy(dtype=float) for o in ("sgd", "adam", graft))
    gap, gap_ci, _ = paired_t(a_, s_)
    exists = Check(
        "a gap exists",
        bool(gap_ci.low > 0 or gap_ci.high < 0),
        f"the Adam - SGD gap's CI ({gap_ci.low:+.2f} to {gap_ci.high:+.2f} points) contains 0: "
        "there is no gap to close",
    )

    def closed(sv, av, gv):
        return (np.mean(gv) - np.mean(sv)) / (np.mean(av) - np.mean(sv))

    est = float(closed(s_, a_, g_)) if len(seeds) else float("nan")
    detail = (
        f"test acc: sgd {S.nanmean(s_):.1f}%, adam {S.nanmean(a_):.1f}%, {graft} {S.nanmean(g_):.1f}%; "
        f"gap adam - sgd {gap:+.2f} points ({gap_ci.low:+.2f} to {gap_ci.high:+.2f})"
    )
    interval = bca([s_, a_, g_], closed) if exists.ok else None
    if interval:
        return Estimate(est, interval, len(seeds), [exists], detail)
    return Estimate(est, n=len(seeds), checks=[exists], detail=detail)


class OptimizerTuning(Experiment):
    name = "optimizer_tuning"
    title = "K5, K11: SGD vs Adam under a narrow and a careful tuning protocol, and Adam#SGD grafting"
    claims = (K5_MLP, K5_CNN, K5_MLP_SHRINK, K5_CNN_SHRINK, K11_MLP, K11_CNN, K11_MLP_REVERSE, K11_CNN_REVERSE)
    config_class = TuningConfig

    def _run_config(self, cfg: TuningConfig, workload: str, overrides: dict) -> RunConfig:
        raw = C.apply_overrides(C.to_dict(cfg.run), {**cfg.workloads[workload], **overrides})
        return C.from_dict(RunConfig, raw, f"workloads.{workload}")

    def tasks(self, cfg: TuningConfig) -> list[RunTask]:
        return [
            RunTask(
                f"{arm}-s{cfg.search_seed}", arm, cfg.search_seed, self._run_config(cfg, t.workload, dict(t.overrides))
            )
            for arm, t in trials(cfg).items()
            if t.label != "final"
        ]

    def followup(self, cfg: TuningConfig, runs: pd.DataFrame, done: list[RunTask]) -> list[RunTask]:
        arms = trials(cfg)
        if any(arms[t.arm].label == "final" for t in done):
            return []
        by_arm = {t.arm: t for t in done}
        tasks = []
        for (workload, opt, protocol), g in _with_parts(runs, arms).groupby(
            ["workload", "opt", "protocol"], sort=False
        ):
            ok = g[g["status"] == "ok"]
            if ok.empty:
                continue
            best = ok.sort_values(["final_val_acc", "arm"], ascending=[False, True]).iloc[0]["arm"]
            arm = next(
                a
                for a, t in arms.items()
                if (t.workload, t.opt, t.protocol, t.label) == (workload, opt, protocol, "final")
            )
            for seed in cfg.seed_list:  # fresh seeds (checked): never used by a trial
                tasks.append(RunTask(f"{arm}-s{seed}", arm, seed, by_arm[best].config))
        return tasks

    def planned_followups(self, cfg: TuningConfig) -> list[int]:
        """One stage: each (workload, optimizer, protocol) re-runs its selected trial on every final
        seed, at that group's trial length."""
        tasks = self.tasks(cfg)
        arms = trials(cfg)
        steps = 0
        for workload, opt, protocol in {(t.workload, t.opt, t.protocol) for t in arms.values() if t.label == "final"}:
            group = [
                t.config.train.steps
                for t in tasks
                if (arms[t.arm].workload, arms[t.arm].opt, arms[t.arm].protocol) == (workload, opt, protocol)
            ]
            steps += (max(group) if group else cfg.run.train.steps) * len(cfg.seed_list)
        return [steps]

    # ---------------------------------------------------------------- analysis
    def selected(self, tables: Tables) -> pd.DataFrame:
        """The trial each final arm re-ran: the best by validation accuracy (ties: first by name)."""
        r = _with_parts(tables.runs, trials(self.typed_config(tables)))
        tried = r[(r["label"] != "final") & (r["status"] == "ok")]
        best = (
            tried.sort_values(["final_val_acc", "arm"], ascending=[False, True])
            .groupby(["workload", "opt", "protocol"], sort=False)
            .head(1)
        )
        return best

    estimators = {
        **{
            c: partial(k5, workload=w, row=r)
            for w, pair in CLAIMS_OF_WORKLOAD.items()
            for c, r in zip(pair, ("gap", "shrink"))
        },
        **{
            c: partial(k11, workload=w, graft=g)
            for w, pair in GRAFT_CLAIMS_OF_WORKLOAD.items()
            for c, g in zip(pair, ("adam#sgd", "sgd#adam"))
        },
    }

    setting_class = TuningSetting

    # ---------------------------------------------------------------- figures
    @staticmethod
    def expected_best(values: np.ndarray, k: int) -> float:
        """E[max of k trials drawn without replacement from the pool] (order statistics)."""
        v = np.sort(np.asarray(values, dtype=float))
        n = len(v)
        weights = np.array([comb(i, k - 1) for i in range(n)], dtype=float) / comb(n, k)
        return float((weights * v).sum())

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        r = _with_parts(tables.runs, trials(cfg))
        tried = r[(r["label"] != "final")]
        workloads = list(cfg.workloads)
        opts = list(cfg.optimizers)
        col = P.colors(opts)
        fig, axes = P.figure(ncols=len(workloads), nrows=3, width=4.0, height=3.0)
        rng = np.random.default_rng(BAND_SEED)
        for j, workload in enumerate(workloads):
            ax = axes[0, j]
            for opt in opts:
                pool = (
                    100
                    * tried[(tried["workload"] == workload) & (tried["opt"] == opt) & (tried["protocol"] == "careful")][
                        "final_val_acc"
                    ]
                    .fillna(0)
                    .to_numpy()
                )
                if not len(pool):
                    continue
                ks = np.arange(1, len(pool) + 1)
                ax.plot(ks, [self.expected_best(pool, k) for k in ks], color=col[opt], label=f"{opt} careful")
                boots = np.array(
                    [[self.expected_best(rng.choice(pool, len(pool)), k) for k in ks] for _ in range(BAND_RESAMPLES)]
                )
                ax.fill_between(ks, *np.percentile(boots, [5, 95], axis=0), color=col[opt], alpha=0.15, lw=0)
                narrow = 100 * tried[
                    (tried["workload"] == workload) & (tried["opt"] == opt) & (tried["protocol"] == "narrow")
                ]["final_val_acc"].fillna(0)
                if len(narrow):
                    ax.scatter([len(narrow)], [narrow.max()], color=col[opt], marker="s", label=f"{opt} narrow (best)")
            ax.set(
                xlabel="number of trials k",
                ylabel="expected best val. accuracy (%)",
                title=f"{workload}: budget curves (5-95% band;\ndiverged trials count as 0%)",
            )
            P.legend(ax, fontsize=6)
            ax = axes[1, j]
            final = r[(r["label"] == "final") & (r["workload"] == workload)]
            labels, means, errs, colors = [], [], [], []
            for protocol in ("narrow", "careful"):
                for opt in opts:
                    v = 100 * final[(final["opt"] == opt) & (final["protocol"] == protocol)]["final_test_acc"].dropna()
                    if len(v):
                        lo, hi = np.percentile(v, [0, 100])
                        labels.append(f"{opt}\n{protocol}")
                        means.append(v.mean())
                        errs.append([[v.mean() - lo], [hi - v.mean()]])
                        colors.append(col[opt])
            for i, (mu, e, c) in enumerate(zip(means, errs, colors)):
                ax.errorbar(i, mu, yerr=e, fmt="o", color=c, capsize=3)
            ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30)
            ax.set(
                ylabel="test accuracy (%) of the selected config",
                title=f"{workload}: selected configs, fresh seeds (min-max)",
            )
            ax = axes[2, j]
            for opt in opts:
                t = tried[(tried["workload"] == workload) & (tried["opt"] == opt)]
                for protocol, marker in (("careful", "o"), ("narrow", "s")):
                    d = t[t["protocol"] == protocol]
                    if d.empty:  # the grafts have no narrow protocol
                        continue
                    ax.scatter(
                        d["optim.lr"],
                        100 * d["final_val_acc"].fillna(0),
                        color=col[opt],
                        marker=marker,
                        s=14,
                        label=f"{opt} {protocol}",
                    )
            ax.set(
                xscale="log",
                xlabel="learning rate",
                ylabel="val. accuracy (%)",
                title=f"{workload}: sensitivity to lr (diverged: 0%)",
            )
            # below the axes: the points fill the panel, so a legend inside would cover some
            P.legend(ax, fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
        return [P.save(fig, out / "optimizer_tuning.png")]
