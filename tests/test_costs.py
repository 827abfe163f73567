"""Experiments side by side (engine.executor.SharedPool, normlab.reproduce with more than one
worker) and the cost model that replays their schedule (engine/costs.py)."""

import time

import pandas as pd
import pytest

import normlab
from normlab.engine.costs import model_table, replay
from normlab.engine.executor import SharedPool


def _schedule(rows):
    cols = ["kind", "experiment", "batch", "cost", "submitted", "started", "finished"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


# Experiment a: 1 s in-process, then pieces of 4, 3 and 1 s, then 1 s in-process (its analysis).
# Experiment b: 1 s in-process, then one piece of 6 s, then 1 s in-process.
SCHEDULE = _schedule([
    ("main", "a", 0, 0.0, 0.0, 0.0, 1.0),
    ("work", "a", 0, 4.0, 1.0, 1.0, 5.0),
    ("work", "a", 0, 3.0, 1.0, 1.0, 4.0),
    ("work", "a", 0, 1.0, 1.0, 4.0, 5.0),
    ("main", "a", 1, 0.0, 5.0, 5.0, 6.0),
    ("main", "b", 0, 0.0, 1.0, 1.0, 2.0),
    ("work", "b", 0, 6.0, 2.0, 5.0, 11.0),
    ("main", "b", 1, 0.0, 11.0, 11.0, 12.0),
])  # fmt: skip


def test_the_replay_gives_the_hand_computed_walls():
    # one worker: a's pieces 4 + 3 + 1 (t = 1..9), b's 6 after (9..15), b's analysis 15..16
    assert replay(SCHEDULE, 1).wall_s == pytest.approx(16.0)
    # two workers: a's 4 (1..5) and 3 (1..4); b's 6 starts at 4 (it waited for the lock till 2, then
    # for a worker: cost 6 beats a's 1), a's 1 on 5..6; a's analysis 6..7, b's 10..11
    two = replay(SCHEDULE, 2)
    assert two.wall_s == pytest.approx(11.0) and two.finished == {"a": pytest.approx(7.0), "b": pytest.approx(11.0)}
    assert two.busy_s == pytest.approx(14.0) and two.utilization == pytest.approx(14.0 / 22.0)
    # unbounded: b's 6 s piece from t = 2 and its analysis: the critical path
    assert replay(SCHEDULE, None).wall_s == pytest.approx(9.0)
    table = model_table(SCHEDULE, workers=(1, 2))
    assert list(table["local_minutes"] * 60) == pytest.approx([16.0, 11.0, 9.0])
    assert all(table["ray_minutes"] >= table["local_minutes"])  # per-task overhead only adds


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_the_shared_pool_runs_the_costliest_waiting_work_first():
    pool = SharedPool(1)
    try:
        first = pool.submit(_sleep, 1.0, cost=0.0)  # occupies the one worker while the rest queue
        later = [pool.submit(_sleep, 0.01, cost=c) for c in (1.0, 5.0, 3.0)]
        assert [f.result(timeout=120) for f in [first, *later]] == [1.0, 0.01, 0.01, 0.01]
        assert pool.map(_sleep, [0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]
    finally:
        pool.close()
    work = [r for r in pool.records if r["kind"] == "work"][:4]
    started = sorted(work[1:], key=lambda r: r["started"])
    assert [r["cost"] for r in started] == [5.0, 3.0, 1.0]


def test_side_by_side_reproduce_writes_the_files_of_running_one_by_one(tmp_path):
    # derived tables through the pool (exp_lr), in-process ones (identities) and training runs (eff_lr)
    only = ["eff_lr", "exp_lr", "identities"]
    serial = normlab.reproduce(out=tmp_path / "serial", smoke=True, only=only)
    shared = normlab.reproduce(out=tmp_path / "shared", smoke=True, only=only, execution=normlab.Execution(jobs=2))
    schedule = pd.read_csv(shared.root / "schedule.csv")
    assert set(schedule["experiment"]) == set(only) and not (serial.root / "schedule.csv").exists()
    for name in only:
        a, b = serial.folders[name], shared.folders[name]
        files = sorted(p.relative_to(a) for p in a.glob("*.csv") if p.name != "runs.csv")
        assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files), name
        runs = [pd.read_csv(f / "runs.csv") for f in (a, b)]
        timing = [c for c in runs[0].columns if c.endswith("seconds")]
        pd.testing.assert_frame_equal(runs[0].drop(columns=timing), runs[1].drop(columns=timing))
    # the replay of its own schedule at its worker count is its measured wall, within 10%
    measured = schedule["finished"].max()
    assert replay(schedule, 2).wall_s == pytest.approx(measured, rel=0.10)


def test_normlab_cost_prints_the_replayed_table_and_refuses_bad_input(tmp_path):
    from typer.testing import CliRunner

    from normlab.cli.main import app

    path = tmp_path / "schedule.csv"
    SCHEDULE.to_csv(path, index=False)
    r = CliRunner().invoke(app, ["--plain", "cost", str(path), "--workers", "1,2"])
    assert r.exit_code == 0, r.output
    lines = [" ".join(x.replace("│", " ").split()) for x in r.output.splitlines()]
    assert any(x.startswith("1 0.3 0.3") for x in lines)  # 16 s = 0.3 min
    assert any(x.startswith("unbounded (critical path) 0.1") for x in lines)  # 9 s
    table = normlab.cost_model(path, [1, 2])
    assert list(table["local_minutes"] * 60) == pytest.approx([16.0, 11.0, 9.0])
    for args, message in (
        ([str(tmp_path / "none.csv")], "is not a file"),
        ([str(path), "--workers", "0"], "is not a number of workers"),
    ):
        bad = CliRunner().invoke(app, ["--plain", "cost", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    bad = CliRunner().invoke(app, ["--plain", "cost", str(tmp_path / "other.csv")])
    assert bad.exit_code == 2 and "lacks" in bad.output


def test_closing_the_pool_cancels_what_waits_and_lets_what_runs_finish():
    pool = SharedPool(1)
    running = pool.submit(_sleep, 1.0)
    waiting = [pool.submit(_sleep, 0.0, cost=c) for c in (1.0, 2.0)]
    time.sleep(0.2)
    pool.close(cancel=True)
    assert all(f.cancelled() for f in waiting)
    assert running.result(timeout=120) == 1.0
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(_sleep, 0.0)


def test_normlab_cost_defaults_to_the_shipped_schedule_and_names_what_it_lacks(tmp_path, monkeypatch):
    """A wheel has no results/reproduce: `normlab cost` with no argument replays the reference
    reproduction's schedule shipped with the package, and names any experiment it has no work of."""
    import json

    from typer.testing import CliRunner

    from normlab.cli.main import app
    from normlab.engine import costs

    monkeypatch.chdir(tmp_path)  # no checkout around: the default must come from the package
    r = CliRunner().invoke(app, ["cost", "--json", "--workers", "2"])
    doc = json.loads(r.stdout)
    shipped = pd.read_csv(costs.SHIPPED_SCHEDULE)
    assert r.exit_code == 0 and doc["schedule"] == str(costs.SHIPPED_SCHEDULE) and doc["lacks"] == []
    assert doc["rows"][0]["workers"] == 2 and doc["rows"][0]["local_minutes"] == pytest.approx(
        costs.replay(shipped, 2).wall_s / 60
    )
    lacking = tmp_path / "schedule.csv"
    shipped[shipped["experiment"] != "fisher"].to_csv(lacking, index=False)
    r = CliRunner().invoke(app, ["--plain", "cost", str(lacking), "--workers", "2"])
    assert r.exit_code == 0 and "has no work of fisher" in " ".join(r.output.split())
