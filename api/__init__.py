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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from normlab.engine import metrics  # the metric names and runs.csv columns (metrics.final("test_acc"))
from normlab.engine.claims import VERDICT_COLORS
from normlab.engine.errors import ConfigError, NormlabError
from normlab.engine.execution import Execution
from normlab.engine.export import EXPORT_TARGETS, Exported
from normlab.engine.runner import Plan

try:
    from importlib.metadata import version as _version

    __version__ = _version("normlab")
except Exception:  # not installed (e.g. run from a source tree)
    __version__ = "unknown"

__all__ = [
    "__version__",
    "ConfigError",
    "EXPORT_TARGETS",
    "VERDICT_COLORS",
    "Execution",
    "Exported",
    "NormlabError",
    "Plan",
    "RunFolder",
    "Validation",
    "bench",
    "chapter_headline",
    "chapter_map",
    "export",
    "judge",
    "lens",
    "list_experiments",
    "list_sweeps",
    "load",
    "metrics",
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


def chapter_map() -> pd.DataFrame:
    """The chapter map: one row per testable statement of the chapter (number, section, lines, what it
    says, how it can be tested, the claim rows that test or show it, its coverage, notes)."""
    from normlab.engine import chapter

    cmap = chapter.load()
    return pd.DataFrame(
        [
            {
                "n": s.n, "section": s.section, "lines": s.lines, "eq": s.eq, "says": s.says, "test": s.test,
                "coverage": s.coverage, "rows": list(s.rows), "shows": list(s.shows), "partly": s.partly,
                "planned": cmap.planned.get(s.pending, ""), "open": s.open, "note": s.note, "why": s.why,
            }
            for s in cmap.statements
        ]
    )  # fmt: skip


def chapter_headline() -> str:
    """One sentence: how many of the chapter's testable statements have a verdict (README opens with it)."""
    from normlab.engine import chapter

    return chapter.load().headline()


def list_experiments() -> pd.DataFrame:
    """The registered experiments: name, title, claim ids, default config."""
    rows = [
        {"experiment": n, "title": e.title, "claims": [c.id for c in e.claims], "config": str(e.default_config)}
        for n, e in _registry().items()
    ]
    return pd.DataFrame(rows)


def list_sweeps() -> dict[str, Path]:
    """The shipped sweeps (`normlab sweep NAME`): name -> sweep file."""
    from normlab.engine.runner import SWEEP_ROOT

    return {p.stem: p for p in sorted(SWEEP_ROOT.glob("*.yaml"))}


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
    from normlab.engine.runner import plan as make_plan

    return make_plan(_registry(), experiment, config, overrides, seeds, smoke, out, execution)


def plan_sweep(
    name_or_path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    smoke: bool = False,
    out: Optional[str | Path] = None,
    execution: Optional[Execution] = None,
    grid: Optional[dict[str, list]] = None,
) -> Plan:
    """Load and check what `sweep` would run: configs/sweeps/NAME.yaml or a sweep file (its grid
    points replace the experiment's arms), or, with `grid` ({"run.optim.lr": [0.01, 0.1]}), an
    experiment run whole at every grid point: every arm, each point a run folder OUT/POINT judged
    there (`Plan.points`), with the same cells, resume and backends. A grid on a sweep file sets
    those axes. A grid key that an arm sets itself is refused."""
    from normlab.engine.runner import plan_sweep as make_plan

    return make_plan(_registry(), name_or_path, overrides, seeds, smoke, out, execution, grid)


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
    from normlab.engine.runner import run_experiment

    execution = execution or Execution()
    if isinstance(experiment, Plan):
        _only_the_plan(overrides, seeds, out, smoke)
    p = experiment if isinstance(experiment, Plan) else plan(experiment, None, overrides, seeds, smoke, out, execution)
    return run_experiment(p, execution)


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
    from normlab.engine.runner import run_sweep

    execution = execution or Execution()
    if isinstance(name_or_path, Plan):
        _only_the_plan(overrides, seeds, out, smoke, grid)
    p = name_or_path
    if not isinstance(p, Plan):
        p = plan_sweep(name_or_path, overrides, seeds, smoke, out, execution, grid)
    return run_sweep(p, execution)


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
    from normlab.engine.runner import config_path

    path = config_path(config, _registry())
    is_sweep = "sweep" in read_yaml(path)
    p = plan_sweep(path, overrides, smoke=smoke) if is_sweep else plan(path, None, overrides, None, smoke)
    return Validation(p, len(p.tasks), {t.arm: t.config.train.steps for t in p.tasks})


def bench(
    steps: int = 2000,
    repeats: int = 5,
    probe_every: Optional[int] = None,
    workers: Optional[int] = None,
    ensemble_steps: int = 300,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    lens_model: Optional[str] = "mobilenet_v3_small",
):
    """Engine throughput against a plain PyTorch loop, probe cost, the lens's cost (on the MLP and
    on `lens_model`, a torchvision network at 32x32, or None), pool scaling and batched ensembles,
    measured side by side; returns a BenchResult (its `rows()` are the table). `log` gets one line
    per trial as it finishes."""
    from normlab.engine.bench import bench as run_bench

    return run_bench(steps, repeats, probe_every, workers, ensemble_steps, device, log, lens_model)


def reproduce(
    out: Optional[str | Path] = None,
    smoke: bool = False,
    only: Optional[list[str]] = None,
    overrides: Optional[dict[str, Any]] = None,
    execution: Optional[Execution] = None,
    on_experiment: Optional[Callable[[int, int, str, Path, bool], Optional[dict]]] = None,
):
    """Run every experiment's default config (or those in `only`) into OUT/<experiment>/, then
    write OUT/report.md and OUT/report.html; returns a Reproduction (root, folders, claims, reports,
    crashes). Finished experiments are reused, interrupted ones resume. With more than one local
    worker the experiments run side by side in one pool of workers (the files are those of running
    them one by one). `on_experiment(i, n, name, folder, reused)` is called for each experiment, in
    order, before it starts; it may return a dict of callbacks (progress, on_start, on_result) for
    that experiment's runs, else the execution's own callbacks get every run's progress."""
    from normlab.engine.runner import reproduce as run_all

    return run_all(_registry(), out, smoke, only, overrides, execution, on_experiment)


def cost_model(
    schedule: Optional[str | Path] = None, workers: list = (2, 4, 8, 16, 64), ray_overhead_s: float = 1.0
) -> pd.DataFrame:
    """reproduce's wall time replayed from a schedule.csv it wrote (engine/costs.py; None: the measured
    reference schedule normlab ships) at each worker count, locally and on Ray (`ray_overhead_s` per
    task), plus the critical path: a DataFrame of workers, local_minutes, ray_minutes, utilization.
    Its attrs["lacks"] names the experiments the schedule has no work of (their time is not in it)."""
    from normlab.engine.costs import model_table_of

    return model_table_of(None if schedule is None else Path(schedule), workers, ray_overhead_s, tuple(_registry()))


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


def judge(folder: str | Path, write: bool = False, current_analysis: bool = False) -> pd.DataFrame:
    """The claim rows of a run folder, recomputed from its CSVs alone by this version's rules.

    With write=True they replace the folder's claims.csv, figures and report.md, and the manifest
    records the commit that judged them (`judged`) beside the one that trained the runs
    (`git_commit`), so a verdict moved by a new rule on old runs says so. current_analysis=True
    judges with the `analysis:` section of the experiment's shipped config instead of the folder's
    own (a threshold renamed or added since the runs); with write=True the folder's config.yaml takes
    that section, and the manifest says so."""
    import yaml

    from normlab.engine import config as C
    from normlab.engine.files import atomic_write_text
    from normlab.engine.results import CLAIM_COLUMNS, load_tables
    from normlab.engine.runner import finish

    folder = Path(folder)
    tables = load_tables(folder)
    exp = _experiment_of(tables.config, folder)
    if not current_analysis:
        try:
            C.from_dict(exp.config_class, tables.config)
        except ConfigError as e:  # a threshold renamed since the runs: say how to judge them anyway
            raise ConfigError(
                f"{folder}/config.yaml: {e}; to judge these runs with the thresholds of {exp.default_config.name}, "
                "pass --current-analysis (current_analysis=True)"
            ) from None
    if current_analysis:
        shipped = yaml.safe_load(Path(exp.default_config).read_text()) or {}
        config = {**tables.config, "analysis": shipped.get("analysis", {})}
        typed = C.from_dict(exp.config_class, config)
        if write:
            atomic_write_text(folder / "config.yaml", C.dump_yaml(typed))
        tables.config = C.to_dict(typed)
    if write:
        return finish(
            exp, folder, rejudged=f"analysis: from {exp.default_config.name}" if current_analysis else True
        ).claims
    return pd.DataFrame([c.as_dict() for c in exp.analyze(tables)], columns=CLAIM_COLUMNS)


def plot(folder: str | Path) -> list[Path]:
    """Redraw every figure of a run folder from its CSVs (into FOLDER/plots)."""
    from normlab.engine.results import load_tables

    tables = load_tables(Path(folder))
    return _experiment_of(tables.config, folder).plot(tables, Path(folder) / "plots")


def export(
    folders: list[str | Path], to: str = "tensorboard", out: Optional[str | Path] = None, overwrite: bool = False
) -> Exported:
    """A run folder's (or several, or a reproduce output's) metrics and hyperparameters as a tracker's
    files: for `tensorboard`, one event folder per training run under `out` (default: the first
    folder's name + '-tensorboard' beside it), to open with `tensorboard --logdir OUT`. Never
    retrains and never touches the run folders. An existing `out` is replaced only with `overwrite`
    (as `report` does)."""
    from normlab.engine.export import export as export_to

    return export_to([Path(f) for f in folders], to, Path(out) if out is not None else None, overwrite)


def report(
    folders: list[str | Path], out: Optional[str | Path] = None, fmt: str = "md", overwrite: bool = False
) -> Path:
    """One report (md or html) over run folders or a reproduce output folder. `out` defaults to
    report.FMT in the current folder, or inside the one reproduce folder given. An existing report
    file is refused unless `overwrite` (as `run` refuses an existing folder); its figures
    (claims_at_a_glance.png, claims_forest.png) are written beside it."""
    from normlab.engine.report import write_report

    titles = {n: e.title for n, e in _registry().items()}
    return write_report([Path(f) for f in folders], out, fmt, overwrite, list(_registry()), titles, _short_names())


def _short_names() -> dict[str, str]:
    """Each claim's (B1, K1, ...) short name, from the experiments that judge it."""
    return {claim: name for e in _registry().values() for claim, name in e.short_names.items()}


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
