"""`normlab sweep`: run a grid of one experiment's runs, resumably, then analyze it like a run.

The sweep folder holds a `config.yaml` in which the grid points are the experiment's arms, so
the experiment's own `analyze` and `plot` read it exactly like the folder of `normlab run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from normlab.engine import config as C
from normlab.engine.execution import Execution
from normlab.engine.files import atomic_write_text
from normlab.engine.locks import folder_lock
from normlab.engine.sweep import SweepConfig, expand

from .base import CONFIG_ROOT, Experiment, Outcome, arm_configs, load_config, run_cells

SWEEP_ROOT = CONFIG_ROOT / "sweeps"


def sweep_path(name_or_path: str) -> Path:
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


def grid_sweep(experiment: str, axes: dict[str, list], registry: dict[str, Experiment]) -> dict:
    """An ad-hoc sweep (`normlab sweep EXPERIMENT --grid run.KEY=V1,V2`) as the sweep file it stands
    for: the grid's keys as axes over the experiment's own config, with its seeds, and its smoke
    block (seeds and overrides) for --smoke."""
    if experiment not in registry:
        raise C.ConfigError(f"{experiment!r} is not a known experiment; choose one of {', '.join(sorted(registry))}")
    raw = C.read_yaml(registry[experiment].default_config)
    smoke = dict(raw.get("smoke") or {})
    return {
        "sweep": f"{experiment}-grid",
        "experiment": experiment,
        "description": "grid from the command line: " + "; ".join(f"{k} in {v}" for k, v in axes.items()),
        "axes": axes,
        "seeds": raw.get("seeds", 3),
        "seed_offset": raw.get("seed_offset", 0),
        "smoke": {
            **({"seeds": smoke.pop("seeds")} if "seeds" in smoke else {}),
            **({"overrides": smoke} if smoke else {}),
        },
    }


def load_sweep(
    path: Path | dict, registry: dict[str, Experiment], overrides: Optional[dict] = None, smoke: bool = False
):
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


def run_sweep(
    exp: Experiment, cfg, sweep: SweepConfig, out: Path, execution: Execution = Execution(), smoke: bool = False
) -> Outcome:
    """Run the grid's missing cells in `out` (a stable folder: running again resumes), analyze.
    `execution` was checked when it was built."""
    out = Path(out)
    with folder_lock(out):  # one command per output folder
        out.mkdir(parents=True, exist_ok=True)
        previous = out / "sweep.yaml"
        resolved = C.dump_yaml(sweep)
        if previous.is_file() and previous.read_text() != resolved:
            # a changed grid keeps the finished cells it shares with the old one (same keys)
            atomic_write_text(out / "sweep.previous.yaml", previous.read_text())
        atomic_write_text(previous, resolved)
        manifest = {"sweep": sweep.sweep, "wall_seconds_covers": "this invocation only"}
        return run_cells(exp, cfg, out, execution, smoke, manifest)


__all__ = ["grid_sweep", "load_sweep", "run_sweep", "sweep_path", "load_config"]
