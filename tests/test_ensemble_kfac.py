"""K-FAC for many runs at once (engine.kfac.StackedKFAC, through engine/ensemble.py) against
independent computations: each member's step is its own dense damped natural gradient, its factors
are the ones single-run KFAC (itself checked against curvlinops in tests/test_kfac.py) computes for
it, and a batched training run ends where each member's single run ends, to 1e-5 relative."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.engine import config as C
from normlab.engine import metrics as M
from normlab.engine.ensemble import pack, pack_key, train_ensemble, why_not_packable
from normlab.engine.kfac import KFAC, StackedKFAC
from normlab.engine.runs import RunTask
from normlab.engine.spec import RunConfig
from normlab.engine.train import train


@pytest.mark.parametrize("dampings", [(0.0, 1e-3, 0.5)])
def test_each_members_stacked_step_is_its_own_dense_natural_gradient(dampings):
    # A linear layer z = W x + b under a unit-variance Gaussian likelihood: its Fisher is E[x x^T] (x) I
    # exactly, so member m's preconditioned direction must be (F_m + eta_m I)^-1 g_m, with F_m built
    # densely from member m's inputs (the dense test of tests/test_kfac.py, for three members at once,
    # each with its own data, weights and damping).
    torch.manual_seed(0)
    members, batch, d_in, d_out = len(dampings), 64, 6, 4
    x = torch.randn(members, batch, d_in, dtype=torch.float64)
    y = torch.randn(members, batch, d_out, dtype=torch.float64)
    w = torch.randn(members, d_out, d_in, dtype=torch.float64, requires_grad=True)
    b = torch.randn(members, d_out, dtype=torch.float64, requires_grad=True)
    kfac = StackedKFAC([(w, b)], list(dampings), fisher="exact", likelihood="gaussian", ema=0.5)
    z = torch.baddbmm(b.unsqueeze(1), x, w.mT)
    kfac.observe(z, [x], [z])
    loss = (0.5 * ((z - y) ** 2).sum(2).mean(1)).sum()  # each member's own mean loss
    gw, gb = torch.autograd.grad(loss, [w, b])
    dirs = {id(w): gw, id(b): gb}
    kfac.precondition(dirs)
    for m, eta in enumerate(dampings):
        xa = torch.cat([x[m], torch.ones(batch, 1, dtype=torch.float64)], dim=1)
        fisher = torch.kron(torch.eye(d_out, dtype=torch.float64), xa.T @ xa / batch)  # rows of [W | b]
        g = torch.cat([gw[m], gb[m].unsqueeze(1)], dim=1).reshape(-1)
        expected = torch.linalg.solve(fisher + eta * torch.eye(len(g), dtype=torch.float64), g)
        got = torch.cat([dirs[id(w)][m], dirs[id(b)][m].unsqueeze(1)], dim=1).reshape(-1)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fisher", ["exact", "mc"])
def test_stacked_factors_and_directions_are_each_single_kfacs(fisher):
    # Two members of a two-layer MLP (float64), five steps of factor updates: member m's running
    # factors A, S and its preconditioned direction equal those of KFAC on member m's network alone,
    # the sampled Fisher drawing member m's targets from its own generator as KFAC draws from torch's.
    torch.manual_seed(2)
    nets = [nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double() for _ in range(2)]
    singles = [KFAC(n.parameters(), [n[0], n[2]], fisher=fisher, damping=1e-2 * (m + 1)) for m, n in enumerate(nets)]
    stack = lambda i, name: torch.stack([getattr(n[i], name).detach() for n in nets]).requires_grad_()  # noqa: E731
    w1, b1, w2, b2 = stack(0, "weight"), stack(0, "bias"), stack(2, "weight"), stack(2, "bias")
    gens = [torch.Generator().manual_seed(10 + m) for m in range(2)]
    kfac = StackedKFAC([(w1, b1), (w2, b2)], [1e-2, 2e-2], fisher=fisher, generators=gens)
    for step in range(5):
        x = torch.randn(2, 20, 5, dtype=torch.float64)
        y = torch.randint(0, 3, (2, 20))
        s1 = torch.baddbmm(b1.unsqueeze(1), x, w1.mT)
        h = torch.relu(s1)
        logits = torch.baddbmm(b2.unsqueeze(1), h, w2.mT)
        states = [g.get_state() for g in gens]  # where each member's draws start
        kfac.observe(logits, [x, h], [s1, logits])
        loss = sum(nn.functional.cross_entropy(logits[m], y[m]) for m in range(2))
        grads = torch.autograd.grad(loss, [w1, b1, w2, b2])
        dirs = dict(zip(map(id, (w1, b1, w2, b2)), grads))
        kfac.precondition(dirs)
        for m, (net, opt) in enumerate(zip(nets, singles)):
            out = net(x[m])
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(states[m])  # KFAC draws from torch's RNG: the same stream
                opt.observe(out)
            opt.zero_grad()
            nn.functional.cross_entropy(out, y[m]).backward()
            for i, layer in ((0, net[0]), (1, net[2])):
                torch.testing.assert_close(kfac.A[i][m], opt.A[layer], rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(kfac.S[i][m], opt.S[layer], rtol=1e-12, atol=1e-14)
            before = [p.detach().clone() for p in net.parameters()]
            opt.step()  # lr 0.01: its direction is (before - after) / lr
            got = [dirs[id(t)][m] for t in (w1, b1, w2, b2)]
            for g, p0, p in zip(got, before, net.parameters()):
                torch.testing.assert_close(g, (p0 - p.detach()) / 0.01, rtol=1e-8, atol=1e-10)
            with torch.no_grad():  # the single network back on the stack's weights (the stack is not stepped)
                for p, t in zip(net.parameters(), (w1, b1, w2, b2)):
                    p.copy_(t[m])


def _task(seed: int, model: dict, optim: dict, kfac: dict, steps: int = 20, jacobian: int = 0) -> RunTask:
    cfg = C.from_dict(
        RunConfig,
        {
            "data": {"name": "mnist1d", "val_size": 100},
            "model": {"width": 24, "depth": 2, **model},
            "optim": {"name": "kfac", **optim},
            "kfac": kfac,
            "train": {"steps": steps, "batch_size": 32, "eval_every": 10},
            "probes": {"every": 5, "inputs": False, "preacts": False, "jacobian_examples": jacobian},
        },
    )
    return RunTask(f"r{seed}", "a", seed, cfg)


# Quantities that are well conditioned in the weights, and their means over units (not a cosine near
# 0, not the angle of a unit that barely turns, not a quantile landing on a nearly dead unit, whose
# float32 values are themselves rounding): these must agree to 1e-5 relative over a short run. (K-FAC
# at damping 1e-3 with momentum amplifies rounding: the no-BN case reaches 4e-6 at 20 steps and
# 1.2e-5 at 40; every other case stays near 3e-7.)
WELL_CONDITIONED = {M.WEIGHT_NORM_SQ, M.GRAD_NORM, M.BATCH_LOSS, M.BATCH_LOSS_AVG, M.LR, *M.EVALUATION}
CASES = {
    # K16's BN arms: BN-fed weights decayed decoupled, exact Fisher; members differ in damping, decay, lr
    "bn-decoupled": (
        {"norm": "batch", "norm_affine": False, "bias": "false"},
        {"lr": 1e-3, "wd_mode": "decoupled", "wd_params": "scale_invariant", "weight_decay": 1.0},
        {"fisher": "exact", "damping": 1e-3},
    ),
    # K16's no-BN arms: coupled decay on the weights, heavy ball, the input-Jacobian probe
    "nobn-coupled-momentum": (
        {"norm": "none"},
        {"lr": 1e-3, "wd_params": "weights", "weight_decay": 0.3, "momentum": 0.9},
        {"fisher": "exact", "damping": 1e-3},
    ),
    # the sampled Fisher: each member's targets from its own run's RNG stream
    "layernorm-mc": ({"norm": "layer"}, {"lr": 1e-3, "weight_decay": 0.1}, {"fisher": "mc", "damping": 1e-2}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_kfac_runs_end_where_their_single_runs_end(case):
    model, optim, kfac = CASES[case]
    tasks = [  # three members with their own damping, decay and learning rate: one ensemble
        _task(
            s,
            model,
            {**optim, "lr": optim["lr"] * (1 + s), "weight_decay": optim["weight_decay"] * (1 + s) / 2},
            {**kfac, "damping": kfac["damping"] * 10**s},
            jacobian=200,
        )
        for s in range(3)
    ]
    assert why_not_packable(tasks[0]) == "" and [len(u) for u in pack(tasks, 16)] == [3]
    for single, member in zip(map(train, tasks), train_ensemble(tasks)):
        assert (member.status, member.steps_done) == (single.status, single.steps_done) == ("ok", 20)
        assert [(r.step, r.metric, r.layer, r.stat) for r in member.rows] == [
            (r.step, r.metric, r.layer, r.stat) for r in single.rows
        ]
        compared = [
            (a.value, b.value)
            for a, b in zip(single.rows, member.rows)
            if a.metric in WELL_CONDITIONED and a.stat in ("mean", "value")
        ]
        assert len(compared) > 30
        for a, b in compared:
            assert b == pytest.approx(a, rel=1e-5, abs=1e-9)
        assert member.final.keys() == single.final.keys() and M.JACOBIAN_FRO_SQ in member.final
        for k, v in single.final.items():
            assert member.final[k] == pytest.approx(v, rel=1e-5), k


def test_a_diverging_kfac_member_stops_alone():
    model, optim, kfac = CASES["nobn-coupled-momentum"]
    tasks = [_task(s, model, {**optim, "lr": 1e-3 if s != 1 else 1e6}, kfac) for s in range(3)]
    results = train_ensemble(tasks)
    assert [r.status for r in results] == ["ok", "diverged", "ok"]
    assert results[1].steps_done < 20 and all(math.isnan(v) for v in results[1].final.values())
    for single, member in ((train(tasks[0]), results[0]), (train(tasks[2]), results[2])):
        assert member.final[M.TEST_LOSS] == pytest.approx(single.final[M.TEST_LOSS], rel=1e-5)


def test_kfac_runs_differing_in_damping_share_an_ensemble_and_other_kfac_settings_do_not():
    model, optim, kfac = CASES["bn-decoupled"]
    a, b = _task(0, model, optim, kfac), _task(1, model, optim, {**kfac, "damping": 1e-9})
    assert pack_key(a) == pack_key(b)
    for key, value in (("ema", 0.9), ("inverse_every", 5), ("cov_every", 2), ("fisher", "mc")):
        assert pack_key(a) != pack_key(_task(1, model, optim, {**kfac, key: value})), key


def test_kfac_on_a_cnn_trains_alone():
    cnn = {"arch": "cnn1d", "channels": [6], "kernel_sizes": [5], "strides": [2]}
    reason = why_not_packable(_task(0, cnn, {"lr": 1e-3}, {}))
    assert reason == "optimizer kfac on cnn1d"


def test_the_batched_input_jacobian_matches_the_single_runs():
    # SGD runs, with and without BN (eval mode: running statistics), through the batched probe
    for norm in ("none", "batch"):
        tasks = [
            RunTask(
                f"r{s}",
                "a",
                s,
                C.from_dict(
                    RunConfig,
                    {
                        "data": {"name": "mnist1d", "val_size": 100},
                        "model": {"width": 24, "depth": 2, "norm": norm},
                        "optim": {"lr": 0.05},
                        "train": {"steps": 30, "batch_size": 32},
                        "probes": {"every": 0, "jacobian_examples": 300},
                    },
                ),
            )
            for s in range(3)
        ]
        assert why_not_packable(tasks[0]) == ""
        for single, member in zip(map(train, tasks), train_ensemble(tasks)):
            assert member.final[M.JACOBIAN_FRO_SQ] == pytest.approx(single.final[M.JACOBIAN_FRO_SQ], rel=1e-5)
