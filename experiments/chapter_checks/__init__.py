"""chapter_checks (X rows): the chapter's statements that an exact computation decides, as exact checks.

Grosse ch. 5 makes many statements that are algebra about a stated instance: the outlier of an
uncentered linear-regression Hessian (§3), the step that Eq. 10's preconditioner takes (§3.1), K-FAC's
invariance to affine maps of the activations (§3.2, Fig. 3), what a BN-fed or LN-fed layer ignores
(§4.2, §4.4), how rescaling moves K-FAC's factors and the C-norm (§5.2-5.3), and the optimizer
arithmetic of §2. Each row here compares two independent computations in float64 (a closed form
against autograd or torch's own optimizers), on synthetic instances whose moments are exact (the
chapter's own example of §3.1: every entry of the mean 0.1, covariance I), or on small random
networks. No network is trained for a result: the few checks that step an optimizer (X20-rank,
X43-explr) check an identity at every step. A row that says two things agree is a maximum error against a tolerance
set from float64's rounding scale; a row that says they differ is a minimum difference against a
floor far above that scale.

Where the chapter's text and the exact computation part ways (the outlier is not exactly 1 + |m|^2
once the design matrix has its homogeneous coordinate; the diagonal entries of §3.1's example are 1.01;
AlexNet's local response normalization is not scale invariant; K-FAC's C-norm does not shrink under
rescaling), the row states what is computed and the report says where the chapter differs.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pandas as pd
import torch

from normlab.engine import plots as P
from normlab.engine.claims import Estimate
from normlab.engine.executor import ParallelMap, serial_map
from normlab.engine.experiment import Setting, TableExperiment
from normlab.engine.results import Tables

from .claims import CLAIMS
from .conditioning import (
    check_affine,
    check_eq10_step,
    check_kfac_a_outlier,
    check_preconditioners,
    check_quasi_invariant,
    check_regression_outlier,
    check_standardize,
)
from .config import ChecksConfig
from .normalizers import (
    check_bn_centering,
    check_bn_path_radial,
    check_bn_layer,
    check_bn_mean_step,
    check_bn_paths,
    check_exp_lr,
    check_ln,
    check_ln_batch,
    check_ln_shift,
    check_lrn,
    check_renorm,
)
from .optimizers import (
    check_batch_ef,
    check_bias_correction,
    check_ema_age,
    check_ef_power,
    check_ema_rank,
    check_fisher_ggn,
    check_terminal_velocity,
)
from .weight_decay import check_eq27, check_free_rescale, check_rescaling_metrics, check_schatten, check_wd

CHECKS = (
    check_ema_age, check_bias_correction, check_terminal_velocity, check_fisher_ggn, check_ema_rank,
    check_batch_ef, check_ef_power, check_regression_outlier, check_standardize, check_kfac_a_outlier,
    check_eq10_step, check_preconditioners, check_affine, check_quasi_invariant, check_bn_paths, check_bn_layer,
    check_bn_mean_step, check_bn_centering, check_bn_path_radial, check_renorm, check_exp_lr, check_ln,
    check_ln_batch, check_ln_shift, check_lrn, check_wd, check_schatten, check_free_rescale,
    check_rescaling_metrics, check_eq27,
)  # fmt: skip


def _seed_rows(cfg: ChecksConfig, seed: int) -> list[dict]:
    rows = []
    for check in CHECKS:
        rows += check(cfg, seed)
    return rows


def worst(s: Setting, check: str, how: str) -> Estimate:
    """The worst value of one check over its cases and seeds: the largest error of an agreement, the
    smallest difference of a disagreement."""
    t = s.tables.read("checks")
    d = t[t["check"] == check] if len(t) else t
    if d.empty:
        return Estimate.missing(f"no '{check}' rows in checks.csv")
    idx = d["value"].idxmax() if how == "max" else d["value"].idxmin()
    at = d.loc[idx]
    cases = d.groupby("case", sort=False)["value"].agg(how)
    detail = f"worst at {at['case']}, seed {at['seed']}"
    if len(cases) > 1:
        detail += "; by case: " + ", ".join(f"{k} {v:.3g}" for k, v in cases.items())
    extras = [c for c in d.columns if c not in ("check", "seed", "case", "value") and d[c].notna().any()]
    for c in extras:
        vals = d[c].dropna().astype(float)
        detail += f"; {c.replace('_', ' ')} {vals.min():.4g}" + (
            f" to {vals.max():.4g}" if vals.max() != vals.min() else ""
        )
    return Estimate(float(at["value"]), n=int(d["seed"].nunique()), detail=detail)


class ChapterChecks(TableExperiment):
    name = "chapter_checks"
    title = "X: the chapter's statements that an exact computation decides"
    short_names = {
        "X20": "§2 optimizer arithmetic",
        "X21": "§2.1 the empirical Fisher's power",
        "X30": "§3 the uncentered outlier",
        "X31": "§3.1 preconditioners",
        "X32": "§3.2 affine invariance",
        "X40": "§4 BN's two paths",
        "X42": "§4.2 what BN ignores",
        "X43": "§4.3 the decay's arithmetic",
        "X44": "§4.4 LN and LRN",
        "X50": "§5 weight decay",
        "X52": "§5.2 K-FAC's factors",
        "X53": "§5.3 the C-norm",
    }
    claims = tuple(c for c, _ in CLAIMS.values())
    estimators = {c: partial(worst, check=check, how=how) for check, (c, how) in CLAIMS.items()}
    config_class = ChecksConfig

    def derived(self, cfg: ChecksConfig, pmap: ParallelMap = serial_map) -> dict[str, pd.DataFrame]:
        rows = []
        with torch.random.fork_rng(devices=[]):
            for seed in cfg.seed_list:
                rows += _seed_rows(cfg, seed)
        return {"checks": pd.DataFrame(rows)}

    def plot(self, tables: Tables, out: Path) -> list[Path]:
        cfg = self.typed_config(tables)
        t = tables.read("checks")
        if t.empty:
            return []
        fig, axes = P.figure(ncols=2, width=6.0, height=7.0)
        ax = axes[0, 0]
        a = cfg.analysis
        ids = []
        for check, (claim, _) in CLAIMS.items():
            v = t[t["check"] == check]["value"].astype(float)
            if v.empty:
                continue
            ids.append(claim.id)
            agree = claim.rule.op == "<"
            color = "#1f77b4" if agree else ("#2ca02c" if claim.rule.op == ">" else "#7f7f7f")
            negative = v < 0  # a log axis cannot show them: drawn at their size, as red crosses
            y = len(ids) - 1
            ax.scatter(v[~negative].clip(lower=1e-18), [y] * int((~negative).sum()), s=12, alpha=0.6, color=color)
            ax.scatter(-v[negative], [y] * int(negative.sum()), s=24, marker="x", color="#d62728")
            if claim.rule.op != "none":
                lo, hi = claim.rule.bounds(a)
                tol = hi if agree else lo
                if tol > 0:
                    ax.plot([tol, tol], [len(ids) - 1.35, len(ids) - 0.65], color="#d62728", lw=2)
        ax.set_yticks(range(len(ids)), ids, fontsize=7)
        ax.set(xscale="log", xlabel="blue: an error (below the red bar passes); green: a difference (above it "
               "passes);\nred x: a negative value, at its size", title="Every exact check, case and seed")  # fmt: skip
        ax.invert_yaxis()
        ax = axes[0, 1]
        pre = t[t["check"] == "diag_keeps"]
        if not pre.empty:
            by_d = pre.groupby("dim")[["top", "diag_top"]].mean()
            quasi = t[t["check"] == "quasi_removes"].groupby("dim")["quasi_top"].mean()
            dims = by_d.index.astype(float)
            ax.plot(dims, by_d["top"], "o-", color="#d62728", label="H: no preconditioner")
            ax.plot(dims, by_d["diag_top"], "s--", color="#ff7f0e", label="diagonal, D = diag H")
            ax.plot(quasi.index.astype(float), quasi, "^-", color="#2ca02c", label="quasi-diagonal, Eq. 10")
            r = dims * cfg.problem.mean_entry**2
            ax.plot(dims, 1 + r, ":", color="k", label="1 + ||m||^2 (the chapter)")
            ax.set(xscale="log", yscale="log", xlabel="dimension D (m = 0.1 in every coordinate, Sigma = I)",
                   ylabel="largest eigenvalue", title="§3.1: the outlier under each preconditioner")  # fmt: skip
            ax.legend(fontsize=8)
        return [P.save(fig, out / "chapter_checks.png")]
