"""Run many RunTasks: in-process for jobs=1, else a pool of one-thread `spawn` workers, or Ray.

With `ensemble` > 1, compatible runs (engine/ensemble.py: same architecture and shapes, differing
only in seed and per-member optimizer settings) are packed into batched ensembles of up to that
many members, each trained in one worker as one stacked model; every other run takes the
single-run path. Either way each run yields its own RunResult.

Every run uses `train.threads` torch threads wherever it executes, so the numbers do not depend
on `--jobs`. Results come back in task order; `on_result` sees each one as soon as it finishes
(sweeps use it to write rows as they go). A run that raises is recorded as `failed` with its
error, not dropped; errors the user must fix (NormlabError) are raised instead.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing as mp
import os
import queue
import re
import threading
import time
import traceback
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, wait
from typing import Callable, Collection, Optional

from .errors import NormlabError, count_or_none
from .execution import Execution
from .runs import Progress, RunResult, RunTask
from .train import train


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _run_one(task: RunTask, progress: Progress) -> RunResult:
    try:
        return train(task, progress)
    except NormlabError:
        raise
    except Exception as exc:  # a crash inside one run is a result, not a lost run
        return RunResult(
            task.run_id,
            task.arm,
            task.seed,
            "failed",
            0,
            0.0,
            error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
        )


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _run_unit(unit: list[RunTask], progress: Progress) -> list[RunResult]:
    """One run, or an ensemble of packed runs (a crash inside it fails each of its runs, with the error)."""
    if len(unit) == 1:
        return [_run_one(unit[0], progress)]
    from .ensemble import train_ensemble

    try:
        return train_ensemble(unit, progress)
    except NormlabError:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__} in an ensemble of {len(unit)}: {exc}\n{traceback.format_exc()}"
        return [RunResult(t.run_id, t.arm, t.seed, "failed", 0, 0.0, error=error) for t in unit]


def _worker(unit: list[RunTask], q) -> list[RunResult]:
    return _run_unit(unit, (lambda rid, done, total: q.put((rid, done, total))) if q is not None else None)


def _map_chunk(fn: Callable, items: list) -> list:
    return [fn(x) for x in items]


class SharedPool:
    """One pool of one-thread `spawn` workers that several commands' work shares (`reproduce` runs
    its experiments side by side through one): every piece of work waits in one queue, the most
    costly first (by the estimate it is submitted with; ties in submission order), and at most
    `jobs` pieces are in the workers at a time, so the order is global rather than per experiment.
    What a piece computes does not depend on when or where it runs (one torch thread each, the
    packing fixed before submission), so the files are those of running the experiments one by one.

    The experiments' own threads do their in-process work (derived tables, analysis, plots: code
    that seeds torch's global RNG or draws with matplotlib's global state) one at a time: each holds
    `holding()` while it runs and lets go only while it waits for the workers (`waiting()`)."""

    def __init__(self, jobs: int, costs: Optional[dict[str, dict[str, float]]] = None):
        self.jobs = jobs
        self.costs = costs or {}  # experiment -> run_id -> recorded seconds (unit_cost's `known`)
        self._pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
        self._waiting: list = []  # heap of (-cost, sequence, fn, args, future)
        self._order = itertools.count()
        self._busy = 0
        self._lock = threading.Lock()
        self._closed = False
        self._main = threading.Lock()  # the main process's in-process work, one experiment at a time
        self._local = threading.local()
        self._t0 = time.perf_counter()
        # what ran when (engine.costs replays it): kind "work" (a piece in a worker) or "main" (a
        # stretch of in-process work under the lock), its experiment, its batch (the pieces one wait
        # covers), the estimated cost, and submitted/started/finished in seconds from the pool's start
        self.records: list[dict] = []

    def _now(self) -> float:
        return round(time.perf_counter() - self._t0, 3)

    def _acquire(self) -> None:
        self._main.acquire()
        self._local.held, self._local.since = True, self._now()

    def _release(self) -> None:
        self._local.held = False
        with self._lock:
            self.records.append({"kind": "main", "experiment": getattr(self._local, "experiment", ""),
                                 "batch": getattr(self._local, "batch", 0), "cost": 0.0,
                                 "submitted": self._local.since, "started": self._local.since,
                                 "finished": self._now()})  # fmt: skip
        self._main.release()

    @contextmanager
    def holding(self, experiment: str = ""):
        """Run the calling thread's in-process work (for `experiment`) under the main-process lock."""
        self._local.experiment, self._local.batch = experiment, 0
        self._acquire()
        try:
            yield
        finally:
            if getattr(self._local, "held", False):
                self._release()

    @contextmanager
    def waiting(self):
        """Let other experiments' in-process work run while this thread waits for the workers."""
        held = getattr(self._local, "held", False)
        if held:
            self._release()
            released = getattr(self._local, "on_release", None)
            if released:
                released()
        try:
            yield
        finally:
            self._local.batch = getattr(self._local, "batch", 0) + 1  # later pieces wait on what follows
            if held:
                self._acquire()

    def on_first_release(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when this thread first lets go of the lock, or ends."""

        def once():
            self._local.on_release = None
            callback()

        self._local.on_release = once

    def submit(self, fn: Callable, *args, cost: float = 0.0) -> Future:
        """fn(*args) in a worker (fn at module level, args picklable); its Future."""
        future: Future = Future()
        record = {"kind": "work", "experiment": getattr(self._local, "experiment", ""),
                  "batch": getattr(self._local, "batch", 0), "cost": round(cost, 3), "submitted": self._now(),
                  "started": None, "finished": None}  # fmt: skip
        with self._lock:
            if self._closed:
                raise RuntimeError("the shared pool is closed")
            self.records.append(record)
            heapq.heappush(self._waiting, (-cost, next(self._order), fn, args, future, record))
        self._dispatch()
        return future

    def _dispatch(self) -> None:
        launch = []
        with self._lock:
            while self._busy < self.jobs and self._waiting and not self._closed:
                _, _, fn, args, future, record = heapq.heappop(self._waiting)
                if not future.set_running_or_notify_cancel():
                    continue
                self._busy += 1
                record["started"] = self._now()
                launch.append((fn, args, future, record))
        # outside the lock: a piece that is done before its callback is added runs the callback here
        for fn, args, future, record in launch:
            try:
                done = self._pool.submit(fn, *args)
            except RuntimeError as exc:  # the pool was shut down meanwhile
                with self._lock:
                    self._busy -= 1
                future.set_exception(exc)
                continue
            done.add_done_callback(lambda d, f=future, r=record: self._finished(d, f, r))

    def _finished(self, done: Future, future: Future, record: dict) -> None:
        with self._lock:
            self._busy -= 1
            record["finished"] = self._now()
        if done.cancelled():  # shut down before it ran: `future` is running, so it cannot be cancelled
            future.set_exception(CancelledError())
        elif done.exception() is not None:
            future.set_exception(done.exception())
        else:
            future.set_result(done.result())
        self._dispatch()

    def map(self, fn: Callable, items: list, cost: float = float("inf")) -> list:
        """[fn(x) for x in items] in the workers, in chunks of a few items (`map_in_workers`' share);
        derived tables are on their experiment's critical path, so they go first by default."""
        items = list(items)
        size = max(1, len(items) // (4 * self.jobs))
        futures = [self.submit(_map_chunk, fn, items[i : i + size], cost=cost) for i in range(0, len(items), size)]
        with self.waiting():
            return [x for f in futures for x in f.result()]

    def close(self, cancel: bool = False) -> None:
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for *_, future, _record in waiting:
            future.cancel()
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)


def unit_cost(unit: list, known: dict[str, float]) -> float:
    """Seconds one unit (a run or an ensemble) is expected to take: the runs' recorded costs where
    `known` has them (run_id -> train_seconds of an earlier run of the same config; an ensemble
    member's is its share, so the members' sum is the ensemble's), else a size estimate."""
    return sum(known.get(t.run_id, _size_estimate(t)) for t in unit)


def _size_estimate(task) -> float:
    """A rough cost without a record: steps x (width x depth), K-FAC and curvature checkpoints weighted."""
    cfg = task.config
    m = cfg.model
    size = max(m.width, *(m.channels or [0])) * max(m.depth, len(m.channels or []), 1)
    seconds = cfg.train.steps * (2e-4 + 2e-7 * size) * (4.0 if cfg.optim.name == "kfac" else 1.0)
    cv = cfg.curvature
    return seconds + 2.0 * (len(cv.steps) + len(cv.hessian_steps) + len(cv.density_steps) + len(cv.eq9_steps))


def resolve_ensemble(ensemble: int | str | None) -> tuple[int, tuple[str, ...]]:
    """--ensemble as (most members, architectures stacked): 'off' (or 1) trains every run alone,
    'auto' stacks up to AUTO_SIZE runs of the architectures where stacking measured faster, N stacks
    up to N runs of every architecture it can."""
    from .ensemble import ARCHS, AUTO_ARCHS, AUTO_SIZE

    if ensemble in (None, "auto"):
        return AUTO_SIZE, AUTO_ARCHS
    if ensemble == "off":
        return 1, ()
    size = count_or_none(ensemble)
    if size is None:
        raise NormlabError(f"{ensemble!r} is not allowed; choose auto, off or a number of members >= 1", key="ensemble")
    return size, ARCHS


def execute(
    tasks: list[RunTask],
    execution: Optional[Execution] = None,
    on_result: Optional[Callable[[RunResult], None]] = None,
    finished: Collection[str] = (),
    costs: Optional[dict[str, float]] = None,
) -> list[RunResult]:
    """Train `tasks` as `execution` says (its workers, backend, shared pool, progress callback, and
    its ensembles: packed by `execution.members`) and return their results in task order; None is one
    worker with every run trained alone. `on_result` gets each result as soon as it comes.

    `finished`: run_ids whose results are already stored (a resumed run). The packing is made over
    every task, finished or not, so that each run keeps the ensemble, and hence the numbers, of an
    uninterrupted run; a unit whose runs are all finished is skipped, and in a unit with some, those
    are trained again with the others but neither reported nor returned.

    With a SharedPool in `execution.pool`, the units train there (its workers, its global order,
    each unit at the cost `unit_cost` gives from `costs`) instead of in a pool of this call's own."""
    execution = execution or Execution(ensemble="off")
    jobs, progress, backend, pool = execution.jobs, execution.progress, execution.backend, execution.pool
    ensemble = execution.members
    from .ensemble import pack

    finished = set(finished)
    units = [u for u in pack(tasks, *ensemble) if any(t.run_id not in finished for t in u)]
    if finished:
        report, show = on_result, progress
        tasks = [t for t in tasks if t.run_id not in finished]

        def on_result(res: RunResult) -> None:
            if res.run_id not in finished and report:
                report(res)

        if show:

            def progress(run_id: str, done: int, total: int) -> None:
                if run_id not in finished:
                    show(run_id, done, total)

    if backend == "ray":
        return _execute_ray(tasks, units, progress, on_result)
    if pool is not None:
        return _execute_shared(tasks, units, pool, costs or {}, progress, on_result)
    jobs = max(1, min(jobs, len(units))) if units else 1
    results: dict[str, RunResult] = {}
    if jobs == 1:
        for unit in units:
            for res in _run_unit(unit, progress):
                results[res.run_id] = res
                if on_result:
                    on_result(res)
        return [results[t.run_id] for t in tasks]  # the unfinished ones

    ctx = mp.get_context("spawn")
    manager = ctx.Manager() if progress else None
    q = manager.Queue() if manager else None
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
    try:
        _collect({pool.submit(_worker, unit, q): unit for unit in units}, q, progress, on_result, results)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if manager:
            manager.shutdown()
    return [results[t.run_id] for t in tasks]


def _collect(pending: dict, q, progress: Progress, on_result, results: dict[str, RunResult]) -> None:
    """Wait for the units' futures, relaying progress and handing each result on as it comes."""
    while pending:
        done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        _drain(q, progress)
        for fut in done:
            pending.pop(fut)
            for res in fut.result():  # re-raises NormlabError from the worker
                results[res.run_id] = res
                if on_result:
                    on_result(res)
    _drain(q, progress)


def _execute_shared(
    tasks: list[RunTask],
    units: list[list[RunTask]],
    pool: SharedPool,
    costs: dict[str, float],
    progress: Progress,
    on_result: Optional[Callable[[RunResult], None]],
) -> list[RunResult]:
    """`execute` through a SharedPool: units submitted at their estimated cost, results as they come."""
    manager = mp.get_context("spawn").Manager() if progress else None
    q = manager.Queue() if manager else None
    results: dict[str, RunResult] = {}
    pending: dict = {}
    try:
        pending = {pool.submit(_worker, unit, q, cost=unit_cost(unit, costs)): unit for unit in units}
        with pool.waiting():
            _collect(dict(pending), q, progress, on_result, results)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    finally:
        if manager:
            manager.shutdown()
    return [results[t.run_id] for t in tasks]


ParallelMap = Callable[[Callable, list], list]
# Starting a pool of spawn workers that import torch and normlab takes about 2.5-3 s here (measured
# on smoke configs: exp_lr 0.4 -> 3.1 s, fisher 0.5 -> 3.3 s with a pool of two); work expected to
# take less than twice that one item after another stays in this process.
POOL_WORTH_S = 6.0


def serial_map(fn: Callable, items: list) -> list:
    """fn over items in this process, in order, with one torch thread (as `map_in_workers`)."""
    return map_in_workers(fn, items, jobs=1)


def map_in_workers(fn: Callable, items: list, jobs: int = 1, pool_worth_s: float = POOL_WORTH_S) -> list:
    """[fn(x) for x in items], in order, spread over up to `jobs` one-thread `spawn` workers (fn
    and the items must pickle: a module-level function and plain data). Work without training runs
    (an experiment's `derived` tables: hundreds of small fits, independent simulations) spreads
    over the cores this way. The first two items run in this process and the second is timed (the
    first pays one-time costs); the rest go to workers only if, at that pace, they would take
    longer than `pool_worth_s` here. Torch uses one thread wherever an item runs, so the numbers do
    not depend on `jobs` or on that choice."""
    import torch

    items = list(items)
    jobs = max(1, min(jobs, len(items)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = [fn(x) for x in items[:1]]
        start = time.perf_counter()
        out += [fn(x) for x in items[1:2]]
        rest = items[2:]
        if jobs == 1 or not rest or (time.perf_counter() - start) * len(rest) < pool_worth_s:
            return out + [fn(x) for x in rest]
    finally:
        torch.set_num_threads(before)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(rest)), mp_context=ctx, initializer=_worker_init) as pool:
        # chunks: a few per worker, so that uneven items still balance and small ones pay little overhead
        return out + list(pool.map(fn, rest, chunksize=max(1, len(rest) // (4 * jobs))))


def _drain(q, progress: Progress) -> None:
    if q is None or progress is None:
        return
    while True:
        try:
            progress(*q.get_nowait())
        except queue.Empty:
            return
        except (EOFError, OSError):
            return


_NEEDS_RAY = (
    "{backend} ray needs Ray: pip install 'normlab[ray]' (in a checkout: pip install -e '.[ray]'), "
    "or {set:backend=local}"
)
RAY_CONNECT_TIMEOUT_S = 3.0  # how long a named Ray head may take to answer before we give up


def check_ray_address(address: Optional[str] = None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail within seconds, with one line, when RAY_ADDRESS names a head that nobody answers
    (Ray itself retries for minutes). 'auto', 'local' and no address need no check."""
    import socket

    address = address if address is not None else os.environ.get("RAY_ADDRESS", "")
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise NormlabError(
            f"RAY_ADDRESS={address!r} is not HOST:PORT (e.g. 127.0.0.1:6379); fix it or unset "
            "RAY_ADDRESS to start a local Ray"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError:
        raise NormlabError(
            f"RAY_ADDRESS={address}: no Ray head answers at {host}:{port} within {timeout:g} s; "
            "start one there (ray start --head) or unset RAY_ADDRESS to start a local Ray"
        ) from None


def check_backend(backend: str) -> None:
    """Refuse, before anything is written, a backend that cannot run here."""
    import importlib.util

    if backend not in ("local", "ray"):
        raise NormlabError(f"{backend!r} is not allowed; choose local or ray", key="backend")
    if backend == "ray":
        check_ray_address()
        _runtime_env()
        if importlib.util.find_spec("ray") is None:
            raise NormlabError(_NEEDS_RAY)


def _ray_task(unit: list[RunTask]) -> list[RunResult]:
    # Ray reuses its workers; train() sets the run's thread count itself (interop threads can be
    # set only once per process, so they are left alone here)
    if os.environ.get("NORMLAB_FAULT") == "worker_import":  # a worker without torch, as a test sees it
        raise ModuleNotFoundError("No module named 'torch'")
    return _run_unit(unit, None)


def ray_connect() -> int:
    """Connect to the cluster named by RAY_ADDRESS, or start a local Ray; return the cluster's CPUs.

    A local Ray listens on the loopback address only, so it runs without token authentication:
    otherwise Ray would write ~/.ray/auth_token, and a later connection to the user's own head (with
    its own token) would be refused. A user's RAY_AUTH_MODE is left as it is."""
    check_ray_address()
    try:
        import ray
    except ImportError:
        raise NormlabError(_NEEDS_RAY) from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        local = address in (None, "local")
        if local:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address=address,
            runtime_env=_runtime_env(),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            **({"_node_ip_address": "127.0.0.1"} if local else {}),
        )
    return int(ray.cluster_resources().get("CPU", 0))


def _runtime_env() -> Optional[dict]:
    """NORMLAB_RAY_RUNTIME_ENV: a JSON Ray runtime_env for the job (e.g. {"pip": ["normlab==0.1.0"]}
    where the cluster's nodes can install packages, or {"env_vars": {...}})."""
    import json

    text = os.environ.get("NORMLAB_RAY_RUNTIME_ENV", "").strip()
    if not text:
        return None
    try:
        env = json.loads(text)
    except json.JSONDecodeError as exc:
        example = '\'{"pip": ["normlab"]}\''
        raise NormlabError(f"NORMLAB_RAY_RUNTIME_ENV is not JSON ({exc.msg}); e.g. {example}") from None
    if not isinstance(env, dict):
        raise NormlabError('NORMLAB_RAY_RUNTIME_ENV must be a JSON object, e.g. \'{"pip": ["normlab"]}\'')
    return env


_WORKER_NEEDS = (
    "every Ray node needs the driver's Python environment: the same Python, torch and normlab "
    "(pip install normlab with the same version on each node, a shared venv, or a runtime_env in "
    "NORMLAB_RAY_RUNTIME_ENV), or {set:backend=local}"
)


def _explain_ray_failure(exc: BaseException) -> NormlabError:
    """One line for a run that failed inside Ray because a worker could not import what it needs."""
    text = str(exc)
    missing = re.search(r"No module named '([\w.]+)'", text)
    if missing:
        return NormlabError(f"a Ray worker could not import {missing[1]}: {_WORKER_NEEDS}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return NormlabError(f"a run failed inside Ray ({first[:200]}); {_WORKER_NEEDS}")


def _execute_ray(
    tasks: list[RunTask],
    units: list[list[RunTask]],
    progress: Progress,
    on_result: Optional[Callable[[RunResult], None]],
) -> list[RunResult]:
    """One Ray task per unit (a run, or an ensemble of packed runs), one CPU and one torch thread
    each. Connects to the cluster named by RAY_ADDRESS, or starts a local Ray. Progress is reported
    per finished run."""
    ray_connect()
    import ray

    remote = ray.remote(num_cpus=1)(_ray_task)
    pending = {remote.remote(unit): unit for unit in units}
    results: dict[str, RunResult] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            finished = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # not a training failure: the worker itself is unfit
            for ref in pending:
                ray.cancel(ref, force=True)
            raise _explain_ray_failure(exc) from None
        for task, res in zip(unit, finished):
            results[task.run_id] = res
            if progress:
                progress(task.run_id, task.config.train.steps, task.config.train.steps)
            if on_result:
                on_result(res)
    return [results[t.run_id] for t in tasks]
