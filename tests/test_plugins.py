"""A user's own dataset, model and optimizer, added through a plugin module without editing normlab."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import normlab
from normlab.engine import plugins as PL
from normlab.engine.config import ConfigError
from normlab.engine.runs import RunTask
from normlab.engine.spec import RunConfig
from normlab.engine.train import train
from normlab.engine import config as C

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "tests" / "plugins"
RUN = {
    "plugins": ["blob_plugin"],
    "data": {"name": "blobs", "num_samples": 300},
    "model": {"arch": "tiny", "width": 16},
    "optim": {"name": "signsgd", "lr": 0.01, "schedule": "cosine"},
    "train": {"steps": 60, "batch_size": 32, "eval_every": 60},
    "probes": {"every": 20, "preacts": False},
}


@pytest.fixture(autouse=True)
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))


def test_a_plugin_dataset_model_and_optimizer_train_through_the_engine():
    cfg = C.from_dict(RunConfig, RUN)
    res = train(RunTask("p", "p", 0, cfg))
    assert res.status == "ok" and res.final["test_acc"] > 0.6  # three well-separated blobs
    lrs = [r.value for r in res.rows if r.metric == "lr"]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] < lrs[0]  # the engine's schedule drives the plugin optimizer
    assert {r.layer for r in res.rows if r.metric == "weight_norm_sq"} == {"1", "3"}  # its Linear layers, probed


def test_a_plugin_runs_from_a_config_file_through_the_api(tmp_path):
    cfg = {"experiment": "baselines", "run": RUN, "arms": {}, "seeds": 2}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = normlab.run(path, out=tmp_path / "out")
    runs = pd.read_csv(out.folder / "runs.csv")
    assert list(runs["status"]) == ["ok", "ok"] and runs["final_test_acc"].gt(0.6).all()
    assert json.loads((out.folder / "manifest.json").read_text())["runs"]  # a complete run folder


def test_unknown_names_list_the_plugin_ones_and_a_missing_module_is_one_clear_error():
    PL.load_plugins(["blob_plugin"])
    with pytest.raises(ConfigError, match=r"data.name: 'blob' is not a known name; choose one of .*blobs"):
        C.from_dict(RunConfig, {**RUN, "data": {"name": "blob"}})
    with pytest.raises(ConfigError, match=r"plugins: cannot import 'no_such_plugin' .* PYTHONPATH"):
        C.from_dict(RunConfig, {**RUN, "plugins": ["no_such_plugin"]})


def test_entry_points_are_loaded(monkeypatch):
    loaded = []

    class EP:
        name, value = "mine", "mine:register"

        def load(self):
            loaded.append(self.name)

    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group: [EP()] if group == PL.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(PL, "_entry_points_loaded", False)
    PL.load_plugins([])
    assert loaded == ["mine"]


def test_a_plugin_file_in_the_folder_a_command_runs_from_is_found(tmp_path):
    """`normlab` run from the folder that holds a plugin module finds it without PYTHONPATH (as the
    error message promises), in the command and in its pool workers; plot and report of that run
    folder work from there too."""
    import os
    import shutil
    import subprocess
    import sys

    shutil.copy(ROOT / "examples" / "ci" / "my_plugin.py", tmp_path / "cwd_plugin_example.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [str(Path(sys.executable).parent / "normlab")]  # the console script: `python -m` would add the cwd itself
    sets = ["--set", "run.plugins=[cwd_plugin_example]", "--set", "run.optim.name=sign_sgd"]
    run = [*cmd, "run", "baselines", "--smoke", *sets, "--set", "run.train.steps=5", "--jobs", "2", "--out", "own"]
    r = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    for args in (["plot", "own"], ["report", "own", "--out", "report.md"]):
        r = subprocess.run([*cmd, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-1500:]
    assert (tmp_path / "own" / "plots" / "baselines.pdf").is_file() and (tmp_path / "report.md").is_file()


def test_a_run_whose_runs_crash_finishes_its_folder_logs_each_traceback_and_exits_1(tmp_path):
    """Crashed runs are errors, diverged runs are data: a user's CI must be able to fail on a crash."""
    from typer.testing import CliRunner

    from normlab.cli.main import app

    cfg = {"experiment": "baselines", "run": {**RUN, "plugins": ["crash_plugin", "blob_plugin"],
           "optim": {"name": "boom", "lr": 0.01}}, "arms": {}, "seeds": 2}  # fmt: skip
    path = tmp_path / "crash.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "--jobs", "1"])
    assert r.exit_code == 1, r.output
    assert "2 of 2 run(s) crashed; first: main-s0: RuntimeError: boom: the plugin optimizer failed" in r.output
    log = (tmp_path / "o" / "crashes.log").read_text()
    assert log.count("== main-s") == 2 and "in step" in log and "Traceback" in log  # the whole traceback
    assert (tmp_path / "o" / "claims.csv").is_file()  # the folder is finished all the same
    runs = pd.read_csv(tmp_path / "o" / "runs.csv")
    assert list(runs["status"]) == ["failed", "failed"]
    out = normlab.load(tmp_path / "o")
    assert [rid for rid, _ in normlab.run(path, out=tmp_path / "p").crashes] == ["main-s0", "main-s1"]
    assert out.runs["error"].str.startswith("RuntimeError: boom").all()
