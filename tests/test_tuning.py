"""optimizer_tuning: quasi-random search, the budget-curve formula, selection and the K5 verdict."""
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normlab.engine.config import to_dict
from normlab.engine.results import Tables
from normlab.experiments import REGISTRY, load_config
from normlab.experiments.optimizer_tuning import OptimizerTuning, halton

EXP: OptimizerTuning = REGISTRY["optimizer_tuning"]


def test_halton_points_are_seeded_and_stratified():
    a, b = halton(16, 3, seed=0), halton(16, 3, seed=0)
    assert np.array_equal(a, b) and not np.array_equal(a, halton(16, 3, seed=1))
    assert ((a >= 0) & (a < 1)).all()
    # base-2 coordinate of 16 points: exactly one point in each sixteenth (before the shift, and a
    # shift mod 1 keeps that property)
    assert sorted(np.floor(a[:, 0] * 16).astype(int).tolist()) == list(range(16))


def test_expected_best_of_k_matches_brute_force_enumeration():
    pool = np.array([0.61, 0.70, 0.55, 0.68, 0.72, 0.40])
    for k in range(1, len(pool) + 1):
        brute = np.mean([max(c) for c in combinations(pool, k)])
        assert EXP.expected_best(pool, k) == pytest.approx(brute, abs=1e-12)


def test_careful_trials_share_budget_and_stay_in_their_ranges():
    _, cfg = load_config(EXP.default_config, REGISTRY)
    tasks = EXP.tasks(cfg)
    for workload in cfg.workloads:
        for opt in ("sgd", "adam"):
            careful = [t for t in tasks if t.arm.startswith(f"{workload}-{opt}-careful-")]
            assert len(careful) == cfg.careful_trials
            assert {t.config.train.steps for t in careful} == {cfg.run.train.steps}
            lo, hi = cfg.search[opt].lr
            assert all(lo <= t.config.optim.lr <= hi for t in careful)
            assert all(t.config.optim.name == opt for t in careful)
    narrow_adam = [t for t in tasks if "-adam-narrow-" in t.arm]
    assert {t.config.optim.lr for t in narrow_adam} == {0.001}


def _runs(vals: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"{a}-s0", "arm": a, "seed": 0, "status": "ok", "final_val_acc": v}
                         for a, v in vals.items()])


def test_followup_reruns_the_best_trial_by_validation_accuracy_with_fresh_seeds():
    _, cfg = load_config(EXP.default_config, REGISTRY, smoke=True)
    tasks = EXP.tasks(cfg)
    vals = {t.arm: 0.5 for t in tasks}
    vals["mlp-adam-careful-t01"] = 0.9
    follow = EXP.followup(cfg, _runs(vals), tasks)
    chosen = [t for t in follow if t.arm == "mlp-adam-careful-final"]
    best = next(t for t in tasks if t.arm == "mlp-adam-careful-t01")
    assert len(chosen) == cfg.final_seeds and all(t.config == best.config for t in chosen)
    assert not {t.seed for t in follow} & {t.seed for t in tasks}          # fresh seeds
    assert EXP.followup(cfg, _runs(vals), tasks + follow) == []            # one follow-up stage only


def _final_tables(acc: dict[tuple[str, str], list[float]]) -> Tables:
    _, cfg = load_config(EXP.default_config, REGISTRY)
    rows = []
    for workload in cfg.workloads:
        for (opt, protocol), vals in acc.items():
            for s, v in enumerate(vals):
                rows.append({"run_id": f"{workload}-{opt}-{protocol}-final-s{s}", "arm": f"{workload}-{opt}-{protocol}-final",
                             "seed": s, "status": "ok", "final_test_acc": v, "final_val_acc": v})
    return Tables(Path("."), to_dict(cfg), {}, pd.DataFrame(rows), pd.DataFrame())


@pytest.mark.parametrize("careful_adam,narrow_adam,expected", [
    ([0.70, 0.71, 0.69, 0.70, 0.71], [0.60, 0.61, 0.59, 0.60, 0.61], "supported"),      # gap closes
    ([0.60, 0.61, 0.59, 0.60, 0.61], [0.70, 0.71, 0.69, 0.70, 0.71], "not supported"),  # gap opens
])
def test_k5_verdict(careful_adam, narrow_adam, expected):
    sgd = [0.70, 0.705, 0.695, 0.70, 0.70]
    t = _final_tables({("sgd", "careful"): sgd, ("adam", "careful"): careful_adam,
                       ("sgd", "narrow"): sgd, ("adam", "narrow"): narrow_adam})
    rows = EXP.analyze(t)
    assert [r.claim_id for r in rows] == ["K5-mlp", "K5-cnn"]
    assert {r.verdict for r in rows} == {expected}
