"""optimizer_tuning (K5): does careful tuning close the gap between SGD and Adam?

Grosse ch. 5, §6, after Choi et al. (2019): comparisons between optimizers depend on how each was
tuned. Two protocols with the same code and step budget:
  narrow  - the habits the folklore came from: Adam at its default lr 1e-3, SGD with momentum 0.9
            on a small lr grid, constant learning rate;
  careful - a seeded quasi-random (shifted Halton) search over log-uniform lr, 1-momentum (1-beta1),
            1-beta2 and epsilon (Adam, up to 1), weight decay, schedule and warmup, with the same
            number of trials for every optimizer.
Selection uses a validation split carved from train. Each protocol's selected configuration is
re-run with fresh seeds (a follow-up stage) and judged on test accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import comb
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from normlab.engine import config as C
from normlab.engine import plots as P
from normlab.engine.config import param
from normlab.engine.results import Tables
from normlab.engine.spec import Analysis, ExperimentConfig, RunConfig
from normlab.engine.stats import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, ClaimRow, bootstrap_ci_fn, mean_std)
from normlab.engine.train import RunTask

from .base import Experiment

PRIMES = (2, 3, 5, 7, 11, 13, 17, 19)


def halton(n: int, dims: int, seed: int) -> np.ndarray:
    """n points of the Halton sequence in [0, 1)^dims, shifted by a seeded random vector (mod 1)."""
    pts = np.empty((n, dims))
    for d in range(dims):
        base = PRIMES[d]
        for i in range(n):
            f, r, k = 1.0, 0.0, i + 1
            while k > 0:
                f /= base
                r += f * (k % base)
                k //= base
            pts[i, d] = r
    shift = np.random.default_rng(seed).random(dims)
    return (pts + shift) % 1.0


def _log_uniform(u: float, lo_hi: list[float]) -> float:
    lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
    return float(np.exp(lo + u * (hi - lo)))


@dataclass
class SearchSpace:
    lr: list[float] = param(default_factory=lambda: [1e-3, 1.0], help="log-uniform range")
    one_minus_momentum: list[float] = param(default_factory=lambda: [1e-3, 0.5], help="sgd: 1-momentum; adam: 1-beta1; log-uniform")
    one_minus_beta2: list[float] = param(default_factory=lambda: [1e-4, 0.1], help="adam only; log-uniform")
    eps: list[float] = param(default_factory=lambda: [1e-10, 1.0], help="adam only; log-uniform")
    weight_decay: list[float] = param(default_factory=lambda: [1e-6, 1e-2], help="log-uniform")
    schedules: list[str] = param(default_factory=lambda: ["constant", "cosine"], help="picked uniformly")
    warmup_fraction: list[float] = param(default_factory=lambda: [0.0, 0.1], help="uniform, of the steps")


@dataclass
class TuningAnalysis(Analysis):
    level: float = param(0.95, min=0.5, max=0.999, help="confidence level of the CIs")
    min_seeds: int = param(3, min=1, help="fewer fresh seeds than this gives 'inconclusive'")


@dataclass
class TuningConfig(ExperimentConfig):
    workloads: dict[str, dict[str, Any]] = param(
        default_factory=lambda: {"mlp": {}, "cnn": {"model.arch": "cnn1d"}}, help="name -> overrides of run")
    optimizers: list[str] = param(default_factory=lambda: ["sgd", "adam"])
    narrow_sgd_lrs: list[float] = param(default_factory=lambda: [0.01, 0.1])
    narrow_sgd_momentum: float = param(0.9, min=0.0, max=1.0)
    narrow_adam_lrs: list[float] = param(default_factory=lambda: [0.001])
    careful_trials: int = param(16, min=1, help="trials per optimizer and workload")
    search: dict[str, SearchSpace] = param(default_factory=lambda: {
        "sgd": SearchSpace(lr=[1e-3, 3.0]), "adam": SearchSpace(lr=[1e-5, 0.1])})
    search_seed: int = param(0, min=0, help="seed of the Halton shift and of every trial's training")
    final_seeds: int = param(5, min=1, help="fresh seeds for each selected configuration")
    analysis: TuningAnalysis = field(default_factory=TuningAnalysis)


def _narrow(cfg: TuningConfig, opt: str) -> list[tuple[str, dict]]:
    if opt == "adam":
        return [(f"lr={lr:g}", {"optim.name": "adam", "optim.lr": lr}) for lr in cfg.narrow_adam_lrs]
    return [(f"lr={lr:g}", {"optim.name": opt, "optim.lr": lr, "optim.momentum": cfg.narrow_sgd_momentum})
            for lr in cfg.narrow_sgd_lrs]


def _careful(cfg: TuningConfig, opt: str, steps: int) -> list[tuple[str, dict]]:
    space = cfg.search.get(opt, SearchSpace())
    pts = halton(cfg.careful_trials, 7, cfg.search_seed + (0 if opt == "sgd" else 1))
    out = []
    for i, u in enumerate(pts):
        ov = {"optim.name": opt, "optim.lr": _log_uniform(u[0], space.lr),
              "optim.weight_decay": _log_uniform(u[4], space.weight_decay),
              "optim.schedule": space.schedules[min(int(u[5] * len(space.schedules)), len(space.schedules) - 1)],
              "optim.warmup_steps": int(steps * (space.warmup_fraction[0] + u[6] * (space.warmup_fraction[1] - space.warmup_fraction[0])))}
        one_minus = _log_uniform(u[1], space.one_minus_momentum)
        if opt == "adam":
            ov.update({"optim.beta1": 1 - one_minus, "optim.beta2": 1 - _log_uniform(u[2], space.one_minus_beta2),
                       "optim.eps": _log_uniform(u[3], space.eps)})
        else:
            ov["optim.momentum"] = 1 - one_minus
        out.append((f"t{i:02d}", ov))
    return out


def _with_parts(runs: pd.DataFrame) -> pd.DataFrame:
    """runs plus workload/opt/protocol/label columns, split from arm names 'mlp-sgd-careful-t03'."""
    parts = runs["arm"].str.split("-", n=3, expand=True)
    return runs.assign(workload=parts[0], opt=parts[1], protocol=parts[2], label=parts[3])


class OptimizerTuning(Experiment):
    name = "optimizer_tuning"
    title = "K5: SGD vs Adam under a narrow and a careful tuning protocol"
    claims = ("K5",)
    config_class = TuningConfig

    def _run_config(self, cfg: TuningConfig, workload: str, overrides: dict) -> RunConfig:
        raw = C.apply_overrides(C.to_dict(cfg.run), {**cfg.workloads[workload], **overrides})
        return C.from_dict(RunConfig, raw, f"workloads.{workload}")

    def tasks(self, cfg: TuningConfig) -> list[RunTask]:
        tasks = []
        for workload in cfg.workloads:
            for opt in cfg.optimizers:
                trials = [("narrow", n, ov) for n, ov in _narrow(cfg, opt)] + \
                         [("careful", n, ov) for n, ov in _careful(cfg, opt, cfg.run.train.steps)]
                for protocol, label, ov in trials:
                    arm = f"{workload}-{opt}-{protocol}-{label}"
                    tasks.append(RunTask(f"{arm}-s{cfg.search_seed}", arm, cfg.search_seed,
                                         self._run_config(cfg, workload, ov)))
        return tasks

    def followup(self, cfg: TuningConfig, runs: pd.DataFrame, done: list[RunTask]) -> list[RunTask]:
        if any(t.arm.endswith("-final") for t in done):
            return []
        by_arm = {t.arm: t for t in done}
        trials = _with_parts(runs)
        tasks = []
        for (workload, opt, protocol), g in trials.groupby(["workload", "opt", "protocol"], sort=False):
            ok = g[g["status"] == "ok"]
            if ok.empty:
                continue
            best = ok.sort_values(["final_val_acc", "arm"], ascending=[False, True]).iloc[0]["arm"]
            arm = f"{workload}-{opt}-{protocol}-final"
            for s in range(cfg.final_seeds):
                seed = 1000 + s  # fresh seeds, never used by a trial
                tasks.append(RunTask(f"{arm}-s{seed}", arm, seed, by_arm[best].config))
        return tasks

    # ---------------------------------------------------------------- analysis
    def selected(self, tables: Tables) -> pd.DataFrame:
        """The trial each final arm re-ran: the best by validation accuracy (ties: first by name)."""
        r = _with_parts(tables.runs)
        trials = r[(r["label"] != "final") & (r["status"] == "ok")]
        best = trials.sort_values(["final_val_acc", "arm"], ascending=[False, True]).groupby(
            ["workload", "opt", "protocol"], sort=False).head(1)
        return best

    def analyze(self, tables: Tables) -> list[ClaimRow]:
        cfg = self.typed_config(tables)
        r = _with_parts(tables.runs)
        final = r[r["label"] == "final"]
        rows = []
        for workload in cfg.workloads:
            acc = {}
            for protocol in ("narrow", "careful"):
                for opt in ("sgd", "adam"):
                    sel = final[(final["workload"] == workload) & (final["opt"] == opt) & (final["protocol"] == protocol)]
                    acc[(opt, protocol)] = (100 * sel["final_test_acc"].where(sel["status"] == "ok")).tolist()
            if not all(acc.get((o, p)) for o in ("sgd", "adam") for p in ("narrow", "careful")):
                continue
            gap = lambda s, a: s - a  # noqa: E731
            shrink = lambda sn, an, sc, ac: abs(sn - an) - abs(sc - ac)  # noqa: E731
            m = {k: mean_std(v)[0] for k, v in acc.items()}
            careful, narrow = gap(m[("sgd", "careful")], m[("adam", "careful")]), gap(m[("sgd", "narrow")], m[("adam", "narrow")])
            ci = bootstrap_ci_fn([acc[("sgd", "careful")], acc[("adam", "careful")]], gap, level=cfg.analysis.level)
            ci_n = bootstrap_ci_fn([acc[("sgd", "narrow")], acc[("adam", "narrow")]], gap, level=cfg.analysis.level)
            ci_s = bootstrap_ci_fn([acc[("sgd", "narrow")], acc[("adam", "narrow")], acc[("sgd", "careful")],
                                    acc[("adam", "careful")]], shrink, level=cfg.analysis.level)
            n = min(len(v) for v in acc.values())
            within_noise = ci[0] <= 0 <= ci[1]
            shrank = ci_s[0] > 0
            if not np.isfinite(careful) or n < cfg.analysis.min_seeds:
                verdict = INCONCLUSIVE
            elif within_noise or shrank:
                verdict = SUPPORTED
            elif ci_s[1] < 0:
                verdict = NOT_SUPPORTED
            else:
                verdict = INCONCLUSIVE
            rows.append(ClaimRow(
                f"K5-{workload}", f"On the {workload}, the test-accuracy gap between SGD (momentum) and Adam "
                "is within noise after a careful, equal-budget search, or smaller than after a narrow one "
                "(Grosse ch. 5, §6; Choi et al. 2019)",
                "careful gap: test accuracy SGD - Adam (points), selected configs re-run with fresh seeds",
                careful, "CI contains 0, or |gap| shrinks vs narrow (CI of the shrink > 0)", ci[0], ci[1], n, verdict,
                f"narrow gap {narrow:+.2f} points (CI {ci_n[0]:+.2f} to {ci_n[1]:+.2f}); shrink |narrow| - |careful| "
                f"= {abs(narrow) - abs(careful):+.2f} (CI {ci_s[0]:+.2f} to {ci_s[1]:+.2f}); test acc: "
                + ", ".join(f"{o} {p} {m[(o, p)]:.1f}%" for p in ("narrow", "careful") for o in ("sgd", "adam"))))
        return rows

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
        r = _with_parts(tables.runs)
        trials = r[(r["label"] != "final")]
        workloads = list(cfg.workloads)
        col = P.colors(["sgd", "adam"])
        fig, axes = P.figure(ncols=len(workloads), nrows=3, width=4.0, height=3.0)
        rng = np.random.default_rng(0)
        for j, workload in enumerate(workloads):
            ax = axes[0, j]
            for opt in ("sgd", "adam"):
                pool = 100 * trials[(trials["workload"] == workload) & (trials["opt"] == opt) & (trials["protocol"] == "careful")]["final_val_acc"].fillna(0).to_numpy()
                if not len(pool):
                    continue
                ks = np.arange(1, len(pool) + 1)
                ax.plot(ks, [self.expected_best(pool, k) for k in ks], color=col[opt], label=f"{opt} careful")
                boots = np.array([[self.expected_best(rng.choice(pool, len(pool)), k) for k in ks] for _ in range(200)])
                ax.fill_between(ks, *np.percentile(boots, [5, 95], axis=0), color=col[opt], alpha=0.15, lw=0)
                narrow = 100 * trials[(trials["workload"] == workload) & (trials["opt"] == opt) & (trials["protocol"] == "narrow")]["final_val_acc"].fillna(0)
                if len(narrow):
                    ax.scatter([len(narrow)], [narrow.max()], color=col[opt], marker="s", label=f"{opt} narrow (best)")
            ax.set(xlabel="number of trials k", ylabel="expected best val. accuracy (%)", title=f"{workload}: budget curves (5-95% band;\ndiverged trials count as 0%)")
            ax.legend(fontsize=6)
            ax = axes[1, j]
            final = r[(r["label"] == "final") & (r["workload"] == workload)]
            labels, means, errs, colors = [], [], [], []
            for protocol in ("narrow", "careful"):
                for opt in ("sgd", "adam"):
                    v = 100 * final[(final["opt"] == opt) & (final["protocol"] == protocol)]["final_test_acc"].dropna()
                    if len(v):
                        lo, hi = np.percentile(v, [0, 100])
                        labels.append(f"{opt}\n{protocol}")
                        means.append(v.mean())
                        errs.append([[v.mean() - lo], [hi - v.mean()]])
                        colors.append(col[opt])
            for i, (mu, e, c) in enumerate(zip(means, errs, colors)):
                ax.errorbar(i, mu, yerr=e, fmt="o", color=c, capsize=3)
            ax.set_xticks(range(len(labels)), labels)
            ax.set(ylabel="test accuracy (%) of the selected config", title=f"{workload}: selected configs, fresh seeds (min-max)")
            ax = axes[2, j]
            for opt in ("sgd", "adam"):
                t = trials[(trials["workload"] == workload) & (trials["opt"] == opt)]
                for protocol, marker in (("careful", "o"), ("narrow", "s")):
                    d = t[t["protocol"] == protocol]
                    ax.scatter(d["optim.lr"], 100 * d["final_val_acc"].fillna(0), color=col[opt], marker=marker, s=14,
                               label=f"{opt} {protocol}")
            ax.set(xscale="log", xlabel="learning rate", ylabel="val. accuracy (%)", title=f"{workload}: sensitivity to lr (diverged: 0%)")
            ax.legend(fontsize=6)
        return [P.save(fig, out / "optimizer_tuning.png")]
