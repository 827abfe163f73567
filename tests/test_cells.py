"""Cell keys: the same run keeps its key across versions, and a new config field needs no registry.

A cell's key is a hash of its resolved run config and seed; finished cells are found by it when a
run or sweep resumes. The keys below are checked against the rule every key was made with so far
(fields added after keys were first fixed left out while at their defaults), computed here on its own.
"""

import hashlib
import json

import pytest

from normlab.engine.cells import KEYED_FIELDS, cell_key, keyed
from normlab.engine.config import flatten, to_dict
from normlab.engine.spec import CurvatureConfig, KFACConfig, RunConfig
from normlab.engine.runner import load_config
from normlab.experiments import REGISTRY

# The rule as it was written when curvature, kfac, plugins and the Jacobian probe came in.
_ADDED = {
    "curvature": {k: v for k, v in to_dict(CurvatureConfig()).items() if k != "eq9_steps"},  # as it came in
    "kfac": to_dict(KFACConfig()),
    "plugins": [],
    "probes.jacobian_examples": 0,
    "model.reparam_scale": 1.0,
    "model.norm_detach": "none",
    "model.norm_ghost": 0,
    "model.centered_reparam": False,
    "probes.dead_units": False,
    "optim.eps_inside": False,
    "probes.step_grad_cos": False,
    "optim.second_moment": "batch",
}
# ... and the fields that joined a section after it entered the keys whole (left out at their default)
_LATER = {"curvature.eq9_steps": []}


def key_as_before(run: RunConfig, seed: int, extra: str = "") -> str:
    cfg = to_dict(run)
    for path, default in _LATER.items():
        section, name = path.split(".")
        if cfg[section].get(name) == default:
            del cfg[section][name]
    for path, default in _ADDED.items():
        *parents, name = path.split(".")
        node = cfg
        for part in parents:
            node = node.get(part, {})
        if name in node and node[name] == default:
            del node[name]
    blob = json.dumps({"run": cfg, "seed": seed, "extra": extra}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def every_task():
    for name, exp in REGISTRY.items():
        for smoke in (False, True):
            _, cfg = load_config(exp.default_config, REGISTRY, smoke=smoke)
            yield from exp.tasks(cfg)


def test_every_shipped_run_keeps_its_cell_key():
    tasks = list(every_task())
    assert len(tasks) > 100
    for t in tasks:
        assert cell_key(t.config, t.seed, "x") == key_as_before(t.config, t.seed, "x"), t.run_id


@pytest.mark.parametrize(
    "change",
    [
        {"curvature": {"steps": [0]}},
        {"curvature": {"steps": [0], "eq9_steps": [0]}},
        {"kfac": {"damping": 0.1}},
        {"plugins": ["p"]},
        {"probes": {"jacobian_examples": 4}},
    ],
)
def test_a_run_that_sets_a_newer_field_keeps_its_key_too(change):
    from dataclasses import replace

    run = RunConfig()
    for section, value in change.items():
        run = replace(run, **{section: value if section == "plugins" else replace(getattr(run, section), **value)})
    assert cell_key(run, 0) == key_as_before(run, 0) != cell_key(RunConfig(), 0)
    if run.curvature.eq9_steps:  # a later field, once set, is part of the key
        assert cell_key(run, 0) != cell_key(replace(run, curvature=replace(run.curvature, eq9_steps=[])), 0)


def test_a_field_added_later_leaves_every_key_alone_until_a_run_sets_it():
    cfg, default = to_dict(RunConfig()), to_dict(RunConfig())
    with_new = {**cfg, "train": {**cfg["train"], "grad_clip": 0.0}}
    default_new = {**default, "train": {**default["train"], "grad_clip": 0.0}}
    assert keyed(with_new, default_new) == keyed(cfg, default)  # at its default: no trace in the key
    clipped = {**cfg, "train": {**cfg["train"], "grad_clip": 1.0}}
    assert keyed(clipped, default_new)["train"]["grad_clip"] == 1.0  # set: part of the key


def test_keyed_fields_are_fields_of_the_run_config():
    assert KEYED_FIELDS <= set(flatten(to_dict(RunConfig())))


def test_the_hyperparameters_runs_csv_always_shows_are_fields_of_the_run_config():
    from normlab.engine.runner.run import ALWAYS_SHOWN

    assert set(ALWAYS_SHOWN) <= set(flatten(to_dict(RunConfig()))), "a renamed field would vanish from runs.csv"
