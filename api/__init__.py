"""normlab as a library: the operations of the command line, for notebooks and scripts.

    import normlab
    out = normlab.run("knockout", overrides={"run.train.steps": 300}, seeds=3, out="results/k1-short",
                      execution=normlab.Execution(jobs=2))
    out.claims                                  # one row per claim (pandas)
    folder = normlab.load("results/reference/knockout")
    folder.runs, folder.metrics, folder.claims  # the run folder's tables, typed by pandas
    normlab.judge(folder.path)                  # recompute the claim rows from the CSVs alone
    normlab.plot(folder.path)                   # redraw its figures

Every function takes experiment names or config paths, dotted overrides as a dict, and run
folders as paths; errors are `normlab.NormlabError` (bad config: `normlab.ConfigError`) with one
line that names the config key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from normlab.engine.errors import ConfigError, NormlabError, count_or_none
from normlab.engine.execution import Execution

try:
    from importlib.metadata import version as _version

    __version__ = _version("normlab")
except Exception:  # not installed (e.g. run from a source tree)
    __version__ = "unknown"

__all__ = [
    "__version__",
    "ConfigError",
    "Execution",
    "Exported",
    "NormlabError",
    "Plan",
    "RunFolder",
    "Validation",
    "bench",
    "export",
    "judge",
    "lens",
    "list_experiments",
    "list_sweeps",
    "load",
    "plan",
    "plan_sweep",
    "plot",
    "report",
    "reproduce",
    "cost_model",
    "run",
    "sweep",
    "validate",
]


def _registry():
    from normlab.experiments import REGISTRY

    return REGISTRY


def list_experiments() -> pd.DataFrame:
    """The registered experiments: name, title, claim ids, default config."""
    rows = [
        {"experiment": n, "title": e.title, "claims": [c.id for c in e.claims], "config": str(e.default_config)}
        for n, e in _registry().items()
    ]
    return pd.DataFrame(rows)


def _config_path(name_or_path: str | Path) -> Path:
    """An experiment name means its shipped config; anything else is a path to a YAML file."""
    registry = _registry()
    if str(name_or_path) in registry:
        return registry[str(name_or_path)].default_config
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise ConfigError(
        f"{str(name_or_path)!r} is neither a known experiment ({', '.join(sorted(registry))}) "
        "nor a config file; see `normlab list`"
    )


def _overrides(overrides: Optional[dict[str, Any]], seeds: Optional[int], execution: Execution, key: str) -> dict:
    """The dotted overrides of a call: the caller's, the seeds and the execution's device."""
    out = dict(overrides or {})
    if seeds is not None:
        if seeds < 1:
            raise ConfigError("must be at least 1", key="seeds")
        out["seeds"] = seeds
    return {**out, **execution.overrides(key)}


@dataclass
class Plan:
    """A command's work, loaded and checked, before anything is written: the experiment, its fully
    resolved config, the output folder, (for a sweep) the sweep file's settings, and for each `run.*`
    override how many of the runs it reaches (`reach`; a warning in `notes` when it misses some)."""

    experiment: Any  # normlab.experiments.Experiment
    config: Any  # its typed ExperimentConfig
    folder: Path
    smoke: bool = False
    sweep: Any = None  # the SweepConfig of a sweep
    reach: dict[str, tuple[int, int]] = field(default_factory=dict)  # override key -> (runs reached, runs)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def later_steps(self) -> list[int]:
        """Training steps each follow-up stage is expected to add (a search's final re-runs), so that
        a progress bar's total covers every stage from the start; [] for a sweep or one stage."""
        return [] if self.sweep is not None else list(self.experiment.planned_followups(self.config))


def list_sweeps() -> dict[str, Path]:
    """The shipped sweeps (`normlab sweep NAME`): name -> sweep file."""
    from normlab.experiments.sweeps import SWEEP_ROOT

    return {p.stem: p for p in sorted(SWEEP_ROOT.glob("*.yaml"))}


def _reach(
    exp, cfg, overrides: dict[str, Any], load: Callable[[dict], Any], prefix: str = "run.", axes: tuple = ()
) -> tuple:
    """For each override of a `run.` key, the runs of the first stage it reaches: those whose value
    of the key it changes (also when an experiment derives the value, as an LR grid's multiples) or
    that train with the value asked for. None reached is an error naming what sets the key instead
    (arms, or the experiment's design); some missed is a note naming those arms. What a user asks
    for must be what runs: an override that changes no run must not pass as if it did. `load` builds
    the config from other overrides (to compare with the config without this one)."""
    from normlab.engine import config as C

    tasks = exp.tasks(cfg)
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
            if path in axes:  # a sweep's grid point sets it
                where = f"the sweep's axis axes.{path} sets it"
            elif setters:
                more = f" and {len(setters) - 3} more" if len(setters) > 3 else ""
                where = ", ".join(f"arms.{arm}.{path}" for arm in setters[:3]) + more
                where += " set it" if len(setters) > 1 else " sets it"
            else:
                named = _who_sets(C.to_dict(cfg), path)
                where = f"{', '.join(named[:4]) or 'the experiment'} set{'s' if len(named) < 2 else ''} it"
            raise ConfigError(f"reaches none of the {len(tasks)} runs: {where}; override that instead", key=key)
        if len(hit) < len(tasks):
            missed = sorted({t.arm for t in tasks} - {t.arm for t in hit})
            shown = ", ".join(missed[:6]) + (f" and {len(missed) - 6} more" if len(missed) > 6 else "")
            named = _who_sets(C.to_dict(cfg), path)
            notes.append(
                f"{key} reaches {len(hit)} of {len(tasks)} runs; not {shown}"
                + (f" ({', '.join(named)} set theirs)" if named and not setters else "")
            )
    return reach, notes


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


def _check_devices(cfg, execution: Execution) -> None:
    """Every arm's train.device exists here (a cuda asked for without a GPU stops before any output)."""
    from normlab.experiments.base import arm_configs

    for arm, run_cfg in arm_configs(cfg).items():
        own = run_cfg.train.device != cfg.run.train.device  # the arm sets it, not `run`
        execution.check_device(run_cfg.train.device, f"arms.{arm}.train.device" if own else "run.train.device")


def plan(
    experiment: str | Path,
    config: Optional[str | Path] = None,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str | Path] = None,
    execution: Optional[Execution] = None,
) -> Plan:
    """Load and check what `run` would run (nothing is written): `experiment` is a name or a
    config file; `config` another config file for that experiment."""
    from normlab.engine.results import default_run_dir, ensure_free, results_root
    from normlab.experiments import load_config

    execution = execution or Execution()
    path = Path(config) if config is not None else _config_path(experiment)
    exp, cfg = load_config(path, _registry(), _overrides(overrides, seeds, execution, "run.train.device"), smoke)
    if config is not None and exp.name != str(experiment) and str(experiment) in _registry():
        raise ConfigError(f"{config} is a `{exp.name}` config, not `{experiment}`", key="config")
    _check_devices(cfg, execution)
    load = lambda raw: load_config(path, _registry(), raw, smoke)[1]  # noqa: E731
    reach, notes = _reach(exp, cfg, _overrides(overrides, seeds, execution, "run.train.device"), load)
    folder = Path(out) if out else default_run_dir(results_root(), exp.name, smoke)
    ensure_free(folder)  # a run never writes into a finished folder: say so before any output
    return Plan(exp, cfg, folder, smoke, reach=reach, notes=notes)


def plan_sweep(
    name_or_path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str | Path] = None,
    execution: Optional[Execution] = None,
    grid: Optional[dict[str, list]] = None,
) -> Plan:
    """Load and check what `sweep` would run: configs/sweeps/NAME.yaml or a sweep file, or, with
    `grid` ({"run.optim.lr": [0.01, 0.1]}), an experiment's config over that grid (an ad-hoc sweep,
    with the same cells, resume and backends). A grid on a sweep file sets those axes."""
    from normlab.engine.results import results_root
    from normlab.experiments.sweeps import grid_sweep, load_sweep, sweep_path

    execution = execution or Execution()
    overrides = dict(overrides or {})
    axes = {}
    for key, values in (grid or {}).items():
        if not key.startswith("run.") or not isinstance(values, list) or not values:
            raise ConfigError(f"expected run.KEY=V1,V2,... (a run config key and its values), got {key!r}", key="grid")
        axes[key[len("run.") :]] = values
    if axes and str(name_or_path) in _registry():  # an ad-hoc grid over an experiment's own config
        source = grid_sweep(str(name_or_path), axes, _registry())
        overrides = {(f"overrides.{k}" if k.startswith("run.") else k): v for k, v in overrides.items()}
    else:
        source = sweep_path(str(name_or_path))
        overrides.update({f"axes.{k}": v for k, v in axes.items()})
    raw = _overrides(overrides, seeds, execution, "overrides.run.train.device")
    exp, cfg, spec = load_sweep(source, _registry(), raw, smoke)
    _check_devices(cfg, execution)
    load = lambda raw: load_sweep(source, _registry(), raw, smoke)[1]  # noqa: E731
    reach, notes = _reach(exp, cfg, raw, load, prefix="overrides.run.", axes=tuple(spec.axes))
    folder = Path(out) if out else results_root() / "sweeps" / (spec.sweep + ("-smoke" if smoke else ""))
    return Plan(exp, cfg, folder, smoke, spec, reach, notes)


def _only_the_plan(*given) -> None:
    """A plan was loaded with its overrides, seeds, folder and smoke setting: more of them given
    beside it would change nothing, which must not pass as if it did."""
    if any(x not in (None, False, {}, []) for x in given):
        raise ConfigError("give overrides, seeds, out, smoke and grid to plan() or plan_sweep(), not with a plan")


def run(
    experiment: str | Path | Plan,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    out: Optional[str | Path] = None,
    smoke: bool = False,
    execution: Optional[Execution] = None,
):
    """Train every arm x seed of an experiment (a name, a config file or a `plan`), judge, plot,
    report. `overrides` are dotted keys, e.g. {"run.optim.lr": 0.05}; `execution` says how the
    runs train (normlab.Execution(jobs=2), the default one worker). Returns an Outcome (folder,
    claims, runs, plots). `out` defaults to results/<experiment>/<timestamp>; an interrupted run
    of the same call resumes from OUT.partial/."""
    from normlab.experiments import run_experiment

    execution = execution or Execution()
    if isinstance(experiment, Plan):
        _only_the_plan(overrides, seeds, out, smoke)
    p = experiment if isinstance(experiment, Plan) else plan(experiment, None, overrides, seeds, smoke, out, execution)
    return run_experiment(p.experiment, p.config, p.folder, execution, p.smoke)


def sweep(
    name_or_path: str | Path | Plan,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    out: Optional[str | Path] = None,
    smoke: bool = False,
    execution: Optional[Execution] = None,
    grid: Optional[dict[str, list]] = None,
):
    """Run a sweep (configs/sweeps/NAME.yaml, a sweep file, an experiment with a `grid`, or a
    `plan_sweep`) into `out`, resumably; returns an Outcome."""
    from normlab.experiments.sweeps import run_sweep

    execution = execution or Execution()
    if isinstance(name_or_path, Plan):
        _only_the_plan(overrides, seeds, out, smoke, grid)
    p = (
        name_or_path
        if isinstance(name_or_path, Plan)
        else plan_sweep(name_or_path, overrides, seeds, smoke, out, execution, grid)
    )
    return run_sweep(p.experiment, p.config, p.sweep, p.folder, execution, p.smoke)


@dataclass
class Validation:
    """What `validate` found: the plan, the runs of its first stage and the steps of each arm."""

    plan: Plan
    runs: int
    arms: dict[str, int]  # arm -> train.steps

    @property
    def summary(self) -> str:
        """e.g. '3 arm(s) x 5 seed(s) = 15 runs; steps per arm: {...}'."""
        cfg = self.plan.config
        count = (
            f"{len(self.arms)} arm(s) x {cfg.seeds} seed(s) = {self.runs} runs"
            if self.runs == len(self.arms) * cfg.seeds
            else f"{len(self.arms)} arm(s), {self.runs} runs before any follow-up stage"
        )
        steps = self.arms if len(self.arms) <= 12 else sorted(set(self.arms.values()))
        return f"{count}; steps per arm: {steps}"

    @property
    def yaml(self) -> str:
        """The fully resolved config (defaults, overrides and smoke applied)."""
        from normlab.engine.config import dump_yaml

        return dump_yaml(self.plan.config)


def validate(config: str | Path, overrides: Optional[dict[str, Any]] = None, smoke: bool = False) -> Validation:
    """Check a config or sweep file (or an experiment's shipped config) without running anything:
    keys, types, ranges, every arm and the runs the experiment builds from them."""
    from normlab.engine.config import read_yaml

    path = _config_path(config)
    p = (
        plan_sweep(path, overrides, smoke=smoke)
        if "sweep" in read_yaml(path)
        else plan(path, None, overrides, None, smoke)
    )
    tasks = p.experiment.tasks(p.config)  # the experiment's own arms (some build them from a design)
    return Validation(p, len(tasks), {t.arm: t.config.train.steps for t in tasks})


def bench(
    steps: int = 2000,
    repeats: int = 5,
    probe_every: Optional[int] = None,
    workers: Optional[int] = None,
    ensemble_steps: int = 300,
    device: str = "cpu",
    log: Callable[[str], None] = print,
):
    """Engine throughput against a plain PyTorch loop, probe cost, pool scaling and batched
    ensembles, measured side by side; returns a BenchResult (its `rows()` are the table).
    `log` gets one line per trial as it finishes."""
    from normlab.engine.bench import run_bench
    from normlab.engine.execution import DEVICES
    from normlab.engine.train import resolve_device

    if steps < 10:
        raise ConfigError(f"must be at least 10, got {steps}", key="steps")
    if repeats < 1:
        raise ConfigError(f"must be at least 1, got {repeats}", key="repeats")
    if device not in DEVICES:
        raise ConfigError(f"{device!r} is not allowed; choose cpu, cuda or auto", key="device")
    where = resolve_device(device, key="device")  # a cuda asked for where none is visible stops here
    return run_bench(
        steps=steps,
        repeats=repeats,
        probe_every=probe_every,
        workers=workers,
        log=log,
        ensemble_sizes=(1, 4, 8, 16, 32) if ensemble_steps else (),
        ensemble_steps=max(ensemble_steps, 1),
        device=str(where),
    )


@dataclass
class Reproduction:
    """What `reproduce` wrote: the output root, each experiment's folder and claim rows, the reports."""

    root: Path
    folders: dict[str, Path]
    claims: dict[str, pd.DataFrame]
    reports: list[Path]
    crashes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # experiment -> (run_id, error)


def reproduce(
    out: Optional[str | Path] = None,
    smoke: bool = False,
    only: Optional[list[str]] = None,
    overrides: Optional[dict[str, Any]] = None,
    execution: Optional[Execution] = None,
    on_experiment: Optional[Callable[[int, int, str, Path, bool], None]] = None,
) -> Reproduction:
    """Run every experiment's default config (or those in `only`) into OUT/<experiment>/, then
    write OUT/report.md and OUT/report.html. Finished experiments are reused, interrupted ones
    resume. With more than one local worker the experiments run side by side in one pool of
    workers (the files are those of running them one by one). `on_experiment(i, n, name, folder,
    reused)` is called for each experiment, in order, before it starts; it may return a dict of
    callbacks (progress, on_start, on_result) for that experiment's runs, else the execution's own
    callbacks get every run's progress."""
    from normlab.engine.config import dump_yaml
    from normlab.engine.report import build_report
    from normlab.engine.results import read_claims, results_root
    from normlab.experiments import load_config, run_experiment
    from normlab.experiments.base import crashes

    execution = execution or Execution()
    registry = _registry()
    names = list(only) if only else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} not known; choose from {', '.join(registry)}", key="only")
    root = Path(out) if out else results_root() / ("reproduce-smoke" if smoke else "reproduce")
    raw = _overrides(overrides, None, execution, "run.train.device")
    configs = {n: load_config(registry[n].default_config, registry, raw, smoke) for n in names}
    reused = {}
    for name in names:
        exp, cfg = configs[name]
        folder = root / name
        reused[name] = (folder / "claims.csv").is_file()
        if reused[name] and (folder / "config.yaml").read_text() != dump_yaml(cfg):
            raise ConfigError(
                f"{folder} holds {name} results of a different config; remove that folder to rerun it, "
                "or choose another output folder ({out})"
            )
    side_by_side = execution.backend == "local" and execution.jobs > 1 and sum(not r for r in reused.values()) > 1
    if side_by_side:
        _reproduce_side_by_side(names, configs, root, reused, execution, smoke, on_experiment)
    else:
        for i, name in enumerate(names, 1):
            exp, cfg = configs[name]
            callbacks = on_experiment(i, len(names), name, root / name, reused[name]) if on_experiment else None
            if not reused[name]:
                run_experiment(exp, cfg, root / name, execution.with_callbacks(**callbacks or {}), smoke)
    titles = {n: e.title for n, e in registry.items()}
    reports = [  # exactly what `normlab report ROOT --format FMT` writes
        build_report([root], root / f"report.{fmt}", fmt, expected=list(registry), titles=titles)
        for fmt in ("md", "html")
    ]
    crashed = {n: crashes(pd.read_csv(root / n / "runs.csv")) for n in names if (root / n / "runs.csv").is_file()}
    return Reproduction(
        root,
        {n: root / n for n in names},
        {n: read_claims(root / n) for n in names},
        reports,
        {n: c for n, c in crashed.items() if c},
    )


def _reproduce_side_by_side(names, configs, root: Path, reused, execution: Execution, smoke, on_experiment) -> None:
    """Every experiment still to run in a thread of its own, all training in one SharedPool: the
    workers stay busy across experiment boundaries (one experiment's tail overlaps the next one's
    runs, a multi-stage experiment's later stage waits only for its own first), the costliest work
    first by the runs' recorded costs (results/reference). The threads start longest experiment
    first, each as soon as the one before has submitted its work, and do their in-process work
    (derived tables, analysis, plots) one at a time (SharedPool.holding), so every file is the one
    running them one by one writes."""
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from normlab.engine.costs import experiment_seconds, recorded_costs
    from normlab.engine.executor import SharedPool
    from normlab.experiments import run_experiment

    todo = [n for n in names if not reused[n]]
    costs = recorded_costs(todo)
    pool = SharedPool(execution.jobs, costs)
    callbacks = {}
    for i, name in enumerate(names, 1):  # announced in the user's order; reused ones say so
        callbacks[name] = on_experiment(i, len(names), name, root / name, reused[name]) if on_experiment else None
    order = sorted(todo, key=lambda n: -experiment_seconds(n, *configs[n], costs.get(n, {})))

    def one(name: str, started: threading.Event) -> None:
        exp, cfg = configs[name]
        with pool.holding(name):
            pool.on_first_release(started.set)
            try:
                run_experiment(exp, cfg, root / name, execution.with_pool(pool).with_callbacks(**callbacks[name] or {}),
                               smoke)  # fmt: skip
            finally:
                started.set()

    threads = ThreadPoolExecutor(max_workers=len(order), thread_name_prefix="normlab-experiment")
    futures = []
    try:
        for name in order:
            started = threading.Event()
            futures.append(threads.submit(one, name, started))
            started.wait()  # the next one starts once this one waits for its runs (or has ended)
        wait(futures, return_when=FIRST_EXCEPTION)  # the first error stops the rest
        for fut in futures:
            if fut.done() and fut.exception() is not None:
                raise fut.exception()
        for fut in futures:
            fut.result()
    except BaseException:
        pool.close(cancel=True)
        raise
    finally:
        threads.shutdown(wait=True, cancel_futures=True)
        pool.close()
    from normlab.engine.results import atomic_write_csv

    # when each piece of work ran: engine.costs replays it at other worker counts (docs/speed.md)
    atomic_write_csv(root / "schedule.csv", pd.DataFrame(pool.records))


def cost_model(schedule: str | Path, workers: list = (2, 4, 8, 16, 64), ray_overhead_s: float = 1.0) -> pd.DataFrame:
    """reproduce's wall time replayed from a schedule.csv it wrote (engine/costs.py) at each worker
    count, locally and on Ray (`ray_overhead_s` per task), plus the critical path: a DataFrame of
    workers, local_minutes, ray_minutes, utilization."""
    from normlab.engine.costs import model_table

    path = Path(schedule)
    if not path.is_file():
        raise ConfigError(
            f"{path} is not a file; give the schedule.csv that `normlab reproduce --jobs N` (N > 1) wrote into "
            "its output folder (a checkout holds a measured one in results/bench/)"
        )
    counts = [count_or_none(w) for w in workers]
    for w, n in zip(workers, counts):
        if n is None:
            raise ConfigError(f"{w!r} is not a number of workers >= 1", key="workers")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a schedule.csv ({type(exc).__name__})") from None
    needed = {"kind", "experiment", "batch", "cost", "submitted", "started", "finished"}
    if not needed <= set(table.columns):
        raise ConfigError(f"{path} is not a schedule.csv: it lacks {sorted(needed - set(table.columns))}")
    return model_table(table, tuple(counts), ray_overhead_s)


@dataclass
class RunFolder:
    """A run folder's files as tables: what every analysis and plot reads."""

    path: Path
    config: dict
    manifest: dict
    runs: pd.DataFrame
    metrics: pd.DataFrame
    claims: pd.DataFrame


def load(folder: str | Path) -> RunFolder:
    """Read a run folder (written by run, sweep or reproduce)."""
    from normlab.engine.results import load_tables, read_claims

    t = load_tables(Path(folder))
    claims = read_claims(folder) if (Path(folder) / "claims.csv").is_file() else pd.DataFrame()
    return RunFolder(Path(folder), t.config, t.manifest, t.runs, t.metrics, claims)


def judge(folder: str | Path) -> pd.DataFrame:
    """The claim rows of a run folder, recomputed from its CSVs alone (nothing is written)."""
    from normlab.engine.results import CLAIM_COLUMNS, load_tables

    tables = load_tables(Path(folder))
    exp = _experiment_of(tables.config, folder)
    return pd.DataFrame([c.as_dict() for c in exp.analyze(tables)], columns=CLAIM_COLUMNS)


def plot(folder: str | Path) -> list[Path]:
    """Redraw every figure of a run folder from its CSVs (into FOLDER/plots)."""
    from normlab.engine.results import load_tables

    tables = load_tables(Path(folder))
    return _experiment_of(tables.config, folder).plot(tables, Path(folder) / "plots")


EXPORT_TARGETS = ("tensorboard",)


@dataclass
class Exported:
    """What `export` wrote: the output folder (`tensorboard --logdir FOLDER`) and one event folder per run."""

    folder: Path
    runs: list[Path]


def export(folders: list[str | Path], to: str = "tensorboard", out: Optional[str | Path] = None) -> Exported:
    """A run folder's (or several, or a reproduce output's) metrics and hyperparameters as a tracker's
    files: for `tensorboard`, one event folder per training run under `out` (default: the first
    folder's name + '-tensorboard' beside it), to open with `tensorboard --logdir OUT`. Never
    retrains and never touches the run folders."""
    from normlab.engine.export import export_tensorboard

    if to not in EXPORT_TARGETS:
        raise ConfigError(f"{to!r} is not a target normlab exports to; choose {', '.join(EXPORT_TARGETS)}", key="to")
    paths = [Path(f) for f in folders]
    if not paths:
        raise ConfigError("give at least one run folder to export", key="folders")
    folder = Path(out) if out is not None else paths[0].with_name(paths[0].name + "-tensorboard")
    return Exported(folder, export_tensorboard(paths, folder))


def report(
    folders: list[str | Path], out: Optional[str | Path] = None, fmt: str = "md", overwrite: bool = False
) -> Path:
    """One report (md or html) over run folders or a reproduce output folder. `out` defaults to
    report.FMT in the current folder, or inside the one reproduce folder given. An existing report
    file is refused unless `overwrite` (as `run` refuses an existing folder); its figures
    (claims_at_a_glance.png, claims_forest.png) are written beside it."""
    from normlab.engine.report import build_report, is_collection

    if fmt not in ("md", "html"):
        raise ConfigError(f"{fmt!r} is not allowed; choose md or html", key="format")
    registry = _registry()
    paths = [Path(f) for f in folders]
    collection = any(is_collection(p) for p in paths)
    if out is None:
        out = (paths[0] if len(paths) == 1 and collection else Path(".")) / f"report.{fmt}"
    if Path(out).exists() and not overwrite:
        raise ConfigError(
            f"{out} exists; choose another report file ({{out}}) or replace it ({{overwrite}})", key="out"
        )
    expected = list(registry) if collection else None
    return build_report(paths, Path(out), fmt, expected=expected, titles={n: e.title for n, e in registry.items()})


def _experiment_of(config: dict, folder):
    name = config.get("experiment")
    registry = _registry()
    if name not in registry:
        raise ConfigError(
            f"{folder}/config.yaml names experiment {name!r}, which this normlab does not know "
            f"({', '.join(sorted(registry))})"
        )
    return registry[name]


from normlab import lens  # noqa: E402  (normlab.lens.attach: the lens is part of the library's face)
