"""`normlab sweep`: grid expansion, resuming, and surviving a kill at any moment."""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

import normlab
from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.engine.sweep import expand

runner = CliRunner()


def sweep(*args):
    return runner.invoke(app, ["sweep", *[str(a) for a in args]])


def test_expand_is_the_product_of_the_axes():
    grid = expand({"optim.lr": [0.1, 1.0], "optim.weight_decay": [0.001, 0.01, 0.1]})
    assert len(grid) == 6
    assert grid["lr=1,wd=0.01"] == {"optim.lr": 1.0, "optim.weight_decay": 0.01}


def test_rerun_skips_finished_cells_and_reruns_failed_ones(tmp_path):
    out = tmp_path / "wd"
    r = sweep("wd", "--smoke", "--jobs", "1", "--out", out)
    assert r.exit_code == 0, r.output
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 8 and runs["run_id"].is_unique  # 2 x 2 grid x 2 seeds
    metrics = (out / "metrics.csv").read_bytes()

    r = sweep("wd", "--smoke", "--jobs", "1", "--out", out)
    assert r.exit_code == 0 and "8 already finished, 0 to run" in r.output
    assert (out / "metrics.csv").read_bytes() == metrics

    cell = sorted((out / "cells").glob("*.json"))[0]
    row = json.loads(cell.read_text())
    cell.write_text(json.dumps({**row, "status": "failed"}))
    r = sweep("wd", "--smoke", "--jobs", "1", "--out", out)
    assert r.exit_code == 0 and "7 already finished, 1 to run" in r.output
    assert (out / "metrics.csv").read_bytes() == metrics  # same seed, same numbers


@pytest.mark.parametrize(
    "fault,done_before,tmp_left",
    [
        ("cell_saved:3", 3, False),  # kill -9 between two runs
        ("cell_write:4", 3, True),  # kill -9 half way through writing the 4th cell
    ],
)
def test_a_sweep_killed_midway_resumes_with_nothing_lost_or_duplicated(fault, done_before, tmp_left, tmp_path):
    """Deterministic fault injection (NORMLAB_FAULT), not timing: the kill lands where it is told."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert sweep("wd", "--smoke", "--jobs", "1", "--out", clean).exit_code == 0
    cmd = [sys.executable, "-m", "normlab.cli.main", "sweep", "wd", "--smoke", "--jobs", "1", "--out", str(killed)]
    proc = subprocess.run(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "NORMLAB_FAULT": fault},
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL
    assert len(list((killed / "cells").glob("*.json"))) == done_before
    assert bool(list((killed / "cells").glob(".*.tmp"))) == tmp_left
    r = sweep("wd", "--smoke", "--jobs", "1", "--out", killed)
    assert r.exit_code == 0, r.output
    assert f"{done_before} already finished, {8 - done_before} to run" in r.output
    for name in ("runs.csv", "metrics.csv", "claims.csv"):
        a, b = pd.read_csv(clean / name), pd.read_csv(killed / name)
        if "train_seconds" in a:
            a, b = a.drop(columns="train_seconds"), b.drop(columns="train_seconds")
        pd.testing.assert_frame_equal(a, b)
    assert not list((killed / "cells").glob(".*.tmp"))


def test_validate_accepts_sweep_files():
    from normlab.engine.runner import SWEEP_ROOT

    r = runner.invoke(app, ["validate", str(SWEEP_ROOT / "wd.yaml")])
    assert r.exit_code == 0 and "9 arm(s) x 5 seed(s) = 45 runs" in " ".join(r.output.split())


def test_sweep_overrides_and_bad_input(tmp_path):
    r = sweep("wd", "--smoke", "--jobs", "1", "--out", tmp_path / "one", "--set", "axes.optim.lr=[0.5]")
    assert r.exit_code == 0, r.output
    assert set(pd.read_csv(tmp_path / "one" / "runs.csv")["optim.lr"]) == {0.5}
    r = sweep("nope")
    assert r.exit_code == 2 and "'nope' is neither a sweep (wd)" in r.output
    r = sweep("wd", "--smoke", "--set", "axes.optim.lr=[]", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "axes.optim.lr: needs at least one value" in r.output


def test_cells_with_different_inserted_modules_get_different_keys():
    from normlab.engine.runner import load_config
    from normlab.experiments import REGISTRY
    from normlab.engine.runner.run import module_key as _module_key

    exp, cfg = load_config(REGISTRY["knockout"].default_config, REGISTRY)
    noisy = lambda: next(t.after_norm for t in exp.tasks(cfg) if t.arm == "noise1-lr0.1")  # noqa: E731
    a = _module_key(noisy())
    cfg.noise.scale_max = 2.0
    b = _module_key(noisy())
    other_level = next(t.after_norm for t in exp.tasks(cfg) if t.arm == "noise0.3-lr0.1")
    assert a != b != _module_key(other_level) and "scale_max" in a and _module_key(None) == ""


def test_an_ad_hoc_grid_runs_every_arm_at_every_point_judges_each_point_and_resumes(tmp_path):
    """`normlab sweep EXPERIMENT --grid run.KEY=V1,V2`, as Hydra's multirun users expect: the experiment
    whole at every point of the product of the axes (cells = arms x points x seeds), each point a run
    folder of its own whose claims are judged there, with the same cells and resume as a sweep file."""
    import json

    args = ["sweep", "baselines", "--smoke", "--grid", "run.optim.lr=0.01,0.1", "--grid", "run.train.batch_size=32,128"]
    args += ["--out", str(tmp_path / "g"), "--jobs", "1"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    points = ["lr=0.01,batch_size=32", "lr=0.01,batch_size=128", "lr=0.1,batch_size=32", "lr=0.1,batch_size=128"]
    assert doc["points"] == points and len(doc["runs"]) == 3 * 4  # the three arms at each of the four points
    for point in points:
        runs = pd.read_csv(tmp_path / "g" / point / "runs.csv")
        assert sorted(runs["arm"]) == ["cnn", "logistic", "mlp"]  # the experiment's own arms, none dropped
        lr, batch = (float(x.split("=")[1]) for x in point.split(","))
        assert set(runs["optim.lr"]) == {lr} and set(runs["train.batch_size"]) == {batch}
        claims = pd.read_csv(tmp_path / "g" / point / "claims.csv")
        assert list(claims["claim_id"]) == ["B1-logistic", "B1-mlp", "B1-cnn"]  # judged per point
        assert [c["claim_id"] for c in doc["claims"] if c["claim_id"].endswith(f"@{point}")] == [
            f"{c} @{point}" for c in claims["claim_id"]
        ]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and again.output.count("3 cells, 3 already finished, 0 to run") == 4
    report = CliRunner().invoke(app, ["report", str(tmp_path / "g"), "--out", str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert report.exit_code == 0 and all(f"sweep baselines-grid {p}" in text for p in points)
    assert "not run (no run folder given)" not in text  # a grid's folder is not a reproduction missing experiments


def test_a_grid_key_an_arm_sets_itself_is_refused_naming_the_arm():
    """An arm that sets the grid's key would train its own value at every point: refused, not dropped."""
    with pytest.raises(normlab.ConfigError, match=r"arms.logistic.model.depth sets it for arm logistic"):
        normlab.plan_sweep("baselines", grid={"run.model.depth": [1, 3]})
    r = CliRunner().invoke(app, ["sweep", "eff_lr", "--grid", "run.optim.lr=0.05,0.2"])
    assert r.exit_code == 2 and "arms.sgd_a0.01.optim.lr sets it for arm sgd_a0.01" in " ".join(r.output.split())
    assert "--grid" in r.output
    with pytest.raises(
        normlab.ConfigError, match=r"identities trains no runs, so a grid over run.\* keys would change"
    ):
        normlab.plan_sweep("identities", grid={"run.optim.lr": [0.01, 0.1]})


def test_a_sweep_files_rows_that_cannot_be_judged_there_say_why(tmp_path):
    """A sweep file's grid points replace the experiment's arms: B1 compares an architecture's published
    accuracy, so in a folder without that arm its rows are `not judged` with the reason, never `nan`."""
    sweep = tmp_path / "mine.yaml"
    sweep.write_text("sweep: mine\nexperiment: baselines\naxes: {optim.lr: [0.05, 0.2]}\nseeds: 1\n"
                     "overrides: {run.train.steps: 10}\n")  # fmt: skip
    out = normlab.sweep(sweep, out=tmp_path / "s", execution=normlab.Execution(jobs=1))
    assert list(out.claims["verdict"]) == ["not judged"] * 3
    assert all("this folder has no" in d and "lr=0.05" in d for d in out.claims["detail"])


def test_a_grid_needs_a_run_key_and_values():
    import normlab

    with pytest.raises(normlab.ConfigError, match=r"^grid: expected run.KEY=V1,V2"):
        normlab.plan_sweep("baselines", grid={"optim.lr": [0.1]})
    r = CliRunner().invoke(app, ["sweep", "baselines", "--grid", "run.optim.lr"])
    assert r.exit_code == 2 and "--grid 'run.optim.lr': expected KEY=V1,V2" in r.output
