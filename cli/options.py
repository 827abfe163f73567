"""The command line's shared pieces: how --set and --grid are read, the flags an error names, the
options several commands take (each defined once), and the one way a command fails on bad input."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional

import typer
import typer.core
import yaml
from rich.markup import escape

import normlab
from normlab import ConfigError, NormlabError

from .output import ui


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
    "lens_model": "--lens-model",
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


def _json_mode(on: bool) -> bool:
    """--json switches the output to one JSON document before the command prints anything."""
    if on:
        ui.set_json()
    return on  # a callback's return value is the option's value


JsonOpt = typer.Option(
    False,
    "--json",
    metavar="",
    callback=_json_mode,
    help="Print one JSON document on stdout (what the command wrote or measured) and nothing else there; "
    "messages go to stderr. For scripts: no table to parse.",
)
DeviceOpt = typer.Option(
    None,
    "--device",
    metavar="[cpu|cuda|auto]",
    autocompletion=complete_device,
    help="Where to train (default: the config's, cpu; auto = cuda if present).",
)


def execution_options(fn: Callable) -> Callable:
    """Give a command the options of how its runs train (--jobs, --device, --backend, --ensemble),
    defined once here, and hand it one checked normlab.Execution as `execution` instead."""
    extra = [
        inspect.Parameter("jobs", inspect.Parameter.KEYWORD_ONLY, default=JobsOpt, annotation=Optional[int]),
        inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default=DeviceOpt, annotation=Optional[str]),
        inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=BackendOpt, annotation=str),
        inspect.Parameter("ensemble", inspect.Parameter.KEYWORD_ONLY, default=EnsembleOpt, annotation=str),
    ]
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "execution"]

    @functools.wraps(fn)
    def wrapper(*args, jobs=None, device=None, backend="local", ensemble="auto", **kwargs):
        execution = normlab.Execution(jobs=jobs, backend=backend, ensemble=ensemble, device=device)
        return fn(*args, execution=execution, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params + extra)
    return wrapper
