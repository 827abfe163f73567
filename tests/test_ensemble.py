"""Batched training (engine/ensemble.py) against the single-run engine: member m, started from seed
m's weights and fed seed m's batches, must end where run m ends (losses and accuracies within the
run's float32 rounding scale, `rounding_rtol`), diverge where run m diverges, and leave the others untouched."""

import math

import pytest
import torch

from normlab.engine import config as C
from normlab.engine.ensemble import EnsembleNet, pack, why_not_packable, stacked_conv1d, train_ensemble
from normlab.engine.runs import RunTask
from normlab.engine.spec import ModelConfig, RunConfig
from normlab.engine.train import train


def _task(seed: int, model: dict, optim: dict, steps: int = 30, eval_every: int = 10) -> RunTask:
    cfg = C.from_dict(
        RunConfig,
        {
            "data": {"name": "mnist1d", "val_size": 100},
            "model": {"width": 24, "depth": 2, **model},
            "optim": optim,
            "train": {"steps": steps, "batch_size": 32, "eval_every": eval_every},
            "probes": {"every": 0},
        },
    )
    return RunTask(f"r{seed}", "a", seed, cfg)


# A batch mean of activations that cancel (a pre-activation's or an input's mean) carries the rounding
# of the terms it sums, not of its own small value: float32 eps x their spread (sqrt of the matching
# variance, the largest over the layer's summaries at that step). Measured here: 2e-7 of that spread,
# against 1.4e-5 of the mean's own value, which a relative tolerance on the mean read as a failure.
SPREAD_OF = {"preact_mean": "preact_var"}


EPS32 = float(torch.finfo(torch.float32).eps)


def rounding_rtol(task: RunTask) -> float:
    """How far a member may sit from its single run when both compute in float32 and sum in different
    orders (one batched matmul over members against one per run, other BLAS kernels on another CPU):
    each step's largest reduction (batch x width terms) rounds at about eps x sqrt(terms), its
    errors adding as a random walk, and a short run compounds the steps at most linearly. A tolerance
    from the computation's own rounding scale, not from what one machine happened to give (1.6e-5
    relative on another CPU of the same kind at 30 steps, where this gives 1e-4); a wrong draw, a
    wrong member or a wrong hyperparameter moves the numbers by O(1)."""
    model = task.config.model
    width = max([model.width, *(model.channels or [])])
    return EPS32 * math.sqrt(task.config.train.batch_size * width) * task.config.train.steps


def _assert_same(single, member, task: RunTask, atol=1e-7):
    """Every final metric and row of a member equals its single run's within the run's rounding
    scale (`rounding_rtol`; for a batch mean, relative to the spread of what it averages) and atol."""
    rtol = rounding_rtol(task)
    assert (member.status, member.steps_done) == (single.status, single.steps_done)
    assert member.final.keys() == single.final.keys()
    for k, v in single.final.items():
        if math.isnan(v):
            assert math.isnan(member.final[k]), k
        else:
            assert member.final[k] == pytest.approx(v, rel=rtol, abs=atol), k
    ours = [(r.step, r.metric, r.value) for r in member.rows]
    theirs = [(r.step, r.metric, r.value) for r in single.rows]
    assert [x[:2] for x in ours] == [x[:2] for x in theirs]
    spread: dict = {}
    for r in single.rows:
        if r.metric in SPREAD_OF.values() and math.isfinite(r.value):
            key = (r.step, r.metric, r.layer)
            spread[key] = max(spread.get(key, 0.0), math.sqrt(max(r.value, 0.0)))
    for r, (_, metric, a) in zip(single.rows, ours):
        b = r.value
        scale = spread.get((r.step, SPREAD_OF.get(metric), r.layer), abs(b))
        assert abs(a - b) <= max(rtol * max(scale, abs(b)), atol) or (math.isnan(a) and math.isnan(b)), metric


CNN = {"arch": "cnn1d", "channels": [6, 6], "kernel_sizes": [5, 3], "strides": [2, 2]}
MODELS = {
    "mlp": {},
    "mlp_bn": {"norm": "batch"},
    "mlp_bn_affine": {"norm": "batch", "norm_affine": True},
    "mlp_bn_after_residual": {"norm": "batch", "norm_position": "after", "residual": True, "bias": "false"},
    "mlp_center": {"norm": "center"},
    "mlp_center_after": {"norm": "center", "norm_position": "after"},
    "mlp_ln": {"norm": "layer", "bias": "false"},
    "mlp_ln_affine": {"norm": "layer", "norm_affine": True},
    "mlp_wn": {"norm": "weight"},
    "mlp_wn_gain": {"norm": "weight", "norm_affine": True},
    "mlp_wn_center": {"norm": "weight_center"},
    "mlp_rms": {"norm": "rms"},
    "mlp_rms_gain": {"norm": "rms", "norm_affine": True, "bias": "false"},
    "cnn": CNN,
    "cnn_bn": {**CNN, "norm": "batch"},
    "cnn_bn_affine": {**CNN, "norm": "batch", "norm_affine": True},
    "cnn_center": {**CNN, "norm": "center"},
    "cnn_ln_affine": {**CNN, "norm": "layer", "norm_affine": True},
    # the engine's CNN ignores `residual` (it applies to MLPs), and so does the ensemble
    "cnn_residual_flag": {"arch": "cnn1d", "channels": [6], "kernel_sizes": [5], "strides": [2], "residual": True},
}
OPTIMS = {
    "sgd": [{"name": "sgd", "lr": 0.05}, {"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3}],
    "adam": [
        {"name": "adam", "lr": 1e-3, "schedule": "cosine", "warmup_steps": 5},
        {"name": "adam", "lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 1e-2},
    ],
    "adamw": [{"name": "adamw", "lr": 1e-3, "weight_decay": 0.1}, {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01}],
    "rmsprop": [
        {"name": "rmsprop", "lr": 1e-3, "beta2": 0.9},
        {"name": "rmsprop", "lr": 5e-4, "beta2": 0.99, "momentum": 0.5},
    ],
    "adagrad": [{"name": "adagrad", "lr": 0.05}, {"name": "adagrad", "lr": 0.01, "schedule": "linear"}],
    # grafts M#D (engine.optim.Graft): per member and tensor, M's step length along D's direction
    "adam#sgd": [
        {"name": "adam#sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-3},
        {"name": "adam#sgd", "lr": 3e-3, "momentum": 0.5, "beta1": 0.8, "eps": 1e-6, "schedule": "cosine"},
    ],
    "sgd#adam": [
        {"name": "sgd#adam", "lr": 0.1, "momentum": 0.9, "warmup_steps": 5},
        {"name": "sgd#adam", "lr": 0.05, "beta2": 0.99, "eps": 1e-3, "weight_decay": 1e-2},
    ],
    "sgd_decoupled": [
        {"name": "sgd", "lr": 0.1, "wd_mode": "decoupled", "weight_decay": 0.01, "wd_params": "all"},
        {"name": "sgd", "lr": 0.05, "wd_mode": "decoupled", "weight_decay": 0.0, "wd_params": "all"},
    ],
}


# every optimizer on the MLP, every model with SGD and Adam
CASES = [("mlp", o) for o in OPTIMS] + [(m, o) for m in MODELS if m != "mlp" for o in ("sgd", "adam")]
CASES += [
    ("cnn_bn", "adam#sgd"),
    ("cnn", "sgd#adam"),
    ("mlp_bn_affine", "sgd_decoupled"),
    ("mlp_bn_affine", "adam#sgd"),
    ("mlp_wn_gain", "sgd_decoupled"),
    ("mlp_ln_affine", "adamw"),
]


@pytest.mark.parametrize("model,optim", CASES)
def test_every_member_ends_where_its_single_run_ends(model, optim):
    tasks = [_task(s, MODELS[model], OPTIMS[optim][s % 2]) for s in range(3)]
    tasks = [t for t in tasks if why_not_packable(t) == ""]
    assert len(tasks) == 3
    by_key = {}
    for t in tasks:  # members must share everything but per-member settings: pair them by optimizer family
        by_key.setdefault(t.config.optim.name + t.config.optim.wd_mode + t.config.optim.wd_params, []).append(t)
    for group in by_key.values():
        for single_task, member in zip(group, train_ensemble(group)):
            _assert_same(train(single_task), member, single_task)


def test_a_diverging_member_is_recorded_and_the_others_go_on():
    tasks = [_task(s, {}, {"name": "sgd", "lr": lr}, steps=40) for s, lr in ((0, 0.05), (1, 1e6), (2, 0.1))]
    results = train_ensemble(tasks)
    assert [r.status for r in results] == ["ok", "diverged", "ok"]
    for t, r in zip(tasks, results):
        _assert_same(train(t), r, t)


def test_packing_groups_compatible_runs_only():
    a = [_task(s, {}, {"name": "sgd", "lr": 0.01 * (s + 1)}) for s in range(5)]
    b = [_task(s, {}, {"name": "adam", "lr": 1e-3}) for s in range(2)]
    probed = _task(0, {}, {"name": "sgd"})
    probed.config.probes.every = 10
    probed.config.probes.per_unit = True
    assert why_not_packable(probed) == "per-unit probe rows"
    units = pack(a + b + [probed], size=4)
    assert [[t.config.optim.name for t in u] for u in units] == [["sgd"] * 4, ["sgd"], ["adam"] * 2, ["sgd"]]
    assert [[t.seed for t in u] for u in units[:1]] == [[0, 1, 2, 3]] and units[3] == [probed]
    assert all(len(u) == 1 for u in pack(a, size=1))


def test_unsupported_models_are_refused():
    with pytest.raises(ValueError, match="MLPs and 1-D CNNs"):
        EnsembleNet.from_seeds(ModelConfig(arch="cnn1d", norm="weight"), (40,), 10, [0])
    with pytest.raises(ValueError, match="MLPs and 1-D CNNs"):
        EnsembleNet.from_seeds(ModelConfig(arch="cnn2d"), (1, 8, 8), 10, [0])


def test_run_packs_by_default_same_bytes_whatever_jobs_and_agrees_with_off(tmp_path):
    """`normlab run` packs compatible runs (--ensemble auto, the default): the files do not depend
    on --jobs, and every loss agrees with --ensemble off to 1e-5 relative, every accuracy to two
    examples in a thousand (a borderline example may flip: accuracies are counts). At large Adam
    steps the rounding differences grow faster (3e-4 in the CNN's loss after 30 steps at lr 0.01),
    as they do for any change in the order of a sum."""
    import pandas as pd
    from typer.testing import CliRunner

    from normlab.cli.main import app

    runner = CliRunner()
    args = ["run", "baselines", "--smoke", "--set", "seeds=3", "--set", "run.train.steps=30"]
    args += ["--set", "run.optim.lr=0.002"]
    for name, extra in (("one", ["--jobs", "1"]), ("two", ["--jobs", "2"]), ("off", ["--ensemble", "off"])):
        r = runner.invoke(app, args + extra + ["--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    for f in ("metrics.csv", "claims.csv"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f
    packed, alone = (pd.read_csv(tmp_path / n / "metrics.csv") for n in ("one", "off"))
    assert packed[["run_id", "step", "metric"]].equals(alone[["run_id", "step", "metric"]])
    diff = (packed["value"] - alone["value"]).abs()
    acc = packed["metric"].str.endswith("_acc")
    assert (diff[~acc] <= 1e-5 * alone["value"][~acc].abs() + 1e-7).all()
    assert (diff[acc] <= 0.002).all()
    a, b = (pd.read_csv(tmp_path / n / "claims.csv") for n in ("one", "off"))
    assert a["verdict"].tolist() == b["verdict"].tolist()
    import json

    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["ensemble"] == 16
    assert json.loads((tmp_path / "off" / "manifest.json").read_text())["ensemble"] == 1
    bad = runner.invoke(app, args + ["--ensemble", "many", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "ensemble: 'many' is not allowed" in bad.output
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_inserted_noise_and_activation_probes_match_the_single_runs():
    """The knockout's drifting noise after BN (and in place of BN), per member, with its own level and
    its run's RNG stream; activation and input probes on a fixed batch and on the training batch. A
    wrong draw would move the losses by O(1), not by rounding. (A shallow network: the knockout's own
    6-layer BN network is chaotic at the rounding level, where a single run on 2 threads instead of 1
    moves its loss by 1e-4 within 16 steps.)"""
    from normlab.experiments.noise import NoiseConfig, NoiseFactory

    probes = {"every": 5, "weights": False, "inputs": True, "preacts": True, "dead_units": True,
              "summaries": ["median", "q25", "max"]}  # fmt: skip
    groups = []
    for fixed, norm, iid, levels in [(40, "batch", False, (0.1, 1.0, 3.0)), (0, "batch", True, (5.0, 1.0)),
                                     (40, "none", False, (1.0, 0.3))]:  # fmt: skip
        group = []
        for s, level in enumerate(levels):
            t = _task(s, {"norm": norm}, {"name": "sgd", "lr": 0.05 * (s + 1), "momentum": 0.9})
            t.config.probes = C.from_dict(type(t.config.probes), {**probes, "fixed_batch": fixed})
            t.after_norm = NoiseFactory(NoiseConfig(), iid=iid, level=level)
            assert why_not_packable(t) == ""
            group.append(t)
        groups.append(group)
    assert len(pack([t for g in groups for t in g], size=8)) == 3  # iid and non-iid noise do not mix
    for group in groups:
        for single_task, member in zip(group, train_ensemble(group)):
            single = train(single_task)
            assert sum(r.metric == "preact_mean_drift" for r in single.rows) > 0
            assert sum(r.metric == "dead_fraction" for r in single.rows) > 0
            # means over a batch of O(1) activations cancel to near 0: their rounding is absolute, ~1e-7 x 10
            _assert_same(single, member, single_task, atol=1e-6)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_weight_probes_and_unit_windows_match_the_single_runs(optim):
    """Every weight metric, the effective LR and step of BN-fed units, their angular update across
    the real step, and the per-unit window means written at the end, per member as its run has them."""
    probes = {"every": 4, "weights": True, "inputs": True, "preacts": False, "unit_window": 0.5,
              "summaries": ["mean", "median", "min", "max"]}  # fmt: skip
    tasks = []
    for s in range(3):
        t = _task(s, {"norm": "batch", "depth": 3}, OPTIMS[optim][s % 2], steps=24, eval_every=8)
        t.config.probes = C.from_dict(type(t.config.probes), probes)
        tasks.append(t)
    for single_task, member in zip(tasks, train_ensemble(tasks)):  # lr, momentum, decay differ per member
        single = train(single_task)
        metrics = {r.metric for r in single.rows}
        assert {"eff_step", "angular_update", "unit_u_mean", "unit_ang2_mean", "unit_u_last"} <= metrics
        _assert_same(single, member, single_task, atol=1e-6)


@pytest.mark.parametrize("model", ["mlp_ln", "mlp_wn", "mlp_bn", "cnn_ln_affine"])
def test_renormalized_and_layer_invariant_probes_match_the_single_runs(model):
    """The unit-sphere control (`optim.renormalize`) per member, and the probes of every invariance
    kind: per-unit effective LR under BN and weight norm, the whole layer's effective LR and
    normalized gradient norm under layer norm, angular updates of both."""
    probes = {"every": 4, "weights": True, "inputs": False, "preacts": False, "unit_window": 0.5,
              "summaries": ["mean", "max"]}  # fmt: skip
    tasks = []
    for s in range(3):
        # no bias: layer norm's scale invariance. Small steps: on the unit sphere a whole layer's
        # entries are ~0.02, so lr 0.3 is a huge effective step and rounding grows ~10x per 2 steps
        model_cfg = {**MODELS[model], "depth": 3, "bias": "false"}
        t = _task(s, model_cfg, {"name": "sgd", "lr": 0.02 * (s + 1)}, steps=24, eval_every=8)
        t.config.probes = C.from_dict(type(t.config.probes), probes)
        t.config.optim.renormalize = model != "cnn_ln_affine"
        tasks.append(t)
    assert all(why_not_packable(t) == "" for t in tasks) and len(pack(tasks, 16)) == 1
    for single_task, member in zip(tasks, train_ensemble(tasks)):
        single = train(single_task)
        metrics = {r.metric for r in single.rows}
        assert {"eff_lr", "angular_update"} <= metrics
        if "ln" in model:
            assert "normalized_grad_norm_layer" in metrics and "unit_u_mean" not in metrics
        _assert_same(single, member, single_task, atol=1e-6)


def test_a_resumed_run_keeps_its_ensemble_and_its_numbers():
    """Resuming with some runs finished trains the same ensembles as an uninterrupted run (the
    finished members again, unreported), so the remaining runs give the same bytes (a run trained
    alone takes the single-run path, whose sums may round differently)."""
    from normlab.engine.execution import Execution
    from normlab.engine.executor import execute

    tasks = [_task(s, {"norm": "batch"}, {"name": "sgd", "lr": 0.05 * (s + 1), "momentum": 0.9}) for s in range(3)]
    full = execute(tasks, Execution(ensemble=8))
    reported = []
    resumed = execute(tasks, Execution(ensemble=8), finished={"r1"}, on_result=lambda r: reported.append(r.run_id))
    assert reported == ["r0", "r2"] and [r.run_id for r in resumed] == ["r0", "r2"]
    assert [r.rows for r in resumed] == [full[0].rows, full[2].rows]
    assert execute(tasks, Execution(ensemble=8), finished={"r0", "r1", "r2"}) == []


@pytest.mark.parametrize(
    "k,stride,padding,length", [(5, 2, 1, 40), (3, 2, 1, 20), (3, 1, 0, 7), (4, 3, 2, 11), (3, 2, 1, 2)]
)
def test_stacked_conv1d_is_each_members_conv1d(k, stride, padding, length):
    """Every member's slice of the batch-last stacked conv equals torch's Conv1d on that member's
    weights and inputs (float64, fresh random draws), for each batch of its own and for one batch
    shared by all; the gradients reaching the weights and inputs agree as well (the inputs' through
    the window buffer's hand-written backward)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(k * 100 + stride * 10 + padding)
    m, c_in, c_out, b = 3, 4, 5, 6
    w = torch.randn(m, c_out, c_in, k, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(m, c_out, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(m, b, c_in, length, generator=g, dtype=torch.float64, requires_grad=True)
    got = stacked_conv1d(x.permute(0, 2, 3, 1), w, bias, stride, padding)  # (M, C_out, L_out, B)
    want = torch.stack([F.conv1d(x[i], w[i], bias[i], stride, padding) for i in range(m)])  # (M, B, C_out, L_out)
    assert got.shape == want.permute(0, 2, 3, 1).shape
    assert torch.allclose(got, want.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    probe = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * probe).sum(), (w, bias, x))
    ref = torch.autograd.grad((want * probe.permute(0, 3, 1, 2)).sum(), (w, bias, x))
    for a, r in zip(grads, ref):
        assert torch.allclose(a, r, rtol=1e-12, atol=1e-12)
    shared = x[0].detach().requires_grad_()  # one batch read by every member (evaluation)
    got = stacked_conv1d(shared.permute(1, 2, 0).unsqueeze(0), w, bias, stride, padding)
    want = torch.stack([F.conv1d(shared, w[i], bias[i], stride, padding) for i in range(m)])
    assert torch.allclose(got, want.permute(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    # the shared batch's gradient sums every member's (the window buffer's own backward, then expand's)
    (a,) = torch.autograd.grad((got * probe).sum(), (shared,))
    (r,) = torch.autograd.grad((want * probe.permute(0, 3, 1, 2)).sum(), (shared,))
    assert torch.allclose(a, r, rtol=1e-12, atol=1e-12)


def test_inserted_noise_on_the_batch_last_cnn_matches_the_single_runs():
    """The stacked CNN hands an inserted module its activations as (M, B, L, C) and takes them back
    batch-last: each member with its own noise level ends where its single run ends."""
    from normlab.experiments.noise import NoiseConfig, NoiseFactory

    group = []
    for s, level in enumerate((0.5, 2.0)):
        t = _task(s, {**MODELS["cnn"], "norm": "batch"}, {"name": "sgd", "lr": 0.05, "momentum": 0.9})
        t.after_norm = NoiseFactory(NoiseConfig(), iid=False, level=level)
        assert why_not_packable(t) == ""
        group.append(t)
    for single_task, member in zip(group, train_ensemble(group)):
        _assert_same(train(single_task), member, single_task)
