"""normlab as a library: the operations of the command line, for notebooks and scripts.

    import normlab
    out = normlab.run("knockout", overrides={"run.train.steps": 300}, seeds=3, out="results/k1-short")
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

from normlab.engine.errors import ConfigError, NormlabError

try:
    from importlib.metadata import version as _version

    __version__ = _version("normlab")
except Exception:  # not installed (e.g. run from a source tree)
    __version__ = "unknown"

__all__ = [
    "__version__",
    "ConfigError",
    "NormlabError",
    "RunFolder",
    "judge",
    "list_experiments",
    "load",
    "plot",
    "report",
    "reproduce",
    "run",
    "sweep",
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
    registry = _registry()
    if str(name_or_path) in registry:
        return registry[str(name_or_path)].default_config
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise ConfigError(
        f"{str(name_or_path)!r} is neither a known experiment ({', '.join(sorted(registry))}) nor a config file"
    )


def _overrides(overrides: Optional[dict[str, Any]], seeds: Optional[int]) -> dict[str, Any]:
    out = dict(overrides or {})
    if seeds is not None:
        if seeds < 1:
            raise ConfigError("seeds: must be at least 1")
        out["seeds"] = seeds
    return out


def run(
    experiment: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    seeds: Optional[int] = None,
    out: Optional[str | Path] = None,
    jobs: int = 1,
    smoke: bool = False,
    backend: str = "local",
    ensemble: int | str = "auto",
):
    """Train every arm x seed of an experiment (a name or a config file), judge, plot, report.

    `overrides` are dotted keys, e.g. {"run.optim.lr": 0.05}. Returns an Outcome (folder, claims,
    runs, plots). `out` defaults to results/<experiment>/<timestamp>; an interrupted run of the
    same call resumes from OUT.partial/."""
    from normlab.engine.results import default_run_dir, results_root
    from normlab.experiments import load_config, run_experiment

    exp, cfg = load_config(_config_path(experiment), _registry(), _overrides(overrides, seeds), smoke)
    folder = Path(out) if out else default_run_dir(results_root(), exp.name, smoke)
    return run_experiment(exp, cfg, folder, jobs=jobs, smoke=smoke, backend=backend, ensemble=ensemble)


def sweep(
    name_or_path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    out: Optional[str | Path] = None,
    jobs: int = 1,
    smoke: bool = False,
    backend: str = "local",
    ensemble: int | str = "auto",
):
    """Run a sweep (configs/sweeps/NAME.yaml or a sweep file) into `out`, resumably; returns an Outcome."""
    from normlab.engine.results import results_root
    from normlab.experiments.sweeps import load_sweep, run_sweep, sweep_path

    exp, cfg, spec = load_sweep(sweep_path(str(name_or_path)), _registry(), dict(overrides or {}), smoke)
    folder = Path(out) if out else results_root() / "sweeps" / (spec.sweep + ("-smoke" if smoke else ""))
    return run_sweep(exp, cfg, spec, folder, jobs=jobs, smoke=smoke, backend=backend, ensemble=ensemble)


@dataclass
class Reproduction:
    """What `reproduce` wrote: the output root, each experiment's folder and claim rows, the reports."""

    root: Path
    folders: dict[str, Path]
    claims: dict[str, pd.DataFrame]
    reports: list[Path]


def reproduce(
    out: Optional[str | Path] = None,
    smoke: bool = False,
    only: Optional[list[str]] = None,
    jobs: int = 1,
    overrides: Optional[dict[str, Any]] = None,
    on_experiment: Optional[Callable[[int, int, str, Path, bool], None]] = None,
    on_start=None,
    on_result=None,
    backend: str = "local",
    ensemble: int | str = "auto",
) -> Reproduction:
    """Run every experiment's default config (or those in `only`) into OUT/<experiment>/, then
    write OUT/report.md and OUT/report.html. Finished experiments are reused, interrupted ones
    resume. `on_experiment(i, n, name, folder, reused)` is called before each experiment;
    `on_start` and `on_result` are passed to every run (progress)."""
    from normlab.engine.config import dump_yaml
    from normlab.engine.executor import check_backend
    from normlab.engine.report import build_report
    from normlab.engine.results import read_claims
    from normlab.experiments import load_config, run_experiment

    check_backend(backend)
    from normlab.engine.executor import resolve_ensemble

    resolve_ensemble(ensemble)  # a bad value stops here, before anything is written
    from normlab.engine.results import results_root

    registry = _registry()
    names = list(only) if only else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"only: {', '.join(unknown)} not known; choose from {', '.join(registry)}")
    root = Path(out) if out else results_root() / ("reproduce-smoke" if smoke else "reproduce")
    configs = {n: load_config(registry[n].default_config, registry, dict(overrides or {}), smoke) for n in names}
    for i, name in enumerate(names, 1):
        exp, cfg = configs[name]
        folder = root / name
        reused = (folder / "claims.csv").is_file()
        if reused and (folder / "config.yaml").read_text() != dump_yaml(cfg):
            raise ConfigError(
                f"{folder} holds {name} results of a different config; remove that folder to rerun it, "
                "or choose another output folder"
            )
        if on_experiment:
            on_experiment(i, len(names), name, folder, reused)
        if not reused:
            run_experiment(
                exp,
                cfg,
                folder,
                jobs=jobs,
                smoke=smoke,
                on_start=on_start,
                on_result=on_result,
                backend=backend,
                ensemble=ensemble,
            )
    titles = {n: e.title for n, e in registry.items()}
    reports = [  # exactly what `normlab report ROOT --format FMT` writes
        build_report([root], root / f"report.{fmt}", fmt, expected=list(registry), titles=titles)
        for fmt in ("md", "html")
    ]
    return Reproduction(root, {n: root / n for n in names}, {n: read_claims(root / n) for n in names}, reports)


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


def report(folders: list[str | Path], out: str | Path, fmt: str = "md") -> Path:
    """One report (md or html) over run folders or a reproduce output folder."""
    from normlab.engine.report import build_report, is_collection

    if fmt not in ("md", "html"):
        raise ConfigError(f"format: {fmt!r} is not allowed; choose md or html")
    registry = _registry()
    paths = [Path(f) for f in folders]
    expected = list(registry) if any(is_collection(p) for p in paths) else None
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
