"""Curvature measured inside a batched ensemble (engine/ensemble.py with engine.curvature.measure_many)
against the single-run path: every member gets the rows its run alone gets, from the network its
run alone would hold (EnsembleNet.member_net), with the frozen noise of its own seeded draw."""

import math

import pytest
import torch

from normlab.engine import config as C
from normlab.engine.ensemble import EnsembleNet, pack, train_ensemble, why_not_packable
from normlab.engine.runs import RunTask
from normlab.engine.spec import RunConfig
from normlab.engine.train import train
from normlab.experiments.noise import NoiseConfig, NoiseFactory

CURVATURE = {"steps": [0, 20], "hessian_steps": [20], "density_steps": [20], "top_k": 6, "examples": 60,
             "density_vectors": 10, "density_repeats": 1, "tol": 0.0, "dtype": "float64"}  # fmt: skip


CNN = {"arch": "cnn1d", "channels": [4, 4, 4], "kernel_sizes": [5, 3, 3], "strides": [2, 2, 2]}


def _tasks(norm: str, noise: bool, eq9: bool, cnn: bool = False) -> list[RunTask]:
    cfg = C.from_dict(
        RunConfig,
        {
            "data": {"name": "mnist1d", "val_size": 100},
            "model": {"width": 12, "depth": 3, "norm": norm, **(CNN if cnn else {})},
            "optim": {"lr": 0.05},
            "train": {"steps": 20, "batch_size": 32, "eval_every": 10},
            "probes": {"every": 5, "inputs": False, "preacts": False},
            "curvature": {**CURVATURE, "eq9_steps": [20] if eq9 else []},
        },
    )
    factory = NoiseFactory(NoiseConfig()) if noise else None
    return [RunTask(f"r{s}", "a", s, cfg, factory) for s in range(3)]


@pytest.mark.parametrize(
    "norm,noise,eq9,cnn",
    [("none", False, True, False), ("batch", False, False, False), ("batch", True, False, False),
     ("batch", False, False, True)],
)  # fmt: skip
def test_every_member_gets_the_curvature_rows_of_its_single_run(norm, noise, eq9, cnn):
    tasks = _tasks(norm, noise, eq9, cnn)
    assert why_not_packable(tasks[0]) == "" and [len(u) for u in pack(tasks, 16)] == [3]
    for single, member in zip(map(train, tasks), train_ensemble(tasks)):
        key = lambda r: (r.step, r.metric, r.layer, r.stat, r.item)  # noqa: E731
        assert [key(r) for r in member.rows] == [key(r) for r in single.rows]
        curvature = [(a, b) for a, b in zip(single.rows, member.rows) if a.layer == "layer2" and "eig" in a.metric]
        assert len(curvature) >= 2 * 6 + 6 + (6 if eq9 else 0)
        for a, b in curvature:
            assert b.value == pytest.approx(a.value, rel=1e-5, abs=1e-9), (a.step, a.metric, a.item)
        density = [(a.value, b.value) for a, b in zip(single.rows, member.rows) if a.metric == "ggn_density"]
        assert density and all(b == pytest.approx(a, rel=1e-4, abs=1e-6) for a, b in density)
        assert set(member.final) == set(single.final) and "curvature_seconds" in member.final


def test_a_member_net_is_the_members_network():
    # after training as an ensemble, member k rebuilt as a Net computes what the stacked model computes for it
    tasks = _tasks("batch", True, False)
    net = EnsembleNet.from_seeds(tasks[0].config.model, (40,), 10, [0, 1, 2], after_norm=[t.after_norm for t in tasks])
    x = torch.randn(16, 40)
    stacked = net.forward(x, training=False, shared=True)
    for k in range(3):
        alone = net.member_net(k, (40,), 10, tasks[k].after_norm).eval()
        assert torch.allclose(alone(x), stacked[k], rtol=1e-5, atol=1e-6)


def test_a_diverged_member_is_not_measured_and_the_others_are():
    tasks = _tasks("none", False, False)
    bad = C.from_dict(RunConfig, {**C.to_dict(tasks[1].config), "optim": {"lr": 1e6}})
    tasks[1] = RunTask("r1", "a", 1, bad)
    results = train_ensemble([tasks[0], tasks[1], tasks[2]])
    assert [r.status for r in results] == ["ok", "diverged", "ok"]
    assert not any(r.metric == "ggn_eig" and r.step == 20 for r in results[1].rows)
    for r in (results[0], results[2]):
        assert sum(1 for x in r.rows if x.metric == "ggn_eig" and x.step == 20) == 6
        assert all(math.isfinite(x.value) for x in r.rows if x.metric == "ggn_eig")
