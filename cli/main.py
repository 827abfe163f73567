"""normlab: reproduce the claims of Grosse ch. 5 (adaptive methods, normalization, weight decay).

Typer options and printing over the Python API: every command is one call of `normlab.*`, and
cli/output.py prints what it returns. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
import typer.core
from rich.markup import escape
from rich.table import Table

import yaml

import normlab
from normlab import timings
from normlab import ConfigError, NormlabError

from .output import COLORS, RunBars, finals_table, ui


def _flags_without_a_type() -> None:
    """Typer's help labels on/off flags `<bool>`, as if they took a value; show them bare, as flags."""
    option = getattr(typer.core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if original is None or getattr(original, "_normlab", False):
        return

    def display_type_rich(self, ctx):
        return "" if (getattr(self, "is_flag", False) and self.metavar is None) else original(self, ctx)

    display_type_rich._normlab = True
    option.display_type_rich = display_type_rich


_flags_without_a_type()

app = typer.Typer(
    name="normlab",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    help="Reproduce, with measured and regenerable results, the claims of Grosse ch. 5 on adaptive "
    "gradient methods, normalization layers and weight decay.\n\n"
    "Start with `normlab list`. `normlab reproduce --smoke` runs every experiment at tiny settings "
    f"({timings.smoke_text()}); `normlab reproduce` runs them for real ({timings.reproduce_text()}) and "
    "writes results/reproduce/report.md; `normlab run EXPERIMENT` runs one.",
)


def _show_version(value: bool) -> None:
    if value:
        import normlab

        ui.console.print(f"normlab {normlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
    plain: bool = typer.Option(
        False,
        "--plain",
        callback=ui.set_plain,
        is_eager=True,
        help="For pipes and scripts: tables as tab-separated lines, no colours, no wrapping, no progress bars.",
    ),
) -> None:
    """Reproduce the claims of Grosse ch. 5 (see `normlab list`)."""


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=value` items as dotted overrides; values are read as YAML scalars and lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set run.train.steps=500")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
    return out


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid run.optim.lr=0.01,0.1` items as {key: [values]}, each value read as YAML."""
    out: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid run.optim.lr=0.01,0.1")
        try:
            out[key.strip()] = [yaml.safe_load(v) for v in text.split(",")]
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {item!r}: a value is not valid YAML ({exc.problem})") from None
    return out


# The engine and the API speak of config keys and settings; on the command line the same keys are
# these flags (engine/errors.py renders an error's key and its {set:KEY=VALUE} fixes with them).
FLAGS = {
    "run.train.device": "--device",
    "overrides.run.train.device": "--device",
    "device": "--device",
    "seeds": "--seeds",
    "jobs": "--jobs",
    "backend": "--backend",
    "ensemble": "--ensemble",
    "out": "--out",
    "overwrite": "--overwrite",
    "only": "--only",
    "format": "--format",
    "config": "--config",
    "grid": "--grid",
    "to": "--to",
    "steps": "--steps",
    "repeats": "--repeats",
}


def user_errors(fn: Callable) -> Callable:
    """Turn NormlabError into one red line and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NormlabError as exc:
            message = escape(exc.text(FLAGS))  # brackets such as '.[ray]' are text, not markup
            ui.err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            ui.err.print("interrupted: finished runs are kept; the same command resumes")
            raise typer.Exit(130)

    return wrapper


def _exit_on_crashes(crashed: list[tuple[str, str]], folder: Path, total: Optional[int] = None) -> None:
    """A run that raised is an error (a diverged one is data): the folder is complete, the command
    says which run crashed and where the tracebacks are, and exits 1 so that a CI job fails."""
    if crashed:
        run_id, message = crashed[0]
        ui.err.print(
            f"[red]error:[/red] {len(crashed)}{f' of {total}' if total else ''} run(s) crashed; first: {run_id}: "
            f"{escape(message)}; "
            f"tracebacks in {folder}/crashes.log",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _warn(notes: list[str]) -> None:
    for note in notes:
        ui.err.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def _records(df) -> list[dict]:
    """A table's rows as JSON objects (NaN as null)."""
    import json

    return json.loads(df.to_json(orient="records")) if len(df) else []


def _runs_doc(runs) -> list[dict]:
    cols = [c for c in ("run_id", "arm", "seed", "status", "steps_done", "error") if c in runs]
    return _records(runs[cols])


def _execution(jobs: Optional[int], backend: str, ensemble: str, device: Optional[str], **callbacks):
    """The command's options as one checked normlab.Execution (jobs: every core by default)."""
    return normlab.Execution(jobs=jobs, backend=backend, ensemble=ensemble, device=device, **callbacks)


def _completer(choices) -> Callable[[str], list[str]]:
    """Tab completion (`normlab --install-completion`) of a fixed set of choices, or of a function's."""

    def complete(incomplete: str) -> list[str]:
        return [c for c in (choices() if callable(choices) else choices) if c.startswith(incomplete)]

    return complete


complete_experiment = _completer(lambda: sorted(normlab.list_experiments()["experiment"]))
complete_sweep = _completer(lambda: list(normlab.list_sweeps()))
complete_device = _completer(["cpu", "cuda", "auto"])
complete_backend = _completer(["local", "ray"])
complete_ensemble = _completer(["auto", "off", "4", "8", "16", "32"])
complete_format = _completer(["md", "html"])


SetOpt = typer.Option(
    [],
    "--set",
    "-s",
    metavar="KEY=VALUE",
    help="Override a config value by dotted key, e.g. `--set run.optim.lr=0.05`. Repeatable.",
)
SeedsOpt = typer.Option(None, "--seeds", help="Seeds per arm (overrides the config's `seeds`).")
SmokeOpt = typer.Option(
    False, "--smoke", metavar="", help="Apply the config's `smoke:` block: tiny, seconds-long, for CI."
)
JobsOpt = typer.Option(None, "--jobs", "-j", help="Parallel one-thread workers (default: number of cores).")
BackendOpt = typer.Option(
    "local",
    "--backend",
    metavar="[local|ray]",
    autocompletion=complete_backend,
    help="local (process pool, --jobs) or ray (one Ray task per run; a cluster via RAY_ADDRESS; needs the `ray` "
    "extra).",
)
EnsembleOpt = typer.Option(
    "auto",
    "--ensemble",
    metavar="[auto|off|N]",
    autocompletion=complete_ensemble,
    help="Train compatible runs (MLP or 1-D CNN, same model and optimizer, differing in seed, lr, momentum, betas, "
    "eps, decay) together as one batched model: auto stacks up to 16 runs, N up to N, off trains every run alone. "
    "Numbers agree with the single-run path to float rounding.",
)
JsonOpt = typer.Option(
    False,
    "--json",
    metavar="",
    help="Print one JSON document on stdout (the folder, each run's status, the claim rows) and nothing else there; "
    "messages go to stderr. For scripts: no table to parse.",
)
DeviceOpt = typer.Option(
    None,
    "--device",
    metavar="[cpu|cuda|auto]",
    autocompletion=complete_device,
    help="Where to train (default: the config's, cpu; auto = cuda if present).",
)


@app.command("list")
@user_errors
def list_cmd(as_json: bool = JsonOpt) -> None:
    """List the experiments, the claims each tests and their default configs."""
    if as_json:
        table = normlab.list_experiments().assign(config=lambda d: d["config"].astype(str))
        ui.emit({"experiments": _records(table), "sweeps": {n: str(p) for n, p in normlab.list_sweeps().items()}})
        return
    table = Table(title="normlab experiments")
    table.add_column("experiment", no_wrap=True)
    table.add_column("claims", no_wrap=True)
    table.add_column("config", overflow="fold")  # never cut a path a user will copy
    table.add_column("what it asks")
    here = Path.cwd()
    shown = lambda p: str(p.relative_to(here) if Path(p).is_relative_to(here) else p)  # noqa: E731
    for row in normlab.list_experiments().sort_values("experiment").itertuples():
        claims = ", ".join(dict.fromkeys(c.split("-")[0] for c in row.claims))
        table.add_row(row.experiment, claims, shown(Path(row.config)), row.title)
    ui.table(table)
    sweeps = normlab.list_sweeps()
    if sweeps:
        ui.console.print("sweeps (`normlab sweep NAME`): " + ", ".join(f"{n} ({shown(p)})" for n, p in sweeps.items()))


@app.command()
@user_errors
def validate(
    config: Path = typer.Argument(
        ..., help="A YAML config file, or an experiment name.", autocompletion=complete_experiment
    ),
    sets: List[str] = SetOpt,
    smoke: bool = SmokeOpt,
    show: bool = typer.Option(
        False, "--print", help="Also print the fully resolved config (defaults, --set and --smoke applied) as YAML."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Check a config or sweep file (keys, types, ranges, every arm) without running anything.

    `normlab validate kfac --smoke --print` shows exactly the config `normlab run kfac --smoke`
    would run, every default filled in.
    """
    checked = normlab.validate(str(config), parse_set(sets), smoke)
    if as_json:
        reach = {k: {"reached": h, "runs": t} for k, (h, t) in checked.plan.reach.items()}
        doc = {"config": str(config), "experiment": checked.plan.name, "runs": checked.runs, "arms": checked.arms}
        ui.emit({**doc, "reach": reach, "warnings": checked.plan.notes, **({"resolved": checked.yaml} if show else {})})
        return
    if show:
        print(checked.yaml, end="")  # plain stdout: the YAML is meant to be piped or saved
    message = f"[green]ok[/green]: {config} is a valid `{checked.plan.name}` config: {checked.summary}"
    shown = ui.err if show else ui.console
    shown.print(message)
    for key, (hit, total) in checked.plan.reach.items():
        shown.print(f"  --set {key}: reaches {hit} of {total} runs")
    _warn(checked.plan.notes)


@app.command()
@user_errors
def run(
    experiment: str = typer.Argument(
        ..., help="Experiment name (see `normlab list`) or a config file.", autocompletion=complete_experiment
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config file (default: configs/EXPERIMENT.yaml)."
    ),
    sets: List[str] = SetOpt,
    seeds: Optional[int] = SeedsOpt,
    smoke: bool = SmokeOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: results/EXPERIMENT/TIMESTAMP)."),
    jobs: Optional[int] = JobsOpt,
    device: Optional[str] = DeviceOpt,
    backend: str = BackendOpt,
    ensemble: str = EnsembleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run one experiment: train every arm x seed, write CSVs, judge the claims, draw the figures.

    Examples: `normlab run baselines --smoke`, `normlab run baselines --seeds 5 --jobs 2`,
    `normlab run baselines --set run.train.steps=4000`.
    """
    if as_json:
        ui.set_json()
    execution = _execution(jobs, backend, ensemble, device)
    plan = normlab.plan(experiment, config, parse_set(sets), seeds, smoke, out, execution)
    _warn(plan.notes)
    if device is not None and not plan.experiment.tasks(plan.config):
        ui.err.print(f"{plan.name}: trains no runs; its tables are computed on the CPU whatever --device says")
    folder = plan.folder
    with ui.bars(18, " steps") as bars:
        runs = RunBars(bars, plan.later_steps)

        def on_start(tasks, reused: int) -> None:
            ui.err.print(
                f"{plan.name}: {len(tasks)} runs on {execution.workers(len(tasks))}"
                + (f" ({reused} finished runs reused from {folder}.partial)" if reused else "")
                + f" -> {folder}"
            )
            runs.start(sum(t.config.train.steps for t in tasks))

        try:
            outcome = normlab.run(plan, execution=execution.with_callbacks(progress=runs.progress, on_start=on_start))
        except KeyboardInterrupt:
            ui.err.print(
                f"interrupted: finished runs are kept in {folder}.partial/; run the same "
                f"command with --out {folder} to resume"
            )
            raise typer.Exit(130)
    if len(outcome.runs):  # an experiment of tables alone trains no runs
        ui.table(finals_table(outcome.runs, "Final metrics per arm (mean over finished runs)"))
    ui.claims(outcome.claims)
    bad = outcome.runs[outcome.runs["status"] != "ok"]
    if len(bad):
        ui.console.print(
            f"[yellow]{len(bad)} run(s) did not finish normally[/yellow]: "
            + ", ".join(f"{r.run_id} ({r.status})" for r in bad.itertuples())
        )
    ui.console.print(f"files: {folder}/ (runs.csv, metrics.csv, claims.csv, report.md, plots/)")
    if as_json:
        ui.emit({"experiment": plan.name, "folder": str(folder), "runs": _runs_doc(outcome.runs),
                 "claims": _records(outcome.claims), "crashed": [r for r, _ in outcome.crashes]})  # fmt: skip
    _exit_on_crashes(outcome.crashes, folder, len(outcome.runs))


@app.command()
@user_errors
def sweep(
    name: str = typer.Argument(
        ...,
        help="A sweep in configs/sweeps/ (e.g. `wd`), a sweep YAML file, or an experiment with --grid.",
        autocompletion=complete_sweep,
    ),
    grid: List[str] = typer.Option(
        [],
        "--grid",
        "-g",
        metavar="KEY=V1,V2,...",
        help="An axis of the grid, e.g. `--grid run.optim.lr=0.01,0.1` (repeatable: the grid is the product). On an "
        "experiment it sweeps that experiment's own config; on a sweep file it sets that axis.",
    ),
    sets: List[str] = SetOpt,
    seeds: Optional[int] = SeedsOpt,
    smoke: bool = SmokeOpt,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Sweep folder (default: results/sweeps/NAME, or NAME-smoke)."
    ),
    jobs: Optional[int] = JobsOpt,
    device: Optional[str] = DeviceOpt,
    backend: str = BackendOpt,
    ensemble: str = EnsembleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a grid of runs (axes x seeds) and analyze it like `run`. Resumable.

    Rerunning the same command skips the cells that already finished (keyed by a hash of each
    cell's resolved config and seed) and reruns failed ones; Ctrl-C loses only the runs in
    flight. `--set` here overrides the sweep file, e.g. `--set 'axes.optim.lr=[0.1, 1.0]'`.
    """
    if as_json:
        ui.set_json()
    execution = _execution(jobs, backend, ensemble, device)
    plan = normlab.plan_sweep(name, parse_set(sets), seeds, smoke, out, execution, parse_grid(grid))
    _warn(plan.notes)
    with ui.bars(18) as bars:
        overall = bars.add_task("cells", total=0)

        def on_start(todo, skipped) -> None:
            ui.err.print(
                f"sweep {plan.sweep.sweep} ({plan.name}): {len(todo) + skipped} cells, {skipped} already "
                f"finished, {len(todo)} to run on {execution.workers(len(todo))} -> {plan.folder}"
            )
            task = bars.tasks[overall]
            bars.update(overall, total=(task.total or 0) + len(todo) + skipped, completed=task.completed + skipped)

        def on_cell(res) -> None:
            bars.advance(overall)
            if res.status != "ok":
                ui.err.print(f"  {res.run_id}: {res.status}")

        outcome = normlab.sweep(plan, execution=execution.with_callbacks(on_start=on_start, on_result=on_cell))
    ui.table(finals_table(outcome.runs, "Final metrics per cell (mean over finished runs)"))
    ui.claims(outcome.claims)
    ui.console.print(f"files: {plan.folder}/ (runs.csv, metrics.csv, claims.csv, report.md, plots/, cells/)")
    if as_json:
        ui.emit({"sweep": plan.sweep.sweep, "experiment": plan.name, "folder": str(plan.folder),
                 "runs": _runs_doc(outcome.runs), "claims": _records(outcome.claims),
                 "crashed": [r for r, _ in outcome.crashes]})  # fmt: skip
    _exit_on_crashes(outcome.crashes, plan.folder, len(outcome.runs))


@app.command()
@user_errors
def reproduce(
    smoke: bool = SmokeOpt,
    jobs: Optional[int] = JobsOpt,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder (default: results/reproduce, or results/reproduce-smoke)."
    ),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated experiments, e.g. `knockout,eff_lr`."),
    device: Optional[str] = DeviceOpt,
    backend: str = BackendOpt,
    ensemble: str = EnsembleOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run every experiment's default config, then write the combined report (md and html).

    Experiments already finished in the output folder are reused and interrupted ones resume, so
    running the same command again continues where it stopped. With more than one worker (the
    default: every core) the experiments run side by side in one pool, costliest work first, with
    the files of running them one by one; OUT/schedule.csv then records what ran when, and
    `normlab cost OUT/schedule.csv` says how long the same work takes on more cores or on Ray.
    """
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None  # checked by the API
    if as_json:
        ui.set_json()
    execution = _execution(jobs, backend, ensemble, device)
    with ui.bars(24, transient=True) as bars:
        folders: list[Path] = []

        def on_experiment(i: int, n: int, name: str, folder: Path, reused: bool) -> dict:
            """A line per experiment, and a bar of its own (experiments may run side by side)."""
            folders.append(folder)
            bars.console.print(f"[{i}/{n}] {name}" + (f": already finished in {folder}, reused" if reused else ""))
            if reused:
                return {}
            task = bars.add_task(name, total=0)
            total = [0]

            def on_start(tasks, _reused) -> None:
                total[0] += len(tasks)
                bars.update(task, total=total[0])

            return {"on_start": on_start, "on_result": lambda _res: bars.advance(task)}

        try:
            result = normlab.reproduce(out=out, smoke=smoke, only=names, execution=execution,
                                       on_experiment=on_experiment)  # fmt: skip
        except KeyboardInterrupt:
            where = f"{folders[-1].parent}/<experiment>.partial" if folders else "the output folder"
            ui.err.print(f"interrupted: run the same command again to continue ({where} keeps the finished runs)")
            raise typer.Exit(130)
    table = Table(title="Claims")
    for col in ("experiment", "claim", "verdict"):
        table.add_column(col)
    for n, claims in result.claims.items():
        for _, r in claims.iterrows():
            table.add_row(n, str(r["claim_id"]), f"[{COLORS.get(r['verdict'], 'white')}]{r['verdict']}[/]")
    ui.table(table)
    ui.console.print(f"report: {result.reports[0]} and {result.reports[1]}")
    if as_json:
        experiments = {n: {"folder": str(result.folders[n]), "claims": _records(c)} for n, c in result.claims.items()}
        crashed = {n: [r for r, _ in c] for n, c in result.crashes.items()}
        ui.emit({"root": str(result.root), "reports": [str(p) for p in result.reports], "experiments": experiments,
                 "crashed": crashed})  # fmt: skip
    for name, crashed in result.crashes.items():
        ui.err.print(f"{name}: {len(crashed)} run(s) crashed; tracebacks in {result.folders[name]}/crashes.log")
    if result.crashes:
        first = next(iter(result.crashes))
        _exit_on_crashes(result.crashes[first], result.folders[first])


@app.command()
@user_errors
def report(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders, or a `normlab reproduce` output folder."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Report file (default: report.md, or REPRODUCE_DIR/report.md)."
    ),
    fmt: str = typer.Option(
        "md",
        "--format",
        "-f",
        metavar="[md|html]",
        autocompletion=complete_format,
        help="md (for GitHub) or html (one self-contained file).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report file (refused otherwise)."),
    as_json: bool = JsonOpt,
) -> None:
    """Write one report from run folders' CSVs, manifests and figures (never retrains)."""
    path = normlab.report(list(run_dirs), out, fmt, overwrite)
    if as_json:
        ui.set_json()
        ui.emit({"report": str(path), "format": fmt, "folders": [str(p) for p in run_dirs]})
    else:
        ui.console.print(f"wrote {path}")


def complete_export_target(incomplete: str) -> list[str]:
    return [t for t in normlab.EXPORT_TARGETS if t.startswith(incomplete)]


@app.command()
@user_errors
def export(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders, or a `normlab reproduce` output folder."),
    to: str = typer.Option(
        "tensorboard",
        "--to",
        metavar="[tensorboard]",
        autocompletion=complete_export_target,
        help="The tracker's format.",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder, which must not exist (default: RUN_DIR-tensorboard beside it)."
    ),
) -> None:
    """Export runs to a tracker: one TensorBoard event folder per training run, holding every metric
    series at its step and the run's hyperparameters and final metrics (HParams tab).

    Example: `normlab export results/baselines/default --to tensorboard --out tb`, then
    `tensorboard --logdir tb`. Needs the tensorboard package (`pip install 'normlab[export]'`).
    """
    done = normlab.export(list(run_dirs), to, out)
    ui.console.print(
        f"wrote {len(done.runs)} TensorBoard run folders under {done.folder}; view with: "
        f"tensorboard --logdir {done.folder}"
    )


@app.command()
@user_errors
def plot(run_dir: Path = typer.Argument(..., help="A run folder written by `normlab run`.")) -> None:
    """Redraw every figure of a run folder from its CSVs alone (no training)."""
    for p in normlab.plot(run_dir):
        ui.console.print(f"wrote {p}")


@app.command()
@user_errors
def bench(
    steps: int = typer.Option(2000, help="Steps per timed trial."),
    repeats: int = typer.Option(5, help="Interleaved trials of each loop."),
    probe_every: Optional[int] = typer.Option(None, help="Probe interval (default: the engine's default)."),
    workers: Optional[int] = typer.Option(None, help="Pool size for the scaling test (default: cores)."),
    ensemble_steps: int = typer.Option(300, help="Steps per batched-ensemble trial (0 = skip the ensemble rows)."),
    device: str = typer.Option(
        "cpu",
        "--device",
        metavar="[cpu|cuda|auto]",
        autocompletion=complete_device,
        help="Where every loop trains (auto = cuda if present).",
    ),
) -> None:
    """Engine throughput vs a plain PyTorch loop, probe cost, process-pool scaling, and batched ensembles."""
    res = normlab.bench(steps, repeats, probe_every, workers, ensemble_steps, device, log=ui.console.print)
    table = Table(title="normlab bench (medians over interleaved repeats)")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    for row in res.rows():
        table.add_row(*row)
    ui.table(table)


@app.command()
@user_errors
def cost(
    schedule: Path = typer.Argument(
        Path("results/reproduce/schedule.csv"),
        help="A schedule.csv that `normlab reproduce --jobs N` (N > 1) wrote into its output folder.",
    ),
    workers: str = typer.Option("2,4,8,16,64", "--workers", help="Comma-separated worker counts to model."),
    ray_overhead: float = typer.Option(1.0, "--ray-overhead", help="Seconds a Ray cluster adds per task."),
) -> None:
    """How long that reproduction would take on more (or fewer) cores of the same speed, locally and on a
    Ray cluster, from its recorded schedule; the last row is the critical path, the bound for any cluster."""
    table = normlab.cost_model(schedule, [w.strip() for w in workers.split(",") if w.strip()], ray_overhead)
    out = Table(title=f"reproduce's wall time, replayed from {schedule}")
    for col in ("workers", "local (min)", "Ray (min)", "workers busy"):
        out.add_column(col)
    for r in table.itertuples():
        busy = "" if r.utilization != r.utilization else f"{r.utilization:.0%}"
        out.add_row(str(r.workers), f"{r.local_minutes:.1f}", f"{r.ray_minutes:.1f}", busy)
    ui.table(out)


lens_app = typer.Typer(
    help="The chapter's instruments on your own training loop: attach in Python with "
    "`lens = normlab.lens.attach(model, optimizer, every=50, out='lens-run')`, train, `lens.close()`, then read it "
    "here.",
    no_args_is_help=True,
)
app.add_typer(lens_app, name="lens")


@lens_app.command("report")
@user_errors
def lens_report(
    folder: Path = typer.Argument(..., help="The folder given to normlab.lens.attach(out=...), holding lens.csv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: the folder itself)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report.md/report.html."),
) -> None:
    """Write report.md, report.html (self-contained) and lens.png from a lens folder: per layer its
    scale invariance, ||w||^2, effective learning rate and angle per step, and the flags (implicit
    learning-rate decay, weight-decay equilibrium, Adam's epsilon, effective-LR spread)."""
    for p in normlab.lens.report(folder, out, overwrite):
        ui.console.print(f"wrote {p}")


def main() -> None:
    # --plain is an option of the program, but users write it after the subcommand too
    args = sys.argv[1:]
    if "--plain" in args[1:] and args[0] != "--plain" and "--" not in args[: args.index("--plain")]:
        sys.argv[1:] = ["--plain"] + [a for a in args if a != "--plain"]
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
