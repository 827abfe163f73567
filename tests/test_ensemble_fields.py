"""Every field of a run's config has a decision on the batched path (engine/ensemble.py).

The batched path re-implements the forward pass, the optimizers and the probes, so a field it does
not know would be silently ignored there. These tests walk RunConfig and require each field to be
per member (PER_MEMBER), shared and computed (SHARED) or refused (REFUSED: the run trains alone).
Adding a field without deciding fails here; tests/test_ensemble_shared.py holds every SHARED field to the
single-run path by behaviour.
"""

from dataclasses import fields, is_dataclass, replace

import pytest

from normlab.engine import ensemble as E
from normlab.engine.runs import RunTask
from normlab.engine.spec import RunConfig

# One value per refused field that the batched path must refuse (and the reason it must give).
REFUSED_EXAMPLES = {
    "model.arch": "cnn2d",
    "model.norm": ("weight", {"model.arch": "cnn1d"}),  # weight norm is built for MLPs only
    "optim.name": ("kfac", {"model.arch": "cnn1d"}),  # K-FAC stacks for MLPs only
    "model.norm_detach": ("mean", {"model.norm": "batch"}),  # its backward is not F.batch_norm's
    "model.norm_ghost": (8, {"model.norm": "batch"}),  # chunks with their own statistics
    "model.centered_reparam": True,  # its layers move their bias in the forward pass
    "optim.nesterov": (True, {"optim.momentum": 0.9}),
    "optim.second_moment": ("per_example", {"optim.name": "adam"}),  # per-example gradients, single runs only
    "probes.per_unit": True,
    "plugins": ["some_plugin"],
}


def dotted_fields(cls, prefix=""):
    out = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            out += dotted_fields(type(default), f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def with_values(cfg: RunConfig, values: dict) -> RunConfig:
    """cfg with dotted fields set, without the config checks (plugins need not exist here)."""
    for key, value in values.items():
        section, _, name = key.rpartition(".")
        if not section:
            cfg = replace(cfg, **{name: value})
        else:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    return cfg


def task(cfg: RunConfig, seed: int = 0) -> RunTask:
    return RunTask(f"r{seed}", "a", seed, cfg)


def test_every_field_of_a_run_config_has_one_decision_on_the_batched_path():
    per_member = {f"optim.{k}" for k in E.PER_MEMBER} | {f"kfac.{k}" for k in E.PER_MEMBER_KFAC}
    named = [per_member, set(E.SHARED), set(E.REFUSED)]
    walked = dotted_fields(RunConfig)
    undecided = [f for f in walked if not any(f in s for s in named)]
    assert not undecided, f"fields with no decision in engine/ensemble.py (PER_MEMBER, SHARED, REFUSED): {undecided}"
    twice = [f for f in walked if sum(f in s for s in named) > 1]
    assert not twice, f"fields named in more than one of PER_MEMBER, SHARED, REFUSED: {twice}"
    stale = set().union(*named) - set(walked)
    assert not stale, f"names in engine/ensemble.py that are no field of RunConfig: {sorted(stale)}"


def test_the_default_run_config_packs():
    assert E.why_not_packable(task(RunConfig())) == ""


@pytest.mark.parametrize("key", sorted(E.REFUSED))
def test_each_refused_field_sends_the_run_to_the_single_run_path_with_its_reason(key):
    value, extra = REFUSED_EXAMPLES[key] if isinstance(REFUSED_EXAMPLES[key], tuple) else (REFUSED_EXAMPLES[key], {})
    base = with_values(RunConfig(), extra)
    assert E.why_not_packable(task(base)) == "", f"the base of {key}'s case must pack"
    refused = with_values(base, {key: value})
    assert E.why_not_packable(task(refused)).startswith(E.REFUSED[key])
    units = E.pack([task(refused, s) for s in range(3)], 16)
    assert [len(u) for u in units] == [1, 1, 1]


def test_every_refused_field_has_an_example_here():
    assert set(REFUSED_EXAMPLES) == set(E.REFUSED)


@pytest.mark.parametrize("key", sorted(f"optim.{k}" for k in E.PER_MEMBER))
def test_per_member_fields_may_differ_inside_one_ensemble(key):
    default = RunConfig()
    other = _another_value(key, getattr(default.optim, key.split(".")[1]))
    a, b = task(default, 0), task(with_values(default, {key: other}), 1)
    assert E.pack_key(a) == E.pack_key(b) and [len(u) for u in E.pack([a, b], 16)] == [2]


@pytest.mark.parametrize("key", sorted(f"kfac.{k}" for k in E.PER_MEMBER_KFAC))
def test_per_member_kfac_fields_may_differ_inside_one_ensemble(key):
    kfac = with_values(RunConfig(), {"optim.name": "kfac"})
    other = _another_value(key, getattr(kfac.kfac, key.split(".")[1]))
    a, b = task(kfac, 0), task(with_values(kfac, {key: other}), 1)
    assert E.why_not_packable(a) == "" and [len(u) for u in E.pack([a, b], 16)] == [2]


def _another_value(key: str, current):
    special = {
        "data.name": "synthetic",
        "data.synthetic_kind": "mixture",
        "model.activation": "tanh",
        "model.norm_position": "after",
        "model.bias": "true",
        "model.init": "kaiming",
        "optim.wd_mode": "decoupled",
        "optim.wd_params": "all",
        "train.device": "auto",
        "data.root": "/elsewhere",
        "probes.summaries": ["mean"],
        "optim.schedule": "cosine",
        "kfac.fisher": "exact",
        "curvature.dtype": "float32" if RunConfig().curvature.dtype != "float32" else "float64",
        "curvature.layer": "layer1",
        "curvature.steps": [0],
        "curvature.hessian_steps": [0],
        "curvature.density_steps": [0],
        "curvature.eq9_steps": [0],
    }
    if key in special:
        return special[key]
    if isinstance(current, bool):
        return not current
    if isinstance(current, list):
        return current + current[-1:]
    if isinstance(current, float):
        return current / 2 if current else 0.5
    return current + 1


@pytest.mark.parametrize("key", sorted(E.SHARED))
def test_shared_fields_keep_runs_that_differ_in_them_apart(key):
    default = RunConfig()
    section, name = key.split(".")
    current = getattr(getattr(default, section), name)
    changed = with_values(default, {key: _another_value(key, current)})
    assert getattr(getattr(changed, section), name) != current
    assert E.pack_key(task(default)) != E.pack_key(task(changed))
