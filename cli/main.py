"""normlab: reproduce the claims of Grosse ch. 5 (adaptive methods, normalization, weight decay).

Typer options and printing over the Python API: every command is one call of `normlab.*`, and
cli/output.py prints what it returns. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

import normlab
from normlab import timings

from .options import (
    JsonOpt,
    SeedsOpt,
    SetOpt,
    SmokeOpt,
    complete_device,
    complete_experiment,
    complete_format,
    complete_sweep,
    execution_options,
    parse_grid,
    parse_set,
    user_errors,
)
from .lens import lens_app
from .output import (
    RunBars,
    exit_on_crashes as _exit_on_crashes,
    chapter_table,
    experiments_table,
    print_outcome,
    records as _records,
    rows_table,
    ui,
    verdicts_table,
    warn as _warn,
)


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


@app.command("list")
@user_errors
def list_cmd(
    as_json: bool = JsonOpt,
    chapter: bool = typer.Option(
        False,
        "--chapter",
        help="List the chapter's testable statements instead: where each is, how it can be "
        "tested, the claim rows that test it, and how well they cover it.",
    ),
) -> None:
    """List the experiments, the claims each tests and their default configs (the file names; the folder
    they are in below the table, the full paths with --plain or --json).

    `normlab list --chapter` prints the chapter map: every testable statement, by section."""
    if chapter:
        statements = normlab.chapter_map()
        if as_json:
            ui.emit({"headline": normlab.chapter_headline(), "statements": _records(statements)})
        else:
            ui.table(chapter_table(statements))
            ui.console.print(normlab.chapter_headline())
        return
    if as_json:
        table = normlab.list_experiments().assign(config=lambda d: d["config"].astype(str))
        ui.emit({"experiments": _records(table), "sweeps": {n: str(p) for n, p in normlab.list_sweeps().items()}})
        return
    # a terminal gets the config's file name (a wheel's full path breaks mid-word in 80 columns); --plain and
    # --json, for scripts, the full path
    shown = (lambda p: str(p)) if ui.plain else (lambda p: Path(p).name)  # noqa: E731
    ui.table(experiments_table(normlab.list_experiments(), shown))
    sweeps = normlab.list_sweeps()
    if sweeps:
        ui.console.print("sweeps (`normlab sweep NAME`): " + ", ".join(f"{n} ({shown(p)})" for n, p in sweeps.items()))
    if not ui.plain:
        folder = Path(normlab.list_experiments()["config"].iloc[0]).parent
        ui.console.print(f"configs in {folder} (`normlab validate NAME --print` shows one resolved)")


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
@execution_options
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
    as_json: bool = JsonOpt,
    execution: normlab.Execution = None,
) -> None:
    """Run one experiment: train every arm x seed, write CSVs, judge the claims, draw the figures.

    Examples: `normlab run baselines --smoke`, `normlab run baselines --seeds 5 --jobs 2`,
    `normlab run baselines --set run.train.steps=4000`.
    """
    plan = normlab.plan(experiment, config, parse_set(sets), seeds, smoke, out, execution)
    _warn(plan.notes)
    if execution.device is not None and not plan.tasks:
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
    print_outcome(outcome, {"experiment": plan.name}, folder, "arm", as_json)


@app.command()
@user_errors
@execution_options
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
        "experiment it runs every arm at every point (OUT/POINT, claims per point); on a sweep file it sets that axis.",
    ),
    sets: List[str] = SetOpt,
    seeds: Optional[int] = SeedsOpt,
    smoke: bool = SmokeOpt,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Sweep folder (default: results/sweeps/NAME, or NAME-smoke)."
    ),
    as_json: bool = JsonOpt,
    execution: normlab.Execution = None,
) -> None:
    """Run a grid of runs (axes x seeds) and analyze it like `run`. Resumable.

    A sweep file's axes are the experiment's settings: its grid points replace the experiment's arms.
    An ad-hoc `--grid` over an experiment instead runs every arm at every grid point (arms x points x
    seeds), each point a run folder of its own (OUT/POINT) whose claims are judged there; a grid key
    that an arm sets itself is refused. Rerunning the same command skips the cells that already
    finished (keyed by a hash of each cell's resolved config and seed) and reruns failed ones;
    Ctrl-C loses only the runs in flight. `--set` here overrides the sweep file, e.g.
    `--set 'axes.optim.lr=[0.1, 1.0]'`, or with --grid the experiment's config.
    """
    plan = normlab.plan_sweep(name, parse_set(sets), seeds, smoke, out, execution, parse_grid(grid))
    _warn(plan.notes)
    with ui.bars(18) as bars:
        overall = bars.add_task("cells", total=0)

        if plan.points:  # an ad-hoc grid: every arm at every point, a run folder per point
            ui.err.print(f"sweep {plan.sweep.sweep} ({plan.name}): {len(plan.points)} grid points, each the whole "
                         f"experiment ({len(plan.tasks) // len(plan.points)} runs) -> {plan.folder}/POINT")  # fmt: skip

        def on_start(todo, skipped) -> None:
            where = "" if plan.points else f"sweep {plan.sweep.sweep} ({plan.name}): "
            ui.err.print(
                f"{'  ' if plan.points else ''}{where}{len(todo) + skipped} cells, {skipped} already finished, "
                f"{len(todo)} to run on {execution.workers(len(todo))}" + ("" if plan.points else f" -> {plan.folder}")
            )
            task = bars.tasks[overall]
            bars.update(overall, total=(task.total or 0) + len(todo) + skipped, completed=task.completed + skipped)

        def on_cell(res) -> None:
            bars.advance(overall)
            if res.status != "ok":
                ui.err.print(f"  {res.run_id}: {res.status}")

        outcome = normlab.sweep(plan, execution=execution.with_callbacks(on_start=on_start, on_result=on_cell))
    doc = {"sweep": plan.sweep.sweep, "experiment": plan.name, **({"points": list(plan.points)} if plan.points else {})}
    print_outcome(outcome, doc, plan.folder, "grid point" if plan.points else "cell", as_json)


@app.command()
@user_errors
@execution_options
def reproduce(
    smoke: bool = SmokeOpt,
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output folder (default: results/reproduce, or results/reproduce-smoke)."
    ),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated experiments, e.g. `knockout,eff_lr`."),
    as_json: bool = JsonOpt,
    execution: normlab.Execution = None,
) -> None:
    """Run every experiment's default config, then write the combined report (md and html).

    Experiments already finished in the output folder are reused and interrupted ones resume, so
    running the same command again continues where it stopped. With more than one worker (the
    default: every core) the experiments run side by side in one pool, costliest work first, with
    the files of running them one by one; OUT/schedule.csv then records what ran when, and
    `normlab cost OUT/schedule.csv` says how long the same work takes on more cores or on Ray.
    """
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None  # checked by the API
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
    ui.table(verdicts_table(result.claims))
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
        None, "--out", "-o", help="Output folder (default: RUN_DIR-tensorboard beside it); refused if it exists."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder (refused otherwise)."),
    as_json: bool = JsonOpt,
) -> None:
    """Export runs to a tracker: one TensorBoard event folder per training run, holding every metric
    series at its step and the run's hyperparameters and final metrics (HParams tab).

    Example: `normlab export results/baselines/default --to tensorboard --out tb`, then
    `tensorboard --logdir tb`. Needs the tensorboard package (`pip install 'normlab[export]'`).
    """
    done = normlab.export(list(run_dirs), to, out, overwrite)
    if as_json:
        ui.emit({"folder": str(done.folder), "to": to, "runs": [str(p) for p in done.runs]})
        return
    ui.console.print(
        f"wrote {len(done.runs)} TensorBoard run folders under {done.folder}; view with: "
        f"tensorboard --logdir {done.folder}"
    )


@app.command()
@user_errors
def judge(
    run_dir: Path = typer.Argument(..., help="A run folder written by `normlab run`."),
    write: bool = typer.Option(
        False, "--write", help="Replace its claims.csv, figures and report.md; the manifest records this commit."
    ),
    current_analysis: bool = typer.Option(
        False,
        "--current-analysis",
        help="Judge with the analysis: section (thresholds) of the experiment's shipped config instead of the "
        "folder's own, e.g. after a threshold was renamed; with --write the folder's config.yaml takes it.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Judge a run folder's claims again from its CSVs by this version's rules (no training).

    Without --write it only prints the rows; with --write the folder's verdicts are replaced and its
    manifest names the commit that judged them beside the one that trained the runs. Example:
    `normlab judge results/old/kfac --write --current-analysis`."""
    claims = normlab.judge(run_dir, write=write, current_analysis=current_analysis)
    if as_json:
        ui.emit({"folder": str(run_dir), "written": write, "claims": _records(claims)})
    ui.claims(claims)
    if write:
        ui.console.print(f"wrote {run_dir / 'claims.csv'}, {run_dir / 'report.md'} and the figures")


@app.command()
@user_errors
def plot(
    run_dir: Path = typer.Argument(..., help="A run folder written by `normlab run`."), as_json: bool = JsonOpt
) -> None:
    """Redraw every figure of a run folder from its CSVs alone (no training)."""
    paths = normlab.plot(run_dir)
    if as_json:
        ui.emit({"folder": str(run_dir), "plots": [str(p) for p in paths]})
    for p in paths:
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
    lens_model: str = typer.Option(
        "mobilenet_v3_small",
        "--lens-model",
        metavar="[mobilenet_v3_small|resnet18|none]",
        help="The real network (torchvision, 32x32 images) the lens's overhead is measured on beside the MLP.",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Engine throughput vs a plain PyTorch loop, probe cost, process-pool scaling, and batched ensembles,
    each figure beside its target, marked met or missed (a benchmark: it exits 0 either way)."""
    model = None if lens_model == "none" else lens_model
    res = normlab.bench(steps, repeats, probe_every, workers, ensemble_steps, device, ui.console.print, model)
    columns = ("measure", "value", "target", "met")
    if as_json:
        ui.emit({"rows": [dict(zip(columns, row)) for row in res.rows()]})
        return
    ui.table(rows_table("normlab bench (medians over interleaved repeats)", columns, res.rows()))


@app.command()
@user_errors
def cost(
    schedule: Optional[Path] = typer.Argument(
        None,
        help="A schedule.csv that `normlab reproduce --jobs N` (N > 1) wrote into its output folder "
        "(default: the reference reproduction's, measured on 2 cores and shipped with normlab).",
        show_default=False,
    ),
    workers: str = typer.Option("2,4,8,16,64", "--workers", help="Comma-separated worker counts to model."),
    ray_overhead: float = typer.Option(1.0, "--ray-overhead", help="Seconds a Ray cluster adds per task."),
    as_json: bool = JsonOpt,
) -> None:
    """How long that reproduction would take on more (or fewer) cores of the same speed, locally and on a
    Ray cluster, from its recorded schedule; the last row is the critical path, the bound for any cluster."""
    table = normlab.cost_model(schedule, [w.strip() for w in workers.split(",") if w.strip()], ray_overhead)
    lacks, source = table.attrs.get("lacks", []), table.attrs.get("schedule", str(schedule))
    if lacks:
        _warn([f"{source} has no work of {', '.join(lacks)} (added after it was measured): their time is not in "
               "these figures; `normlab reproduce --jobs N` writes a schedule that has it"])  # fmt: skip
    if as_json:
        ui.emit({"schedule": source, "lacks": lacks, "rows": _records(table)})
        return
    rows = [(str(r.workers), f"{r.local_minutes:.1f}", f"{r.ray_minutes:.1f}",
             "" if r.utilization != r.utilization else f"{r.utilization:.0%}") for r in table.itertuples()]  # fmt: skip
    ui.table(rows_table(f"reproduce's wall time, replayed from {source}",
                        ("workers", "local (min)", "Ray (min)", "workers busy"), rows))  # fmt: skip


app.add_typer(lens_app, name="lens")


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
