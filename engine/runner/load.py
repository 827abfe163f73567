"""Step 1 of a command: a config or sweep file and the user's overrides -> the experiment and its typed config.

Every error names the dotted key and the fix. The registry of experiments is handed in: the
runner names no experiment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import config as C
from ..experiment import CONFIG_ROOT, Experiment, Registry, arm_configs
from ..spec import ExperimentConfig
from ..sweep import SweepConfig, expand

SWEEP_ROOT = CONFIG_ROOT / "sweeps"


def config_path(name_or_path: str | Path, registry: Registry) -> Path:
    """An experiment name means its shipped config; anything else is a path to a YAML file."""
    if str(name_or_path) in registry:
        return registry[str(name_or_path)].default_config
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise C.ConfigError(
        f"{str(name_or_path)!r} is neither a known experiment ({', '.join(sorted(registry))}) "
        "nor a config file; see `normlab list`"
    )


def load_config(
    path: Path | str, registry: Registry, overrides: Optional[dict] = None, smoke: bool = False
) -> tuple[Experiment, ExperimentConfig]:
    """Read, override and validate a config; every error names the dotted key and the fix."""
    raw = C.read_yaml(path)
    name = raw.get("experiment")
    if name not in registry:
        known = ", ".join(sorted(registry))
        raise C.ConfigError(f"experiment: {name!r} is not a known experiment; choose one of {known}")
    exp = registry[name]
    if smoke:
        smoke_overrides = raw.get("smoke") or {}
        if not isinstance(smoke_overrides, dict):
            raise C.ConfigError("smoke: expected a mapping of dotted keys to values")
        raw = C.apply_overrides(raw, smoke_overrides)
    if overrides:
        raw = C.apply_overrides(raw, overrides)
    cfg = C.from_dict(exp.config_class, raw)
    arm_configs(cfg)  # validates every arm's overrides
    return exp, cfg


def sweep_path(name_or_path: str) -> Path:
    """A shipped sweep's name (configs/sweeps/NAME.yaml) or a sweep file's path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    path = SWEEP_ROOT / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(q.stem for q in SWEEP_ROOT.glob("*.yaml")))
        raise C.ConfigError(
            f"{name_or_path!r} is neither a sweep ({known}) nor a sweep file (an experiment takes a grid: "
            "--grid run.KEY=V1,V2)"
        )
    return path


def load_sweep(
    path: Path | dict, registry: Registry, overrides: Optional[dict] = None, smoke: bool = False
) -> tuple[Experiment, ExperimentConfig, SweepConfig]:
    """-> (experiment, its config with the grid as arms, the sweep config). `path`: a sweep file, or
    the raw mapping of one (an ad-hoc grid)."""
    raw = dict(path) if isinstance(path, dict) else C.read_yaml(path)
    if smoke:
        raw = _apply(raw, raw.get("smoke") or {})
    if overrides:
        raw = _apply(raw, overrides)
    sweep = C.from_dict(SweepConfig, raw)
    if sweep.experiment not in registry:
        raise C.ConfigError(
            f"experiment: {sweep.experiment!r} is not a known experiment; choose one of {', '.join(sorted(registry))}"
        )
    if not sweep.axes:
        raise C.ConfigError("axes: a sweep needs at least one axis, e.g. {optim.lr: [0.01, 0.1]}")
    for key, values in sweep.axes.items():
        if not values:
            raise C.ConfigError(f"axes.{key}: needs at least one value")
    base = Path(sweep.base) if sweep.base else registry[sweep.experiment].default_config
    raw_exp = C.apply_overrides(
        C.read_yaml(base), {**sweep.overrides, "seeds": sweep.seeds, "seed_offset": sweep.seed_offset}
    )
    raw_exp["arms"] = expand(sweep.axes)  # the grid replaces the base config's arms
    exp = registry[sweep.experiment]
    cfg = C.from_dict(exp.config_class, raw_exp)
    arm_configs(cfg)  # every grid point is a valid run config
    return exp, cfg, sweep


def _apply(raw: dict, overrides: dict) -> dict:
    """Overrides of a sweep file. Axis names are dotted keys themselves, so `axes` (a mapping)
    replaces the whole grid and `axes.KEY` sets one axis, instead of nesting further."""
    overrides = dict(overrides)
    axes = overrides.pop("axes", None)
    one_axis = {k[len("axes.") :]: overrides.pop(k) for k in list(overrides) if k.startswith("axes.")}
    out = C.apply_overrides(raw, overrides)
    if axes is not None:
        if not isinstance(axes, dict):
            raise C.ConfigError("axes: expected a mapping of dotted keys to lists of values")
        out["axes"] = dict(axes)
    if one_axis:
        out["axes"] = {**(out.get("axes") or {}), **one_axis}
    return out
