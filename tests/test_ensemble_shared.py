"""Every SHARED field of the batched path, held to the single-run path by behaviour, not by label.

A field filed as SHARED is equal in all members of an ensemble (it is part of `pack_key`), so the
label alone cannot catch a stacked model that never implements it: an ensemble would train every
member at the default and still pack. Here each field the stacked path computes itself (the forward
pass, the loss, the update, the probes, the curvature checkpoints, the schedule of steps and
evaluations) is set to a value other than its default, and each member of an ensemble at that value
must end where its single run ends (tests/test_ensemble.py's `_assert_same`: float32's rounding scale).
The same single run must differ from the single run at the default by more than 100 times that
tolerance, so that a value too close to the default cannot let an ignored field pass.

Fields the stacked path does not compute itself, or that cannot change a number here, are named in
NOT_EXERCISED with the reason, and the two whose values move numbers by rounding alone in ROUNDING_ONLY
(compared, but exempt from the differs check); a test holds the lists to SHARED exactly.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from normlab.engine import config as C
from normlab.engine import ensemble as E
from normlab.engine import metrics as M
from normlab.engine.runs import RunResult, RunTask
from normlab.engine.spec import RunConfig
from normlab.engine.train import train

from test_ensemble import _assert_same, rounding_rtol

STEPS = 8
BASE = {
    "data": {"name": "mnist1d", "num_samples": 600, "val_size": 50},
    "model": {"width": 16, "depth": 2},
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"steps": STEPS, "batch_size": 32, "eval_every": 4, "eval_batch_size": 256},
    "probes": {"every": 0},
}
CNN = {"model.arch": "cnn1d", "model.channels": [6, 6], "model.kernel_sizes": [5, 3], "model.strides": [2, 2]}
BN = {"model.norm": "batch"}
PROBED = {"probes.every": 2}
# K-FAC's factors refreshed within the run, its damping large enough that 8 steps stay well conditioned
KFAC = {"optim.name": "kfac", "optim.lr": 0.02, "kfac.damping": 0.1, "kfac.inverse_every": 2}
CURV = {"curvature.steps": [4], "curvature.top_k": 3, "curvature.examples": 64, "curvature.tol": 1e-4}

# field -> (the base it needs beside BASE, its non-default value). Every value is one that changes the
# numbers (or the rows) of a single run by far more than the comparison's tolerance.
CASES: dict[str, tuple[dict, object]] = {
    "model.width": ({}, 11),
    "model.depth": ({}, 3),
    "model.residual": ({"model.depth": 3}, True),
    "model.channels": (CNN, [4, 7]),
    "model.kernel_sizes": (CNN, [3, 5]),
    "model.strides": (CNN, [1, 2]),
    "model.activation": ({}, "tanh"),
    "model.norm_position": (BN, "after"),
    "model.norm_affine": (BN, True),
    "model.norm_eps": (BN, 0.5),
    "model.bias": (BN, "true"),
    "model.init": ({}, "kaiming"),
    "model.norm_init_scale": ({**BN, "optim.lr": 0.5}, 0.2),
    "model.reparam_scale": ({}, 3.0),
    # with momentum (plain SGD's L2 and decoupled steps are the same map)
    "optim.wd_mode": ({"optim.weight_decay": 0.5, "optim.momentum": 0.9}, "decoupled"),
    "optim.wd_params": ({"optim.weight_decay": 0.5}, "all"),
    "optim.renormalize": ({**BN, "optim.lr": 0.5}, True),
    "optim.eps_inside": ({"optim.name": "rmsprop", "optim.eps": 1e-3, "optim.lr": 0.01}, True),
    "kfac.ema": (KFAC, 0.5),
    "kfac.cov_every": (KFAC, 3),
    "kfac.inverse_every": (KFAC, 3),
    "kfac.fisher": (KFAC, "exact"),
    "curvature.steps": ({**CURV, "curvature.steps": []}, [4]),
    "curvature.hessian_steps": (CURV, [4]),
    "curvature.density_steps": (
        {**CURV, "curvature.density_vectors": 8, "curvature.density_repeats": 1, "curvature.density_points": 20},
        [4],
    ),
    "curvature.eq9_steps": (CURV, [4]),
    "curvature.layer": (CURV, "layer1"),
    "curvature.top_k": (CURV, 5),
    "curvature.examples": (CURV, 40),
    "curvature.tol": ({**CURV, "curvature.tol": 0.0}, 0.3),
    "curvature.density_vectors": (
        {**CURV, "curvature.density_steps": [4], "curvature.density_repeats": 1, "curvature.density_points": 20},
        6,
    ),
    "curvature.density_repeats": (
        {**CURV, "curvature.density_steps": [4], "curvature.density_vectors": 8, "curvature.density_points": 20},
        1,
    ),
    "curvature.density_points": (
        {**CURV, "curvature.density_steps": [4], "curvature.density_vectors": 8, "curvature.density_repeats": 1},
        12,
    ),
    "train.steps": ({}, 6),
    "train.batch_size": ({}, 20),
    "train.eval_every": ({}, 3),
    "probes.every": (PROBED, 3),
    "probes.weights": (PROBED, False),
    "probes.inputs": (PROBED, False),
    "probes.preacts": (PROBED, False),
    "probes.fixed_batch": (PROBED, 64),
    "probes.unit_window": ({**PROBED, **BN}, 0.5),  # window means are kept for scale-invariant units
    "probes.summaries": (PROBED, ["mean", "max"]),
    "probes.jacobian_examples": ({}, 16),
    "probes.dead_units": (PROBED, True),
    "probes.step_grad_cos": ({**PROBED, "optim.name": "adam", "optim.lr": 0.01}, True),
    "curvature.dtype": (CURV, "float32"),
    "train.eval_batch_size": ({}, 100),
}
# Cases whose value moves the numbers by rounding alone: the members are compared at that value, but
# no value can differ from the default by 100x the tolerance, so that check is left out, for this reason.
ROUNDING_ONLY = {
    "curvature.dtype": "the measurement copy's precision: float32's eigenvalues agree with float64's to about 1e-7",
    "train.eval_batch_size": "splits evaluation into chunks: the sums move by rounding alone",
}

# Fields the batched path reads only through code it shares with the single-run path, or that cannot
# change a number on this machine; each with the reason it is not exercised by a case above.
SAME_CODE = "both paths load the data with engine.data.load_dataset(cfg.data) and draw each run's batches with "
SAME_CODE += "its own engine.data.Batcher; the stacked path computes nothing from this field"
NOT_EXERCISED = {
    **{
        f"data.{k}": SAME_CODE
        for k in (
            "name",
            "num_samples",
            "train_split",
            "data_seed",
            "val_size",
            "max_train",
            "max_test",
            "root",
            "download",
            "synthetic_kind",
            "input_shape",
            "num_classes",
            "noise",
            "image_size",
        )
    },  # fmt: skip
    "model.pool_every": "read by cnn2d alone, which the batched path refuses (model.arch)",
    "train.threads": "sets torch's thread count, which changes speed and at most the order of sums (a "
    "worker of the pool sets it for every member alike)",
    "train.device": "no GPU here; the CUDA tests of the lens and the GPU checks compare devices",
}


def _config(values: dict) -> RunConfig:
    raw = C.to_dict(C.from_dict(RunConfig, BASE))
    return C.from_dict(RunConfig, C.apply_overrides(raw, values))


def _tasks(values: dict) -> list[RunTask]:
    """Two seeds of one config: an ensemble of two, each member with its own weights and batches."""
    cfg = _config(values)
    return [RunTask(f"r{s}", "a", s, cfg) for s in (0, 1)]


def _without_timing(r: RunResult) -> RunResult:
    """A result without its wall-clock entries (curvature_seconds is a cost, like train_seconds)."""
    return replace(r, final={k: v for k, v in r.final.items() if k != M.CURVATURE_SECONDS})


def _distance(a: RunResult, b: RunResult) -> float:
    """How far two single runs are apart, relative to b's own values: inf when they wrote other rows."""
    keys = lambda r: [(x.step, x.metric, x.layer, x.stat, x.item) for x in r.rows]  # noqa: E731
    if (a.status, a.steps_done) != (b.status, b.steps_done) or keys(a) != keys(b) or a.final.keys() != b.final.keys():
        return math.inf
    pairs = [(x.value, y.value) for x, y in zip(a.rows, b.rows)] + [(a.final[k], b.final[k]) for k in b.final]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    return max((abs(x - y) / max(abs(y), 1e-12) for x, y in pairs), default=0.0)


def test_every_shared_field_has_a_behaviour_case_or_a_reason():
    assert set(CASES).isdisjoint(NOT_EXERCISED) and set(ROUNDING_ONLY) <= set(CASES)
    assert set(CASES) | set(NOT_EXERCISED) == set(E.SHARED), "a SHARED field with neither a case nor a reason"


@pytest.mark.parametrize("field", sorted(CASES))
def test_a_shared_field_at_a_non_default_value_trains_each_member_as_its_single_run(field):
    base, value = CASES[field]
    default = RunConfig()
    section, name = field.split(".")
    assert getattr(getattr(default, section), name) != value, f"{field}: the case's value is the default"
    tasks = _tasks({**base, field: value})
    assert E.why_not_packable(tasks[0]) == "" and len(E.pack(tasks, 16)) == 1, f"{field}: the case must stack"
    singles = [train(t) for t in tasks]
    members = E.train_ensemble(tasks)
    for task, single, member in zip(tasks, singles, members):
        _assert_same(_without_timing(single), _without_timing(member), task, atol=1e-6)
    if field in ROUNDING_ONLY:
        return
    # the value matters: the same single run at the case's base value (the default, unless the base sets
    # the field to keep the case fast) differs far beyond the tolerance
    at_base = train(_tasks(base)[0])
    tol = rounding_rtol(tasks[0])
    assert _distance(_without_timing(singles[0]), _without_timing(at_base)) > 100 * tol, (
        f"{field}={value!r} changes too little to test the field"
    )


def test_adagrad_with_eps_inside_the_root_stacks_as_its_single_runs():
    """optim.eps_inside's case above is RMSprop's; Adagrad's rule (a sum, not an average) takes the other branch."""
    tasks = _tasks({"optim.name": "adagrad", "optim.eps": 1e-3, "optim.lr": 0.05, "optim.eps_inside": True})
    assert E.why_not_packable(tasks[0]) == ""
    for task, single, member in zip(tasks, [train(t) for t in tasks], E.train_ensemble(tasks)):
        _assert_same(_without_timing(single), _without_timing(member), task, atol=1e-6)
    outside = train(_tasks({"optim.name": "adagrad", "optim.eps": 1e-3, "optim.lr": 0.05})[0])
    assert _distance(_without_timing(train(tasks[0])), _without_timing(outside)) > 100 * rounding_rtol(tasks[0])
