"""Step 2 of a command: its work loaded and checked before anything is written (`Plan`).

A plan holds the experiment, its fully resolved config, the first stage's training runs (built
once here and trained as they are), the output folder, and for each `run.*` override how many
runs it reaches. Building one checks that every arm's device exists here and that every override
changes some run: what a user asks for must be what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import config as C
from ..errors import ConfigError
from ..execution import Execution
from ..experiment import Experiment, Registry
from ..results import default_run_dir, ensure_free, results_root
from ..runs import RunTask
from ..spec import ExperimentConfig
from ..sweep import SweepConfig, expand
from .load import config_path, load_config, load_sweep, sweep_path


@dataclass
class Plan:
    """A command's work, loaded and checked, before anything is written: the experiment, its fully
    resolved config, the first stage's runs (`tasks`), the output folder, (for a sweep) the sweep
    file's settings, and for each `run.*` override how many of the runs it reaches (`reach`; a
    warning in `notes` when it misses some)."""

    experiment: Experiment
    config: ExperimentConfig
    folder: Path
    smoke: bool = False
    sweep: Any = None  # the SweepConfig of a sweep
    reach: dict[str, tuple[int, int]] = field(default_factory=dict)  # override key -> (runs reached, runs)
    notes: list[str] = field(default_factory=list)
    tasks: Optional[list[RunTask]] = None  # the first stage's runs; None: built from the config when first read
    points: Optional[dict[str, "Plan"]] = None  # an ad-hoc grid: each grid point's own plan (folder/label)

    def __post_init__(self) -> None:
        if self.tasks is None:
            self.tasks = self.experiment.tasks(self.config)

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def later_steps(self) -> list[int]:
        """Training steps each follow-up stage is expected to add (a search's final re-runs), so that
        a progress bar's total covers every stage from the start; [] for a sweep or one stage."""
        return [] if self.sweep is not None else list(self.experiment.planned_followups(self.config))


def command_overrides(
    overrides: Optional[dict[str, Any]], seeds: Optional[int], execution: Execution, key: str
) -> dict:
    """The dotted overrides of a call: the caller's, the seeds and the execution's device."""
    out = dict(overrides or {})
    if seeds is not None:
        if seeds < 1:
            raise ConfigError("must be at least 1", key="seeds")
        out["seeds"] = seeds
    return {**out, **execution.overrides(key)}


def plan(
    registry: Registry,
    experiment: str | Path,
    config: Optional[str | Path] = None,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str | Path] = None,
    execution: Optional[Execution] = None,
) -> Plan:
    """`normlab.plan`: a run's plan, loaded and checked (nothing is written)."""
    execution = execution or Execution()
    path = Path(config) if config is not None else config_path(experiment, registry)
    raw = command_overrides(overrides, seeds, execution, "run.train.device")
    exp, cfg = load_config(path, registry, raw, smoke)
    if config is not None and exp.name != str(experiment) and str(experiment) in registry:
        raise ConfigError(f"{config} is a `{exp.name}` config, not `{experiment}`", key="config")
    tasks = exp.tasks(cfg)
    check_devices(cfg, tasks, execution)
    load = lambda raw: load_config(path, registry, raw, smoke)[1]  # noqa: E731
    reach, notes = override_reach(exp, cfg, tasks, raw, load)
    folder = Path(out) if out else default_run_dir(results_root(), exp.name, smoke)
    ensure_free(folder)  # a run never writes into a finished folder: say so before any output
    return Plan(exp, cfg, folder, smoke, reach=reach, notes=notes, tasks=tasks)


def plan_sweep(
    registry: Registry,
    name_or_path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str | Path] = None,
    execution: Optional[Execution] = None,
    grid: Optional[dict[str, list]] = None,
) -> Plan:
    """`normlab.plan_sweep`: a sweep file's plan, or with a grid over an experiment `plan_grid`'s."""
    execution = execution or Execution()
    overrides = dict(overrides or {})
    axes = {}
    for key, values in (grid or {}).items():
        if not key.startswith("run.") or not isinstance(values, list) or not values:
            raise ConfigError(f"expected run.KEY=V1,V2,... (a run config key and its values), got {key!r}", key="grid")
        axes[key[len("run.") :]] = values
    if axes and str(name_or_path) in registry:  # an ad-hoc grid over an experiment: every arm at every point
        return plan_grid(registry, str(name_or_path), axes, overrides, seeds, smoke, out, execution)
    source = sweep_path(str(name_or_path))
    overrides.update({f"axes.{k}": v for k, v in axes.items()})
    raw = command_overrides(overrides, seeds, execution, "overrides.run.train.device")
    exp, cfg, spec = load_sweep(source, registry, raw, smoke)
    tasks = exp.tasks(cfg)
    check_devices(cfg, tasks, execution)
    load = lambda raw: load_sweep(source, registry, raw, smoke)[1]  # noqa: E731
    reach, notes = override_reach(exp, cfg, tasks, raw, load, prefix="overrides.run.", axes=tuple(spec.axes))
    folder = Path(out) if out else results_root() / "sweeps" / (spec.sweep + ("-smoke" if smoke else ""))
    return Plan(exp, cfg, folder, smoke, spec, reach, notes, tasks)


def plan_grid(
    registry: Registry,
    experiment: str,
    axes: dict[str, list],
    overrides: dict[str, Any],
    seeds: Optional[int],
    smoke: bool,
    out: Optional[str | Path],
    execution: Execution,
) -> Plan:
    """An ad-hoc grid over an experiment (`normlab sweep EXP --grid run.KEY=V1,V2`): at every grid
    point the experiment's whole config with that point's values, all its arms and seeds, into a
    folder of its own (OUT/POINT), judged there as a run of the experiment is. A grid key that an arm
    sets itself is refused, naming the arm: that arm would not run the grid's values."""
    path = config_path(experiment, registry)
    raw = command_overrides(overrides, seeds, execution, "run.train.device")
    exp, cfg = load_config(path, registry, raw, smoke)
    for key in axes:
        setters = [arm for arm, ov in (cfg.arms or {}).items() if any(k == key or k.startswith(f"{key}.") for k in ov)]
        if setters:
            raise ConfigError(
                f"run.{key}: arms.{setters[0]}.{key} sets it for arm {setters[0]}, which would not run the grid's "
                f"values; grid over another key, or give a config of your own without that arm's setting",
                key="grid",
            )
    folder = Path(out) if out else results_root() / "sweeps" / (f"{experiment}-grid" + ("-smoke" if smoke else ""))
    points: dict[str, Plan] = {}
    for label, values in expand(axes).items():
        point = {**raw, **{f"run.{k}": v for k, v in values.items()}}
        e, c = load_config(path, registry, point, smoke)
        tasks = e.tasks(c)
        check_devices(c, tasks, execution)
        if not points:  # the user's overrides and the grid's keys reach runs (checked at the first point)
            if not tasks:
                raise ConfigError(f"{experiment} trains no runs, so a grid over run.* keys would change nothing; "
                                  "sweep an experiment that trains", key="grid")  # fmt: skip
            load = lambda r: load_config(path, registry, r, smoke)[1]  # noqa: E731
            reach, notes = override_reach(e, c, tasks, point, load)
        points[label] = Plan(e, c, folder / label, smoke, tasks=tasks)
    spec = SweepConfig(
        sweep=f"{experiment}-grid",
        experiment=experiment,
        description="grid from the command line, every arm at every point: "
        + "; ".join(f"{k} in {v}" for k, v in axes.items()),
        axes=axes,
        seeds=cfg.seeds,
        seed_offset=cfg.seed_offset,
    )
    tasks = [t for p in points.values() for t in p.tasks]
    return Plan(exp, cfg, folder, smoke, spec, reach, notes, tasks, points)


def check_devices(cfg: ExperimentConfig, tasks: list[RunTask], execution: Execution) -> None:
    """Every run's train.device exists here (a cuda asked for without a GPU stops before any output);
    the error names the arm's key where the arm sets the device itself. An experiment that trains
    nothing is held to its config's own device, as any other is."""
    if not tasks:
        execution.check_device(cfg.run.train.device, "run.train.device")
    for t in tasks:
        own = t.arm in (cfg.arms or {}) and t.config.train.device != cfg.run.train.device
        execution.check_device(t.config.train.device, f"arms.{t.arm}.train.device" if own else "run.train.device")


def override_reach(
    exp: Experiment,
    cfg: ExperimentConfig,
    tasks: list[RunTask],
    overrides: dict[str, Any],
    load: Callable[[dict], ExperimentConfig],
    prefix: str = "run.",
    axes: tuple = (),
) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """For each override of a `run.` key, the runs of the first stage it reaches: those whose value
    of the key it changes (also when an experiment derives the value, as an LR grid's multiples) or
    that train with the value asked for. None reached is an error naming what sets the key instead
    (arms, or the experiment's design); some missed is a note naming those arms. What a user asks
    for must be what runs: an override that changes no run must not pass as if it did. `load` builds
    the config from other overrides (to compare with the config without this one)."""
    keys = [k for k in overrides if k.startswith(prefix) and k != f"{prefix}plugins"]
    if not tasks or not keys:
        return {}, []  # nothing trains (a table-only experiment): no run to count
    flat = [C.flatten(C.to_dict(t.config)) for t in tasks]
    reach, notes = {}, []
    for key in keys:
        path = key[len(prefix) :]
        if path not in flat[0]:
            continue  # a whole section (run.optim={...}): its fields are checked where they are used
        wanted = C.flatten(C.to_dict(cfg.run)).get(path, overrides[key]) if prefix == "run." else overrides[key]
        before = [
            C.flatten(C.to_dict(t.config)) for t in exp.tasks(load({k: v for k, v in overrides.items() if k != key}))
        ]
        same_runs = len(before) == len(flat)
        hit = [
            t
            for i, (t, f) in enumerate(zip(tasks, flat))
            if f.get(path) == wanted or (same_runs and before[i].get(path) != f.get(path))
        ]
        reach[key] = (len(hit), len(tasks))
        setters = [
            arm for arm, ov in (cfg.arms or {}).items() if any(k == path or k.startswith(f"{path}.") for k in ov)
        ]
        if not hit:
            raise ConfigError(f"reaches none of the {len(tasks)} runs: {_setter(cfg, path, axes, setters)}; "
                              "override that instead", key=key)  # fmt: skip
        if len(hit) < len(tasks):
            missed = sorted({t.arm for t in tasks} - {t.arm for t in hit})
            shown = ", ".join(missed[:6]) + (f" and {len(missed) - 6} more" if len(missed) > 6 else "")
            named = _who_sets(C.to_dict(cfg), path)
            notes.append(
                f"{key} reaches {len(hit)} of {len(tasks)} runs; not {shown}"
                + (f" ({', '.join(named)} set theirs)" if named and not setters else "")
            )
    return reach, notes


def _setter(cfg: ExperimentConfig, path: str, axes: tuple, setters: list[str]) -> str:
    """What sets `path` for every run instead of the user's override, for the error."""
    if path in axes:  # a sweep's grid point sets it
        return f"the sweep's axis axes.{path} sets it"
    if setters:
        more = f" and {len(setters) - 3} more" if len(setters) > 3 else ""
        where = ", ".join(f"arms.{arm}.{path}" for arm in setters[:3]) + more
        return where + (" set it" if len(setters) > 1 else " sets it")
    named = _who_sets(C.to_dict(cfg), path)
    return f"{', '.join(named[:4]) or 'the experiment'} set{'s' if len(named) < 2 else ''} it"


def _who_sets(tree: dict, path: str) -> list[str]:
    """The config's own settings that look like the source of `path` for an experiment that builds its
    runs itself: a key named after its field (design.lr_grid, design.common_lr for optim.lr), a list
    whose entries name it (search.sgd for a search space), an axis of a sweep (axes.optim.lr)."""
    leaf, found = path.split(".")[-1], []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if not where and k in ("run", "arms", "smoke", "analysis", "description", "experiment"):
                    continue
                words = str(k).split("_")
                if k == path or leaf in words or f"{leaf}s" in words:
                    found.append(f"{where}{k}")
                walk(v, f"{where}{k}.")
        elif isinstance(node, list) and any(isinstance(x, dict) and x.get("key") == path for x in node):
            found.append(where.rstrip("."))

    walk(tree, "")
    return list(dict.fromkeys(found))
