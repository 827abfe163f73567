"""What work costs, and how long `reproduce` takes at any number of workers.

Two uses. (1) Ordering: `recorded_costs` reads the runs' recorded seconds from an earlier run of
the same experiments (results/reference/*/runs.csv: `train_seconds`, an ensemble member's being its
share, so the members add up to their ensemble's), which engine.executor.SharedPool uses to start
the costliest work first. (2) The cost model: a side-by-side reproduction writes schedule.csv
(engine.executor.SharedPool.records: every piece of worker work with its duration and every stretch
of in-process work, each tagged with its experiment and its batch, the pieces one wait covers).
`replay` runs that schedule again on W one-thread workers, as the pool would: pieces by cost,
the in-process stretches one at a time, an experiment's next stretch only after its batch has
finished, experiments started in the recorded order. With W unbounded it gives the critical path,
the bound for any cluster (Ray included) of cores of the same speed.

The model assumes what the pool guarantees, one thread per piece, and cores of the recorded speed;
per-piece overheads of a remote cluster (Ray starts a task in about a second; a pool in 2-3 s once)
are added as `overhead_s` per piece.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
import importlib.resources
from pathlib import Path

import pandas as pd


def reference_folders() -> list[Path]:
    """Where earlier runs' costs may be: $NORMLAB_RESULTS/reference (or ./results/reference), and the
    reference shipped in a checkout next to the package."""
    from .results import results_root

    here = Path(__file__).resolve().parents[1] / "results" / "reference"
    return [p for p in dict.fromkeys([results_root() / "reference", here]) if p.is_dir()]


# The reproduction's measured schedule, shipped with the package (normlab.configs): `normlab cost`'s
# default. A change that adds work to the reproduction ships a new one; until then `cost` names the
# experiments it lacks.
SHIPPED_SCHEDULE = (
    Path(str(importlib.resources.files("normlab.configs"))) / "schedules" / "reproduce-cpu-2026-12-05.csv"
)


def recorded_costs(names: list[str]) -> dict[str, dict[str, float]]:
    """experiment -> run_id -> recorded seconds, from the first reference folder that has its runs.csv."""
    from .results import read_runs

    out: dict[str, dict[str, float]] = {}
    for name in names:
        for root in reference_folders():
            if (root / name / "runs.csv").is_file():
                runs = read_runs(root / name)
                if "train_seconds" in runs:
                    out[name] = dict(zip(runs["run_id"], runs["train_seconds"].fillna(0.0).astype(float)))
                break
    return out


def recorded_wall(name: str) -> float | None:
    """The recorded wall seconds of an experiment's last reference run (its manifest), if any."""
    import json

    for root in reference_folders():
        path = root / name / "manifest.json"
        if path.is_file():
            return float(json.loads(path.read_text()).get("wall_seconds", 0.0))
    return None


def experiment_seconds(name: str, exp, cfg, known: dict[str, float]) -> float:
    """How long an experiment is expected to take (to start the longest first): its recorded wall
    time, else the sum of its first stage's run costs."""
    from .executor import _size_estimate

    wall = recorded_wall(name)
    if wall is not None:
        return wall
    return sum(known.get(t.run_id, _size_estimate(t)) for t in exp.tasks(cfg))


@dataclass
class Replay:
    workers: int | None  # None: unbounded (the critical path)
    wall_s: float
    busy_s: float  # worker-seconds of work
    finished: dict[str, float]  # experiment -> when it finished

    @property
    def utilization(self) -> float:
        return self.busy_s / (self.wall_s * self.workers) if self.workers and self.wall_s else float("nan")


def replay(schedule: pd.DataFrame, workers: int | None, overhead_s: float = 0.0) -> Replay:
    """The schedule's wall time on `workers` one-thread workers (None: as many as there is work)."""
    s = schedule.copy()
    s["duration"] = (s["finished"] - s["started"]).clip(lower=0.0)
    s = s[s["started"].notna()]
    first_start = s.groupby("experiment")["submitted"].min().sort_values()
    order = list(first_start.index)  # the order the experiments started in
    mains: dict[str, dict[int, float]] = {e: {} for e in order}
    pieces: dict[str, dict[int, list[tuple[float, float]]]] = {e: {} for e in order}
    for r in s.itertuples():
        if r.kind == "main":
            mains[r.experiment][int(r.batch)] = mains[r.experiment].get(int(r.batch), 0.0) + float(r.duration)
        else:
            pieces[r.experiment].setdefault(int(r.batch), []).append((float(r.cost), float(r.duration) + overhead_s))
    batches = {e: sorted(set(mains[e]) | set(pieces[e])) for e in order}

    # events: (time, sequence, kind, payload)
    events: list = []
    seq = iter(range(10**9))
    t = 0.0
    lock_free_at = 0.0
    lock_queue: list[tuple[str, int]] = []  # experiments waiting for the main lock, FIFO
    lock_busy = False
    ready: list = []  # heap of (-cost, seq, experiment, batch, duration)
    free = workers if workers is not None else 10**9
    busy = 0.0
    outstanding: dict[tuple[str, int], int] = {}
    step = {e: 0 for e in order}
    finished: dict[str, float] = {}
    started_next = {e: False for e in order}

    def request_lock(e: str) -> None:
        lock_queue.append((e, batches[e][step[e]]))

    def start_experiment(i: int) -> None:
        if i < len(order):
            request_lock(order[i])

    start_experiment(0)
    while True:
        # the lock: one in-process stretch at a time, FIFO
        if not lock_busy and lock_queue:
            e, b = lock_queue.pop(0)
            lock_busy = True
            heapq.heappush(events, (max(t, lock_free_at) + mains[e].get(b, 0.0), next(seq), "released", (e, b)))
        while free > 0 and ready:
            _, _, e, b, d = heapq.heappop(ready)
            free -= 1
            busy += d
            heapq.heappush(events, (t + d, next(seq), "piece", (e, b)))
        if not events:
            break
        t, _, kind, (e, b) = heapq.heappop(events)
        if kind == "released":
            lock_busy, lock_free_at = False, t
            if not started_next[e]:  # the next experiment starts once this one has let go the first time
                started_next[e] = True
                start_experiment(order.index(e) + 1)
            work = pieces[e].get(b, [])
            if work:
                outstanding[(e, b)] = len(work)
                for cost, d in work:
                    heapq.heappush(ready, (-cost, next(seq), e, b, d))
            else:
                _advance(e, step, batches, finished, t, request_lock)
        else:
            free += 1
            outstanding[(e, b)] -= 1
            if outstanding[(e, b)] == 0:
                _advance(e, step, batches, finished, t, request_lock)
    return Replay(workers, t, busy, finished)


def _advance(e, step, batches, finished, t, request_lock) -> None:
    step[e] += 1
    if step[e] < len(batches[e]):
        request_lock(e)
    else:
        finished[e] = t


def model_table(schedule: pd.DataFrame, workers=(2, 4, 8, 16, 64), ray_overhead_s: float = 1.0) -> pd.DataFrame:
    """The replayed wall time at each worker count, on a Ray cluster of each size (per-task overhead
    added), and the critical path (unbounded workers): the table docs/speed.md shows."""
    rows = []
    for w in workers:
        local, ray = replay(schedule, w), replay(schedule, w, overhead_s=ray_overhead_s)
        rows.append({"workers": w, "local_minutes": local.wall_s / 60, "ray_minutes": ray.wall_s / 60,
                     "utilization": local.utilization})  # fmt: skip
    bound = replay(schedule, None)
    rows.append({"workers": "unbounded (critical path)", "local_minutes": bound.wall_s / 60,
                 "ray_minutes": replay(schedule, None, overhead_s=ray_overhead_s).wall_s / 60,
                 "utilization": float("nan")})  # fmt: skip
    return pd.DataFrame(rows)


def model_table_of(
    path: Path | None, workers=(2, 4, 8, 16, 64), ray_overhead_s: float = 1.0, experiments: tuple[str, ...] = ()
) -> pd.DataFrame:
    """`model_table` of a schedule.csv file (None: the reference schedule normlab ships, SHIPPED_SCHEDULE),
    its arguments checked (one clear error each). `table.attrs`: "schedule" (its path) and "lacks"
    (the `experiments` that have no work in it: added after it was measured, so not in its figures)."""
    from .errors import ConfigError, count_or_none

    path = SHIPPED_SCHEDULE if path is None else Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path} is not a file; give the schedule.csv that `normlab reproduce --jobs N` (N > 1) wrote into "
            "its output folder, or none for the measured reference schedule normlab ships"
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
    out = model_table(table, tuple(counts), ray_overhead_s)
    ran = set(table["experiment"].dropna())
    out.attrs.update(schedule=str(path), lacks=[e for e in experiments if e not in ran])
    return out
