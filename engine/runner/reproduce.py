"""Every experiment's default config in one command (`normlab reproduce`), then the combined report.

Experiments already finished in the output root are reused and interrupted ones resume. With
more than one local worker the experiments run side by side in one SharedPool, so the workers stay
busy across experiment boundaries; every file is the one running them one by one writes.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd

from .. import config as C
from ..costs import experiment_seconds, recorded_costs
from ..errors import ConfigError
from ..execution import Execution
from ..executor import SharedPool
from ..experiment import Registry
from ..report import build_report
from ..results import atomic_write_csv, read_claims, read_runs, results_root
from .load import load_config
from .plan import Plan, command_overrides
from .run import crashes, run_experiment

OnExperiment = Optional[Callable[[int, int, str, Path, bool], Optional[dict]]]


@dataclass
class Reproduction:
    """What `reproduce` wrote: the output root, each experiment's folder and claim rows, the reports."""

    root: Path
    folders: dict[str, Path]
    claims: dict[str, pd.DataFrame]
    reports: list[Path]
    crashes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # experiment -> (run_id, error)


def reproduce(
    registry: Registry,
    out: Optional[str | Path] = None,
    smoke: bool = False,
    only: Optional[list[str]] = None,
    overrides: Optional[dict[str, Any]] = None,
    execution: Optional[Execution] = None,
    on_experiment: OnExperiment = None,
) -> Reproduction:
    """Run every experiment's default config (or those in `only`) into OUT/<experiment>/, then
    write OUT/report.md and OUT/report.html. `on_experiment(i, n, name, folder, reused)` is called
    for each experiment, in order, before it starts; it may return a dict of callbacks (progress,
    on_start, on_result) for that experiment's runs, else the execution's own callbacks get every
    run's progress."""
    execution = execution or Execution()
    names = list(only) if only else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} not known; choose from {', '.join(registry)}", key="only")
    root = Path(out) if out else results_root() / ("reproduce-smoke" if smoke else "reproduce")
    raw = command_overrides(overrides, None, execution, "run.train.device")
    plans = {n: Plan(*load_config(registry[n].default_config, registry, raw, smoke), root / n, smoke) for n in names}
    reused = {}
    for name, p in plans.items():
        reused[name] = (p.folder / "claims.csv").is_file()
        if reused[name] and (p.folder / "config.yaml").read_text() != C.dump_yaml(p.config):
            raise ConfigError(
                f"{p.folder} holds {name} results of a different config; remove that folder to rerun it, "
                "or choose another output folder ({out})"
            )
    todo = [n for n in names if not reused[n]]
    announce = lambda i, n: (on_experiment(i, len(names), n, root / n, reused[n]) if on_experiment else None) or {}  # noqa: E731
    if execution.backend == "local" and execution.jobs > 1 and len(todo) > 1:
        callbacks = {n: announce(i, n) for i, n in enumerate(names, 1)}  # in the user's order; reused ones say so
        _side_by_side({n: plans[n] for n in todo}, root, execution, callbacks)
    else:
        for i, name in enumerate(names, 1):  # each announced as it starts
            callbacks = announce(i, name)
            if not reused[name]:
                run_experiment(plans[name], execution.with_callbacks(**callbacks))
    titles = {n: e.title for n, e in registry.items()}
    short = {claim: name for e in registry.values() for claim, name in e.short_names.items()}
    reports = [  # exactly what `normlab report ROOT --format FMT` writes
        build_report([root], root / f"report.{fmt}", fmt, expected=list(registry), titles=titles, short_names=short)
        for fmt in ("md", "html")
    ]
    crashed = {n: crashes(read_runs(root / n)) for n in names if (root / n / "runs.csv").is_file()}
    return Reproduction(
        root,
        {n: root / n for n in names},
        {n: read_claims(root / n) for n in names},
        reports,
        {n: c for n, c in crashed.items() if c},
    )


def _side_by_side(plans: dict[str, Plan], root: Path, execution: Execution, callbacks: dict[str, dict]) -> None:
    """Every experiment still to run in a thread of its own, all training in one SharedPool: the
    workers stay busy across experiment boundaries (one experiment's tail overlaps the next one's
    runs, a multi-stage experiment's later stage waits only for its own first), the costliest work
    first by the runs' recorded costs (results/reference). The threads start longest experiment
    first, each as soon as the one before has submitted its work, and do their in-process work
    (derived tables, analysis, plots) one at a time (SharedPool.holding), so every file is the one
    running them one by one writes."""
    costs = recorded_costs(list(plans))
    pool = SharedPool(execution.jobs, costs)
    order = sorted(plans, key=lambda n: -experiment_seconds(n, plans[n].experiment, plans[n].config, costs.get(n, {})))

    def one(name: str, started: threading.Event) -> None:
        with pool.holding(name):
            pool.on_first_release(started.set)
            try:
                run_experiment(plans[name], execution.with_pool(pool).with_callbacks(**callbacks[name]))
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
    # when each piece of work ran: engine.costs replays it at other worker counts (docs/speed.md)
    atomic_write_csv(root / "schedule.csv", pd.DataFrame(pool.records))
