"""How the runs of a command execute: one object, built and checked once, passed down.

`Execution` holds what decides *how* runs train and never *what* they compute (apart from the
device, which the config records): the pool size, the backend, the batched-ensemble setting and
the device, plus the callbacks that report progress. Building one checks every field, so a bad
value stops a command before any folder or worker exists; everything below it (`run_cells`,
`execute`) takes it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from .errors import ConfigError
from .runs import Progress, RunResult, RunTask

OnStart = Optional[Callable[[list[RunTask], int], None]]  # (runs about to train, finished runs reused)
OnResult = Optional[Callable[[RunResult], None]]  # each run as soon as it is stored
DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Execution:
    """jobs: one-thread workers (None = every core); backend: local (a process pool) or ray;
    ensemble: auto, off or the most members per batched ensemble; device: where runs train
    (None = each config's own `train.device`); progress(run_id, done, total), on_start and
    on_result: callbacks for progress output; pool: a SharedPool several experiments train in
    (`reproduce` sets it; it changes where runs train, never what they compute)."""

    jobs: Optional[int] = 1
    backend: str = "local"
    ensemble: int | str = "auto"
    device: Optional[str] = None
    progress: Progress = None
    on_start: OnStart = None
    on_result: OnResult = None
    pool: Any = field(default=None, repr=False, compare=False)  # an engine.executor.SharedPool to train in
    members: tuple[int, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .executor import check_backend, default_jobs, resolve_ensemble

        if self.jobs is None:
            object.__setattr__(self, "jobs", default_jobs())
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1:
            raise ConfigError(f"must be at least 1, got {self.jobs!r}", key="jobs")
        if self.device is not None and self.device not in DEVICES:
            raise ConfigError(
                f"{self.device!r} is not allowed; choose {', '.join(DEVICES[:-1])} or {DEVICES[-1]}",
                key="run.train.device",
            )
        check_backend(self.backend)
        object.__setattr__(self, "members", resolve_ensemble(self.ensemble))
        if self.device is not None:
            self.check_device(self.device)

    def check_device(self, device: str, key: str = "run.train.device") -> None:
        """Refuse, before any folder or worker exists, a device this machine does not have (runs on
        a Ray cluster are placed by Ray, so there the workers' devices decide)."""
        from .train import resolve_device

        if self.backend == "local":
            resolve_device(device, key)

    def overrides(self, key: str = "run.train.device") -> dict:
        """The config overrides this execution implies: the device, where one was asked for."""
        return {} if self.device is None else {key: self.device}

    def with_callbacks(self, **callbacks) -> "Execution":
        """The same execution with other progress callbacks (progress, on_start, on_result)."""
        return replace(self, **callbacks)

    def with_pool(self, pool) -> "Execution":
        """The same execution, training in a SharedPool."""
        return replace(self, pool=pool)

    def workers(self, runs: int) -> str:
        """What runs the work, for a header line: the pool's workers, or the Ray cluster's CPUs."""
        if self.backend == "ray":
            from .executor import ray_connect

            return f"a Ray cluster of {ray_connect()} CPU(s)"
        return f"{min(self.jobs, max(1, runs))} worker(s)"


__all__ = ["BACKENDS", "DEVICES", "Execution", "OnResult", "OnStart"]
