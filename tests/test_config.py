"""Config loading: every bad value is rejected with its full dotted path and what is allowed."""

from pathlib import Path

import pytest

from normlab.cli.main import parse_set
from normlab.engine.config import ConfigError, apply_overrides, from_dict, to_dict
from normlab.engine.spec import ExperimentConfig, RunConfig
from normlab.engine.runner import load_config
from normlab.experiments import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_round_trip():
    cfg = from_dict(RunConfig, {})
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_unknown_key_names_dotted_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(RunConfig, {"optim": {"lrr": 0.1}})
    msg = str(e.value)
    assert msg.startswith("optim.lrr: unknown key")
    assert "lr" in msg and "momentum" in msg


def test_wrong_type_and_out_of_range_and_choices():
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer, got 'many'"):
        from_dict(RunConfig, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match=r"^optim\.momentum: 1\.5 is out of range; allowed \[0\.0, 1\.0\]"):
        from_dict(RunConfig, {"optim": {"momentum": 1.5}})
    with pytest.raises(ConfigError, match=r"^model\.norm: 'group' is not allowed; choose one of 'none', 'batch'"):
        from_dict(RunConfig, {"model": {"norm": "group"}})
    with pytest.raises(ConfigError, match=r"^model\.bias: .*'auto'"):
        from_dict(RunConfig, {"model": {"bias": 3}})


def test_numbers_are_coerced_only_when_exact():
    # YAML 1.1 reads 1e-3 as a string; a float field accepts it, an int field takes 2.0 but not 2.5
    cfg = from_dict(RunConfig, {"optim": {"lr": "1e-3"}, "train": {"steps": 2.0}})
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.train.steps == 2
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer, got 2\.5"):
        from_dict(RunConfig, {"train": {"steps": 2.5}})
    with pytest.raises(ConfigError, match="expected true or false"):
        from_dict(RunConfig, {"model": {"norm_affine": "yes please"}})


def test_parse_set_and_apply_overrides():
    ov = parse_set(["run.optim.lr=0.05", "seeds=4", "run.model.channels=[8, 8]", "description=hi there"])
    assert ov == {"run.optim.lr": 0.05, "seeds": 4, "run.model.channels": [8, 8], "description": "hi there"}
    raw = apply_overrides({"run": {"optim": {"lr": 0.1}}}, ov)
    cfg = from_dict(ExperimentConfig, {"experiment": "x", **raw})
    assert cfg.run.optim.lr == 0.05 and cfg.seeds == 4 and cfg.run.model.channels == [8, 8]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set(["run.optim.lr"])


def test_override_through_a_value_is_rejected():
    with pytest.raises(ConfigError, match=r"^run\.optim\.lr: is a value, not a section"):
        apply_overrides({"run": {"optim": {"lr": 0.1}}}, {"run.optim.lr.x": 1})


def test_arm_overrides_are_validated_with_their_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: baselines\narms:\n  a: {model.nrom: batch}\n")
    with pytest.raises(ConfigError, match=r"^arms\.a\.model\.nrom: unknown key"):
        load_config(path, REGISTRY)


def test_unknown_experiment_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiment: nope\n")
    with pytest.raises(
        ConfigError,
        match=r"'nope' is not a known experiment; choose one of adaptive_gotchas, baselines, bn_benefits, bn_paths, "
        r"bn_placement",
    ):
        load_config(path, REGISTRY)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml", REGISTRY)
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad, REGISTRY)


def test_smoke_block_is_applied_only_with_smoke():
    exp, full = load_config(REGISTRY["baselines"].default_config, REGISTRY)
    _, smoke = load_config(REGISTRY["baselines"].default_config, REGISTRY, smoke=True)
    assert full.run.train.steps == 8000 and smoke.run.train.steps < 100
    assert smoke.seeds == 1


def test_every_shipped_config_validates():
    for name, exp in REGISTRY.items():
        for smoke in (False, True):
            got, cfg = load_config(exp.default_config, REGISTRY, smoke=smoke)
            assert got is exp and cfg.experiment == name


def _run_keys_with_lines(text: str):
    """(dotted key under `run:`, its value, the text of its line) for every leaf of a config file."""
    import yaml

    root = yaml.compose(text)
    lines = text.splitlines()
    run = next((v for k, v in root.value if k.value == "run"), None) if root is not None else None
    out = []

    def walk(node, prefix):
        for k, v in node.value:
            if isinstance(v, yaml.MappingNode):
                walk(v, f"{prefix}{k.value}.")
            else:
                out.append((f"{prefix}{k.value}", yaml.safe_load(yaml.serialize(v)), lines[k.start_mark.line]))

    if run is not None:
        walk(run, "")
    return out


SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_a_shipped_config_holds_only_what_differs_unless_its_comment_says_why(path):
    """nanoGPT's rule: a config holds what its experiment changes. A `run:` key equal to the engine's
    default is allowed only with a comment on its line saying why it is spelled out."""
    from normlab.engine.config import flatten, to_dict
    from normlab.engine.spec import RunConfig

    defaults = flatten(to_dict(RunConfig()))
    bare = [key for key, value, line in _run_keys_with_lines(path.read_text()) if defaults.get(key, object()) == value
            and "#" not in line]  # fmt: skip
    assert not bare, f"{path.name}: run keys equal to their defaults, without a comment saying why: {bare}"


def test_the_default_rule_sees_a_bare_default_and_accepts_a_commented_one():
    bare = "experiment: x\nrun:\n  model:\n    width: 100\n    depth: 3\n"
    commented = "experiment: x\nrun:\n  model:\n    width: 100  # spelled out: the claim is about this width\n"
    assert [k for k, v, line in _run_keys_with_lines(bare)] == ["model.width", "model.depth"]
    assert "#" not in _run_keys_with_lines(bare)[0][2] and "#" in _run_keys_with_lines(commented)[0][2]
