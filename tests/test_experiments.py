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
from normlab.experiments import REGISTRY, load_config
from normlab.experiments.knockout import AffineNoise, NoiseConfig

ROOT = Path(__file__).resolve().parent.parent


# ---------- the knockout's noise module ----------

def test_noise_changes_per_unit_mean_and_variance_as_configured():
    torch.manual_seed(0)
    cfg = NoiseConfig(mean_halfwidth=0.5, scale_max=2.0, mean_walk=0.0, log_scale_walk=0.0)
    noise = AffineNoise(50, cfg).train()
    x = torch.randn(4000, 50)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)           # BN output: mean 0, var 1 per unit
    y = noise(x)
    mean, std = y.mean(0), y.std(0, unbiased=False)
    assert mean.abs().max() <= 0.5 + 1e-5 and mean.abs().max() > 0.3   # m_j ~ U(-0.5, 0.5)
    assert std.min() >= 1.0 - 1e-5 and std.max() <= 2.0 + 1e-5 and std.max() > 1.7  # gamma_j ~ U(1, 2)
    y2 = noise(x)
    assert not torch.allclose(y, y2)                         # re-drawn every step


def test_noise_drifts_and_is_deterministic_in_eval():
    torch.manual_seed(0)
    cfg = NoiseConfig(mean_halfwidth=0.0, scale_max=1.0, mean_walk=0.1, log_scale_walk=0.0)
    noise = AffineNoise(20, cfg).train()
    x = torch.zeros(8, 20)
    for _ in range(100):
        noise(x)
    assert noise.center.std() > 0.5                          # random walk: std ~ 0.1 * sqrt(100)
    noise.eval()
    a, b = noise(torch.ones(8, 20)), noise(torch.ones(8, 20))
    assert torch.equal(a, b)                                  # no randomness at eval
    assert torch.allclose(a, 1.0 + noise.center.expand(8, 20))  # expected map: E[gamma] = 1 here


def test_knockout_inserts_noise_only_in_the_noisy_arm():
    exp, cfg = load_config(REGISTRY["knockout"].default_config, REGISTRY)
    tasks = {t.arm: t for t in exp.tasks(cfg)}
    assert tasks["bn_noise"].after_norm is not None
    assert tasks["bn"].after_norm is None and tasks["plain"].after_norm is None
    assert tasks["plain"].config.model.norm == "none" and tasks["bn"].config.model.norm == "batch"
    # everything else is the same across arms: architecture, optimizer, lr, steps
    a, b = to_dict(tasks["bn"].config), to_dict(tasks["plain"].config)
    a["model"].pop("norm"), b["model"].pop("norm")
    assert a == b


# ---------- verdict logic on hand-made tables ----------

def _tables(experiment: str, final_losses: dict[str, list[float]], extra_rows=(), status=None) -> Tables:
    """A run folder's tables with a flat training loss per run (batch_loss_avg) and given extras."""
    _, cfg = load_config(REGISTRY[experiment].default_config, REGISTRY)
    runs, rows = [], []
    for arm, losses in final_losses.items():
        for seed, loss in enumerate(losses):
            rid = f"{arm}-s{seed}"
            st = (status or {}).get(rid, "ok")
            runs.append({"run_id": rid, "arm": arm, "seed": seed, "train.steps": 100, "status": st,
                         "final_test_acc": 0.5, "final_train_loss": loss})
            for step in (0, 50, 95):
                rows.append((rid, arm, seed, step, "batch_loss_avg", "", "value", pd.NA, loss))
            for row in extra_rows:
                rows.append((rid, arm, seed, *row(arm)))
    metrics = pd.DataFrame(rows, columns=["run_id", "arm", "seed", "step", "metric", "layer", "stat", "unit", "value"])
    return Tables(Path("."), to_dict(cfg), {}, pd.DataFrame(runs), metrics)


def _knockout_extras(noise_drift: float):
    def rows(kind):
        def make(arm):
            drift = noise_drift if arm == "bn_noise" else 0.1
            return {"var": (50, "preact_var", "layer1", "median", pd.NA, 1.0),
                    "md": (50, "preact_mean_drift", "layer1", "value", pd.NA, drift),
                    "vd": (50, "preact_var_drift", "layer1", "value", pd.NA, drift)}[kind]
        return make
    return [rows("var"), rows("md"), rows("vd")]


@pytest.mark.parametrize("noisy,drift,expected", [
    ([0.11, 0.12, 0.10, 0.11], 1.0, "supported"),        # noise costs little: gap ratio ~0.01
    ([0.90, 0.95, 0.92, 0.91], 1.0, "not supported"),    # noise costs as much as removing BN
    ([0.11, 0.12, 0.10, 0.11], 0.01, "inconclusive"),    # manipulation check fails
])
def test_knockout_verdicts(noisy, drift, expected):
    t = _tables("knockout", {"plain": [1.0, 1.1, 0.9, 1.0], "bn": [0.1, 0.11, 0.09, 0.1], "bn_noise": noisy},
                _knockout_extras(drift))
    (row, _) = REGISTRY["knockout"].analyze(t)
    assert row.claim_id == "K1" and row.verdict == expected
    assert row.n == 4


def test_knockout_counts_diverged_runs_as_missing_not_as_numbers():
    t = _tables("knockout", {"plain": [1.0, 1.1, 0.9], "bn": [0.1, 0.11, 0.09], "bn_noise": [0.11, 0.1, 50.0]},
                _knockout_extras(1.0), status={"bn_noise-s2": "diverged"})
    row = REGISTRY["knockout"].analyze(t)[0]
    assert row.n == 2 and row.verdict == "inconclusive"      # fewer than min_seeds=3 finished
    assert "1 of 3 bn_noise runs diverged" in row.detail


def _placement_extras(after_centered: bool):
    def msq(arm):
        centered = arm.startswith("after") and after_centered
        return (50, "input_mean_sq_norm", "layer2", "value", pd.NA, 0.0 if centered else 40.0)
    return [msq, lambda arm: (50, "input_var_mean", "layer2", "value", pd.NA, 1.0)]


@pytest.mark.parametrize("before,centered,expected", [
    ([0.10, 0.11, 0.09], True, "supported"),
    ([0.30, 0.33, 0.29], True, "not supported"),
    ([0.10, 0.11, 0.09], False, "inconclusive"),
    ([0.10, 0.20, 0.13], True, "inconclusive"),          # CI straddles 1.1
])
def test_bn_placement_verdicts(before, centered, expected):
    t = _tables("bn_placement", {"none": [1.0, 1.0, 1.0], "before": before, "after": [0.11, 0.12, 0.1]},
                _placement_extras(centered))
    rows = REGISTRY["bn_placement"].analyze(t)
    assert [r.claim_id for r in rows] == ["K2"]              # no adam arms in this table
    assert rows[0].verdict == expected


# ---------- every experiment end to end ----------

SMOKE_CONFIGS = [(name, exp.default_config) for name, exp in sorted(REGISTRY.items())] + \
                [("knockout", ROOT / "configs/paper/knockout_cifar10.yaml")]


@pytest.mark.parametrize("name,config", SMOKE_CONFIGS, ids=[str(c.relative_to(ROOT)) for _, c in SMOKE_CONFIGS])
def test_smoke_run_of_every_experiment(name, config, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", name, "--config", str(config), "--smoke", "--jobs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    claims = pd.read_csv(out / "claims.csv")
    exp = REGISTRY[name]
    assert len(claims) >= 1 and all(any(c.startswith(k) for k in exp.claims) for c in claims["claim_id"])
    assert set(claims["verdict"]) <= {"supported", "not supported", "inconclusive"}
    # a statistic that could not be computed never gets a verdict other than inconclusive
    assert (claims.loc[~np.isfinite(claims["value"]), "verdict"] == "inconclusive").all()
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots, "every experiment draws at least one figure"
    before = {p: (out / "plots" / p).read_bytes() for p in plots}
    assert CliRunner().invoke(app, ["plot", str(out)]).exit_code == 0
    assert {p: (out / "plots" / p).read_bytes() for p in plots} == before   # regenerated identically


def test_final_train_loss_window_uses_the_configured_steps():
    from normlab.experiments.common import final_train_loss
    t = _tables("knockout", {"plain": [1.0], "bn": [0.1], "bn_noise": [0.2]})
    # probes at 0, 50, 95 of 100 steps; fraction 0.5 keeps steps >= 50
    t.metrics.loc[(t.metrics["step"] == 50), "value"] = 9.0
    v = final_train_loss(t, 0.5).set_index("arm")["value"]
    assert v["bn"] == (9.0 + 0.1) / 2
    t.runs["train.steps"] = 200   # now only steps >= 100 count, and there are none: NaN, not a guess
    assert final_train_loss(t, 0.5)["value"].isna().all()
