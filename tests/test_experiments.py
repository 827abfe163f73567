"""Experiments: their modules do what they claim, and verdicts follow the data on hand-made tables."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.engine.config import to_dict
from normlab.engine.results import Tables
from normlab.engine.runner import load_config
from normlab.experiments import REGISTRY
from normlab.experiments.noise import AffineNoise, NoiseConfig

ROOT = Path(__file__).resolve().parent.parent


# ---------- the knockout's noise module ----------


def test_noise_changes_per_unit_mean_and_variance_as_configured():
    torch.manual_seed(0)
    cfg = NoiseConfig(mean_halfwidth=0.5, scale_max=2.0, mean_walk=0.0, log_scale_walk=0.0)
    noise = AffineNoise(50, cfg).train()
    x = torch.randn(4000, 50)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)  # BN output: mean 0, var 1 per unit
    y = noise(x)
    mean, std = y.mean(0), y.std(0, unbiased=False)
    assert mean.abs().max() <= 0.5 + 1e-5 and mean.abs().max() > 0.3  # m_j ~ U(-0.5, 0.5)
    assert std.min() >= 1.0 - 1e-5 and std.max() <= 2.0 + 1e-5 and std.max() > 1.7  # gamma_j ~ U(1, 2)
    y2 = noise(x)
    assert not torch.allclose(y, y2)  # re-drawn every step


def test_noise_drifts_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    cfg = NoiseConfig(mean_halfwidth=0.0, scale_max=1.0, mean_walk=0.1, log_scale_walk=0.0)
    noise = AffineNoise(20, cfg).train()
    x = torch.zeros(8, 20)
    for _ in range(100):
        noise(x)
    assert noise.center.std() > 0.5  # random walk: std ~ 0.1 * sqrt(100)
    noise.eval()
    a, b = noise(torch.ones(8, 20)), noise(torch.ones(8, 20))
    assert torch.equal(a, b)  # no randomness at eval
    assert torch.allclose(a, 1.0 + noise.center.expand(8, 20))  # expected map: E[gamma] = 1 here


def test_knockout_inserts_noise_only_in_the_noisy_arms_and_scales_it_by_level():
    from normlab.experiments.knockout import arm_specs

    exp, cfg = load_config(REGISTRY["knockout"].default_config, REGISTRY)
    specs = arm_specs(cfg)
    tasks = {t.arm: t for t in exp.tasks(cfg)}
    assert set(tasks) == set(specs)
    for arm, sp in specs.items():
        t = tasks[arm]
        assert (t.after_norm is None) == (sp.role in ("plain", "bn"))
        assert t.config.optim.lr == sp.lr
        assert (t.config.model.norm == "none") == (sp.role in ("plain", "plain_noise"))
        if sp.role == "noise":
            assert t.after_norm.cfg.mean_halfwidth == pytest.approx(cfg.noise.mean_halfwidth * sp.level)
            assert t.after_norm.cfg.scale_max == pytest.approx(1 + (cfg.noise.scale_max - 1) * sp.level)
    # every level at every learning rate of the grid, plain and bn too
    assert {(sp.role, sp.level, sp.lr) for sp in specs.values() if sp.role == "noise"} == {
        ("noise", s, lr) for s in cfg.design.levels for lr in cfg.design.lr_grid
    }
    # apart from norm and lr, every arm is the same network and training
    a, b = to_dict(tasks["bn-lr0.1"].config), to_dict(tasks["plain-lr0.3"].config)
    a["model"].pop("norm"), b["model"].pop("norm"), a["optim"].pop("lr"), b["optim"].pop("lr")
    assert a == b


def test_noise_without_bn_sits_where_the_normalizer_would():
    from normlab.engine.models import build_model
    from normlab.engine.spec import ModelConfig
    from normlab.experiments.noise import NoiseFactory

    net = build_model(ModelConfig(arch="mlp", width=8, depth=2, norm="none"), (4,), 3, NoiseFactory(NoiseConfig()))
    assert all(type(b.after_norm).__name__ == "AffineNoise" for b in net.blocks)


def test_fixed_batch_probes_leave_training_unchanged():
    from normlab.engine.spec import RunConfig
    from normlab.engine.train import RunTask, train
    from normlab.experiments.noise import NoiseFactory
    from normlab.engine.config import from_dict

    raw = {
        "data": {"name": "synthetic", "num_samples": 200},
        "model": {"arch": "mlp", "width": 16, "depth": 2, "norm": "batch"},
        "train": {"steps": 20, "batch_size": 32, "eval_every": 10},
        "probes": {"every": 5, "weights": False, "inputs": False, "preacts": True},
    }
    plain = from_dict(RunConfig, raw)
    fixed = from_dict(RunConfig, {**raw, "probes": {**raw["probes"], "fixed_batch": 64}})
    a = train(RunTask("a", "a", 0, plain, NoiseFactory(NoiseConfig())))
    b = train(RunTask("b", "b", 0, fixed, NoiseFactory(NoiseConfig())))
    assert a.final == b.final  # same weights, same noise draws, same BN statistics
    la = [r for r in a.rows if r[1] == "batch_loss"]
    lb = [r for r in b.rows if r[1] == "batch_loss"]
    assert la == lb
    pa = [r[5] for r in a.rows if r[1] == "preact_mean"]
    pb = [r[5] for r in b.rows if r[1] == "preact_mean"]
    assert pa != pb  # but the statistics come from another batch


# Verdicts on hand-made tables, for every claim: tests/test_verdicts.py


# ---------- every experiment end to end ----------

SMOKE_CONFIGS = [(name, exp.default_config) for name, exp in sorted(REGISTRY.items())] + [
    ("knockout", ROOT / "configs/paper/knockout_cifar10.yaml")
]


@pytest.mark.parametrize("name,config", SMOKE_CONFIGS, ids=[str(c.relative_to(ROOT)) for _, c in SMOKE_CONFIGS])
def test_smoke_run_of_every_experiment(name, config, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", name, "--config", str(config), "--smoke", "--jobs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    claims = pd.read_csv(out / "claims.csv")
    exp = REGISTRY[name]
    assert len(claims) >= 1 and set(claims["claim_id"]) <= {c.id for c in exp.claims}
    assert set(claims["verdict"]) <= {"supported", "not supported", "inconclusive", "not judged"}
    # a statistic that could not be computed never gets a verdict other than inconclusive
    assert claims.loc[~np.isfinite(claims["value"]), "verdict"].isin(["inconclusive", "not judged"]).all()
    # the manifest lists the seeds the runs actually used
    import json

    runs = pd.read_csv(out / "runs.csv")
    if len(runs):
        assert json.loads((out / "manifest.json").read_text())["seeds"] == sorted(set(runs["seed"]))
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots, "every experiment draws at least one figure"
    before = {p: (out / "plots" / p).read_bytes() for p in plots}
    assert CliRunner().invoke(app, ["plot", str(out)]).exit_code == 0
    assert {p: (out / "plots" / p).read_bytes() for p in plots} == before  # regenerated identically


def test_final_train_loss_window_uses_the_configured_steps():
    from normlab.experiments.common import final_train_loss

    runs = pd.DataFrame(
        [{"run_id": f"{a}-s0", "arm": a, "seed": 0, "status": "ok", "train.steps": 100} for a in ("plain", "bn")]
    )
    rows = [
        (f"{a}-s0", a, 0, step, "batch_loss_avg", "", "value", pd.NA, v)
        for a, v in (("plain", 1.0), ("bn", 0.1))
        for step in (0, 50, 95)
    ]
    metrics = pd.DataFrame(rows, columns=["run_id", "arm", "seed", "step", "metric", "layer", "stat", "item", "value"])
    t = Tables(Path("."), {}, {}, runs, metrics)
    # probes at 0, 50, 95 of 100 steps; fraction 0.5 keeps steps >= 50
    t.metrics.loc[(t.metrics["step"] == 50), "value"] = 9.0
    v = final_train_loss(t, 0.5).set_index("arm")["value"]
    assert v["bn"] == (9.0 + 0.1) / 2
    # a window that starts after the last probe still holds the last probe, never nothing
    t.runs["train.steps"] = 200
    assert final_train_loss(t, 0.5).set_index("arm")["value"]["bn"] == 0.1
    t.runs.loc[0, "status"] = "diverged"  # a diverged run is missing, not a number
    assert np.isnan(final_train_loss(t, 0.5).set_index("arm")["value"]["plain"])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_claim_has_exactly_one_estimator(name):
    """analyze is a loop over the claims' estimators: none missing, none for a claim the experiment lacks."""
    exp = REGISTRY[name]
    assert sorted(c.id for c in exp.estimators) == sorted(c.id for c in exp.claims)
    assert all(callable(f) for f in exp.estimators.values())


def test_curvature_claims_by_role_are_the_ones_their_ids_name():
    from normlab.experiments.curvature import K8

    word = {"ggn": "", "eq9": "eq9-", "top": "top-", "bn_next": "bnnext-", "bn_prev": "bnprev-",
            "knockout": "knockout-", "centered": "centered-", "class": "class-"}  # fmt: skip
    for w, roles in K8.items():
        assert {role: c.id for role, c in roles.items()} == {role: f"K8-{word[role]}{w}" for role in word}
