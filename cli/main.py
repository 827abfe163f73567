"""normlab: reproduce the claims of Grosse ch. 5 (adaptive methods, normalization, weight decay).

Thin layer over `normlab.experiments`: every command parses its options, loads and validates a
config, hands it to an experiment or the engine, and prints. Bad input ends with one line on
stderr and exit code 2.
"""

from __future__ import annotations

import functools
import re
import math
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import yaml

from normlab.engine.config import ConfigError
from normlab.engine.errors import NormlabError


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
    rich_markup_mode="markdown",
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    help="Reproduce, with measured and regenerable results, the claims of Grosse ch. 5 on adaptive "
    "gradient methods, normalization layers and weight decay.\n\n"
    "Start with `normlab list`. `normlab reproduce --smoke` runs every experiment at tiny settings "
    "(about 90 seconds); `normlab reproduce` runs them for real (about 30 minutes on 2 cores) and writes "
    "results/reproduce/report.md; `normlab run EXPERIMENT` runs one.",
)
console = Console()
err_console = Console(stderr=True)
_PLAIN = {"on": False}


def _set_plain(value: bool) -> None:
    """--plain: for pipes and scripts. Tables become tab-separated lines, nothing is wrapped or
    coloured, and no progress bars are drawn."""
    global console, err_console
    _PLAIN["on"] = bool(value)
    if value:
        console = Console(no_color=True, highlight=False, soft_wrap=True, width=10_000)
        err_console = Console(stderr=True, no_color=True, highlight=False, soft_wrap=True, width=10_000)
    else:  # each invocation starts from the defaults (tests run many in one process)
        console, err_console = Console(), Console(stderr=True)


def _print_table(table: Table) -> None:
    """A Rich table, or in --plain mode its title as a comment and its cells as tab-separated lines."""
    if not _PLAIN["on"]:
        console.print(table)
        return
    from rich.text import Text

    cells = [
        [Text.from_markup(str(c)).plain if isinstance(c, str) else str(c) for c in col.cells] for col in table.columns
    ]
    print(f"# {table.title}" if table.title else "", end="\n" if table.title else "")
    print("\t".join(str(col.header) for col in table.columns))
    for row in zip(*cells):
        print("\t".join(row))


def _show_version(value: bool) -> None:
    if value:
        import normlab

        console.print(f"normlab {normlab.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
    plain: bool = typer.Option(
        False,
        "--plain",
        callback=_set_plain,
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
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
    return out


# The engine speaks of config keys; on the command line the same advice reads as flags.
_AS_FLAGS = [
    (
        re.compile(r"\b([Ss])et (run\.[\w.]+=\S+?)(?=[ ;,)]|$)"),
        lambda m: f"{'P' if m[1] == 'S' else 'p'}ass --set {m[2]}",
    ),
    (re.compile(r"set train\.device to cpu or auto"), "use --device cpu or --device auto"),
    (re.compile(r"choose another output folder"), "pass another --out"),
    (re.compile(r"use the local backend"), "use --backend local"),
    (re.compile(r"the ray backend needs Ray"), "--backend ray needs Ray"),
    (re.compile(r"^only: "), "--only: "),
]


def as_flags(message: str) -> str:
    for pattern, repl in _AS_FLAGS:
        message = pattern.sub(repl, message)
    return message


def _bars(label_width: int, unit: str = "", transient: bool = False) -> Progress:
    """The progress bars every long command shows: label, bar, done/total, elapsed time and, for
    the overall bar, the time left. Off in --plain mode (and when stderr is not a terminal, Rich
    draws nothing but the final state)."""
    return Progress(
        TextColumn(f"{{task.description:<{label_width}}}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}" + unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=_PLAIN["on"],
    )


def _workers(backend: str, jobs: int, runs: int) -> str:
    """What runs the work, for a header line: the pool's workers, or the Ray cluster's CPUs."""
    if backend == "ray":
        from normlab.engine.executor import ray_connect

        return f"a Ray cluster of {ray_connect()} CPU(s)"
    return f"{min(jobs, max(1, runs))} worker(s)"


def user_errors(fn: Callable) -> Callable:
    """Turn NormlabError into one red line and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NormlabError as exc:
            message = escape(as_flags(str(exc)))  # brackets such as '.[ray]' are text, not markup
            err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err_console.print("interrupted: finished runs are kept; the same command resumes")
            raise typer.Exit(130)

    return wrapper


def _registry():
    from normlab.experiments import REGISTRY

    return REGISTRY


def _config_path(name_or_path: str) -> Path:
    """An experiment name means its shipped config; anything else is a path to a YAML file."""
    registry = _registry()
    if name_or_path in registry:
        return registry[name_or_path].default_config
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    raise ConfigError(
        f"{name_or_path!r} is neither a known experiment ({', '.join(sorted(registry))}) "
        "nor a config file; see `normlab list`"
    )


def _cli_overrides(
    sets: List[str], seeds: Optional[int], device: Optional[str], device_key: str = "run.train.device"
) -> dict:
    """--set, --seeds and --device as one dict of dotted overrides (checked here, once)."""
    overrides = parse_set(sets)
    if seeds is not None:
        if seeds < 1:
            raise ConfigError("--seeds: must be at least 1")
        overrides["seeds"] = seeds
    if device is not None:
        if device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"--device: {device!r} is not allowed; choose cpu, cuda or auto")
        overrides[device_key] = device
    return overrides


def _resolve_jobs(jobs: Optional[int]) -> int:
    from normlab.engine.executor import default_jobs

    if jobs is not None and jobs < 1:
        raise ConfigError("--jobs: must be at least 1")
    return jobs or default_jobs()


def _print_claims(claims) -> None:
    table = Table(title="Claims", show_lines=False)
    for col in ("claim", "kind", "verdict", "value", "95% CI", "threshold", "n"):
        table.add_column(col)
    colors = {"supported": "green", "not supported": "red", "inconclusive": "yellow"}
    for _, r in claims.iterrows():
        ci = "" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}] {r['interval']}"
        table.add_row(
            str(r["claim_id"]),
            str(r["kind"]),
            f"[{colors.get(r['verdict'], 'white')}]{r['verdict']}[/]",
            f"{r['value']:.4g}",
            ci,
            str(r["threshold"]),
            str(r["n"]),
        )
    _print_table(table)
    console.print(
        "[dim]measured: 95% interval over seeds; exact: maximum error vs tolerance; control and "
        "descriptive rows are not evidence[/]"
    )


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
    help="local (process pool, --jobs) or ray (one Ray task per run; a cluster via RAY_ADDRESS; needs the `ray` "
    "extra).",
)
EnsembleOpt = typer.Option(
    "auto",
    "--ensemble",
    metavar="[auto|off|N]",
    help="Train compatible runs (MLP or 1-D CNN, same model and optimizer, differing in seed, lr, momentum, betas, "
    "eps, decay) together as one batched model: auto stacks up to 16 runs, N up to N, off trains every run alone. "
    "Numbers agree with the single-run path to float rounding.",
)
DeviceOpt = typer.Option(
    None,
    "--device",
    metavar="[cpu|cuda|auto]",
    help="Where to train (default: the config's, cpu; auto = cuda if present).",
)


@app.command("list")
@user_errors
def list_cmd() -> None:
    """List the experiments, the claims each tests and their default configs."""
    table = Table(title="normlab experiments")
    table.add_column("experiment", no_wrap=True)
    table.add_column("claims", no_wrap=True)
    table.add_column("config", overflow="fold")  # never cut a path a user will copy
    table.add_column("what it asks")
    here = Path.cwd()
    shown = lambda p: str(p.relative_to(here) if p.is_relative_to(here) else p)  # noqa: E731
    for name, exp in sorted(_registry().items()):
        table.add_row(
            name, ", ".join(dict.fromkeys(c.id.split("-")[0] for c in exp.claims)), shown(exp.default_config), exp.title
        )
    _print_table(table)
    from normlab.experiments.sweeps import SWEEP_ROOT

    sweeps = sorted(SWEEP_ROOT.glob("*.yaml"))
    if sweeps:
        console.print("sweeps (`normlab sweep NAME`): " + ", ".join(f"{p.stem} ({shown(p)})" for p in sweeps))


@app.command()
@user_errors
def validate(
    config: Path = typer.Argument(..., help="A YAML config file, or an experiment name."),
    sets: List[str] = SetOpt,
    smoke: bool = SmokeOpt,
    show: bool = typer.Option(
        False, "--print", help="Also print the fully resolved config (defaults, --set and --smoke applied) as YAML."
    ),
) -> None:
    """Check a config or sweep file (keys, types, ranges, every arm) without running anything.

    `normlab validate kfac --smoke --print` shows exactly the config `normlab run kfac --smoke`
    would run, every default filled in.
    """
    from normlab.engine.config import dump_yaml, read_yaml
    from normlab.experiments import load_config
    from normlab.experiments.base import arm_configs

    path = _config_path(str(config))
    if "sweep" in read_yaml(path):
        from normlab.experiments.sweeps import load_sweep

        exp, cfg, _ = load_sweep(path, _registry(), parse_set(sets), smoke)
    else:
        exp, cfg = load_config(path, _registry(), parse_set(sets), smoke)
    arm_configs(cfg)
    tasks = exp.tasks(cfg)  # the experiment's own arms (some build them from a design)
    arms = {t.arm: t.config.train.steps for t in tasks}
    count = (
        f"{len(arms)} arm(s) x {cfg.seeds} seed(s) = {len(tasks)} runs"
        if len(tasks) == len(arms) * cfg.seeds
        else f"{len(arms)} arm(s), {len(tasks)} runs before any follow-up stage"
    )
    steps = arms if len(arms) <= 12 else sorted(set(arms.values()))
    if show:
        print(dump_yaml(cfg), end="")  # plain stdout: the YAML is meant to be piped or saved
    message = f"[green]ok[/green]: {config} is a valid `{exp.name}` config: {count}; steps per arm: {steps}"
    (err_console if show else console).print(message)


@app.command()
@user_errors
def run(
    experiment: str = typer.Argument(..., help="Experiment name (see `normlab list`) or a config file."),
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
) -> None:
    """Run one experiment: train every arm x seed, write CSVs, judge the claims, draw the figures.

    Examples: `normlab run baselines --smoke`, `normlab run baselines --seeds 5 --jobs 2`,
    `normlab run baselines --set run.train.steps=4000`.
    """
    from normlab.engine.results import default_run_dir, results_root
    from normlab.experiments import load_config, run_experiment

    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend: {backend!r} is not allowed; choose local or ray")
    path = config if config is not None else _config_path(experiment)
    exp, cfg = load_config(path, _registry(), _cli_overrides(sets, seeds, device), smoke)
    if config is not None and exp.name != experiment and experiment in _registry():
        raise ConfigError(f"--config {config} is a `{exp.name}` config, not `{experiment}`")
    folder = out or default_run_dir(results_root(), exp.name, smoke)
    n_jobs = _resolve_jobs(jobs)

    with _bars(18, " steps") as bars:
        ids: dict[str, int] = {}  # a bar per run in flight only (at most --jobs rows), under one overall bar
        done_steps: dict[str, int] = {}
        overall: list[int] = []  # added when the runs are known, so an early error leaves no empty bar
        planned: list[int] = []

        def on_start(tasks, reused: int) -> None:
            err_console.print(
                f"{exp.name}: {len(tasks)} runs on {_workers(backend, n_jobs, len(tasks))}"
                + (f" ({reused} finished runs reused from {folder}.partial)" if reused else "")
                + f" -> {folder}"
            )
            planned.append(sum(t.config.train.steps for t in tasks))  # a follow-up stage adds runs
            if not overall:
                overall.append(bars.add_task("all runs", total=sum(planned)))
            else:
                bars.update(overall[0], total=sum(planned))

        def progress(run_id: str, done: int, total: int) -> None:
            if done_steps.get(run_id, -1) >= total:  # finished, its bar gone (a run reports its end twice)
                return
            if run_id not in ids:
                ids[run_id] = bars.add_task(run_id, total=total)
            bars.update(ids[run_id], completed=done)
            bars.advance(overall[0], done - done_steps.get(run_id, 0))
            done_steps[run_id] = done
            if done >= total:
                bars.remove_task(ids[run_id])

        try:
            outcome = run_experiment(
                exp,
                cfg,
                folder,
                jobs=n_jobs,
                progress=progress,
                smoke=smoke,
                on_start=on_start,
                backend=backend,
                ensemble=ensemble,
            )
        except KeyboardInterrupt:
            err_console.print(
                f"interrupted: finished runs are kept in {folder}.partial/; run the same "
                f"command with --out {folder} to resume"
            )
            raise typer.Exit(130)
    _print_claims(outcome.claims)
    bad = outcome.runs[outcome.runs["status"] != "ok"]
    if len(bad):
        console.print(
            f"[yellow]{len(bad)} run(s) did not finish normally[/yellow]: "
            + ", ".join(f"{r.run_id} ({r.status})" for r in bad.itertuples())
        )
    console.print(f"files: {folder}/ (runs.csv, metrics.csv, claims.csv, report.md, plots/)")


@app.command()
@user_errors
def sweep(
    name: str = typer.Argument(..., help="A sweep in configs/sweeps/ (e.g. `wd`) or a sweep YAML file."),
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
) -> None:
    """Run a grid of runs (axes x seeds) and analyze it like `run`. Resumable.

    Rerunning the same command skips the cells that already finished (keyed by a hash of each
    cell's resolved config and seed) and reruns failed ones; Ctrl-C loses only the runs in
    flight. `--set` here overrides the sweep file, e.g. `--set 'axes.optim.lr=[0.1, 1.0]'`.
    """
    from normlab.engine.results import results_root
    from normlab.experiments.sweeps import load_sweep, run_sweep, sweep_path

    overrides = _cli_overrides(sets, seeds, device, device_key="overrides.run.train.device")
    path = sweep_path(name)
    exp, cfg, spec = load_sweep(path, _registry(), overrides, smoke)
    folder = out or results_root() / "sweeps" / (spec.sweep + ("-smoke" if smoke else ""))
    n_jobs = _resolve_jobs(jobs)
    from normlab.engine.executor import check_backend

    check_backend(backend)
    with _bars(18) as bars:
        overall = bars.add_task("cells", total=0)

        def on_start(todo, skipped) -> None:
            err_console.print(
                f"sweep {spec.sweep} ({exp.name}): {len(todo) + skipped} cells, {skipped} already "
                f"finished, {len(todo)} to run on {_workers(backend, n_jobs, len(todo))} -> {folder}"
            )
            task = bars.tasks[overall]
            bars.update(overall, total=(task.total or 0) + len(todo) + skipped, completed=task.completed + skipped)

        def on_cell(res) -> None:
            bars.advance(overall)
            if res.status != "ok":
                err_console.print(f"  {res.run_id}: {res.status}")

        outcome = run_sweep(
            exp,
            cfg,
            spec,
            folder,
            jobs=n_jobs,
            smoke=smoke,
            on_start=on_start,
            on_result=on_cell,
            backend=backend,
            ensemble=ensemble,
        )
    _print_claims(outcome.claims)
    console.print(f"files: {folder}/ (runs.csv, metrics.csv, claims.csv, report.md, plots/, cells/)")


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
) -> None:
    """Run every experiment's default config, then write the combined report (md and html).

    Experiments already finished in the output folder are reused and interrupted ones resume, so
    running the same command again continues where it stopped.
    """
    import normlab

    names = [n.strip() for n in only.split(",") if n.strip()] if only else None  # checked by the API
    current: dict = {}
    with _bars(24, transient=True) as bars:

        def on_experiment(i: int, n: int, name: str, folder: Path, reused: bool) -> None:
            if "task" in current:
                bars.remove_task(current["task"])
            current.update(folder=folder, task=bars.add_task(name, total=0), total=0)
            bars.console.print(f"[{i}/{n}] {name}" + (f": already finished in {folder}, reused" if reused else ""))

        def on_start(tasks, reused) -> None:
            current["total"] += len(tasks)
            bars.update(current["task"], total=current["total"])

        try:
            result = normlab.reproduce(
                out=out,
                smoke=smoke,
                only=names,
                jobs=_resolve_jobs(jobs),
                overrides=_cli_overrides([], None, device),
                on_experiment=on_experiment,
                on_start=on_start,
                on_result=lambda res: bars.advance(current["task"]),
                backend=backend,
                ensemble=ensemble,
            )
        except KeyboardInterrupt:
            err_console.print(
                "interrupted: run the same command again to continue "
                f"({current.get('folder', 'the output folder')}.partial keeps the finished runs)"
            )
            raise typer.Exit(130)
    table = Table(title="Claims")
    for col in ("experiment", "claim", "verdict"):
        table.add_column(col)
    colors = {"supported": "green", "not supported": "red", "inconclusive": "yellow"}
    for n, claims in result.claims.items():
        for _, r in claims.iterrows():
            table.add_row(n, str(r["claim_id"]), f"[{colors.get(r['verdict'], 'white')}]{r['verdict']}[/]")
    _print_table(table)
    console.print(f"report: {result.reports[0]} and {result.reports[1]}")


@app.command()
@user_errors
def report(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders, or a `normlab reproduce` output folder."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Report file (default: report.md, or REPRODUCE_DIR/report.md)."
    ),
    fmt: str = typer.Option(
        "md", "--format", "-f", metavar="[md|html]", help="md (for GitHub) or html (one self-contained file)."
    ),
) -> None:
    """Write one report from run folders' CSVs, manifests and figures (never retrains)."""
    import normlab
    from normlab.engine.report import is_collection

    if fmt not in ("md", "html"):
        raise ConfigError(f"--format: {fmt!r} is not allowed; choose md or html")
    collection = any(is_collection(p) for p in run_dirs)
    if out is None:
        out = (Path(run_dirs[0]) if len(run_dirs) == 1 and collection else Path(".")) / f"report.{fmt}"
    path = normlab.report(list(run_dirs), out, fmt)
    console.print(f"wrote {path}")


@app.command()
@user_errors
def plot(run_dir: Path = typer.Argument(..., help="A run folder written by `normlab run`.")) -> None:
    """Redraw every figure of a run folder from its CSVs alone (no training)."""
    import normlab

    for p in normlab.plot(run_dir):
        console.print(f"wrote {p}")


def torch_device_name(device) -> str:
    """`cpu`, or `cuda (NVIDIA H100 80GB HBM3)`: the card a bench's numbers belong to."""
    import torch

    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


@app.command()
@user_errors
def bench(
    steps: int = typer.Option(2000, help="Steps per timed trial."),
    repeats: int = typer.Option(5, help="Interleaved trials of each loop."),
    probe_every: Optional[int] = typer.Option(None, help="Probe interval (default: the engine's default)."),
    workers: Optional[int] = typer.Option(None, help="Pool size for the scaling test (default: cores)."),
    ensemble_steps: int = typer.Option(300, help="Steps per batched-ensemble trial (0 = skip the ensemble rows)."),
    device: str = typer.Option(
        "cpu", "--device", metavar="[cpu|cuda|auto]", help="Where every loop trains (auto = cuda if present)."
    ),
) -> None:
    """Engine throughput vs a plain PyTorch loop, probe cost, process-pool scaling, and batched ensembles."""
    from normlab.engine.bench import run_bench
    from normlab.engine.train import resolve_device

    if steps < 10 or repeats < 1:
        raise ConfigError("--steps must be >= 10 and --repeats >= 1")
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device: {device!r} is not allowed; choose cpu, cuda or auto")
    where = resolve_device(device)  # a cuda asked for where none is visible stops here, with the way out
    name = torch_device_name(where)
    console.print(f"MLP 40-100-100-10 + BN, batch 128, SGD, MNIST-1D, 1 torch thread per loop, on {name}")
    res = run_bench(
        steps=steps,
        repeats=repeats,
        probe_every=probe_every,
        workers=workers,
        log=console.print,
        ensemble_sizes=(1, 4, 8, 16, 32) if ensemble_steps else (),
        ensemble_steps=max(ensemble_steps, 1),
        device=str(where),
    )
    table = Table(title="normlab bench (medians over interleaved repeats)")
    for col in ("measure", "value", "target"):
        table.add_column(col)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    table.add_row("plain PyTorch loop", f"{med(res.plain):.0f} steps/s", "")
    table.add_row("engine, probes off", f"{med(res.engine):.0f} steps/s", "")
    table.add_row("engine / plain", f"{res.engine_ratio:.3f}x", ">= 0.95x")
    table.add_row(f"probe cost (every {res.probe_every} steps)", f"{100 * res.probe_cost:.1f}%", "<= 10%")
    base = res.pool.get(1)
    for k, rate in sorted(res.pool.items()):
        table.add_row(
            f"pool of {k} worker(s)", f"{rate:.0f} steps/s", f"{rate / base:.2f}x of 1 worker" if base else ""
        )
    for (name, bn), single in res.engine_by_model.items():
        label = f"{name}, {'BN' if bn else 'no BN'}"
        table.add_row(f"{label}: engine, one run", f"{single:.0f} steps/s", "")
        table.add_row(f"{label}: compute limit", f"{res.limit_by_model[(name, bn)]:.0f} steps/s", "large-matmul speed")
        for (n2, bn2, m), rate in res.ensemble.items():
            if (n2, bn2) == (name, bn):
                goal = "; goal >= 3x at M >= 8" if (name, bn, m) == ("MLP", True, 8) else ""
                table.add_row(
                    f"{label}: ensemble of {m}",
                    f"{rate:.0f} member-steps/s",
                    f"{rate / single:.2f}x the engine, {rate / res.limit_by_model[(name, bn)]:.0%} of the limit{goal}",
                )
    _print_table(table)


def main() -> None:
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
