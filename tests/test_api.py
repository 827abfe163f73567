"""The Python API does what the CLI does, and the README's example runs as written."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

import normlab

ROOT = Path(__file__).resolve().parent.parent


def test_run_load_judge_plot_round_trip(tmp_path):
    out = normlab.run("baselines", smoke=True, out=tmp_path / "b", overrides={"run.train.steps": 20})
    assert out.folder == tmp_path / "b" and list(out.claims["claim_id"]) == ["B1-logistic", "B1-mlp", "B1-cnn"]
    folder = normlab.load(out.folder)
    assert set(folder.runs["arm"]) == {"logistic", "mlp", "cnn"} and folder.config["run"]["train"]["steps"] == 20
    assert {"run_id", "step", "metric", "value"} <= set(folder.metrics.columns)
    fresh = normlab.judge(out.folder)
    pd.testing.assert_frame_equal(fresh[["claim_id", "verdict"]], folder.claims[["claim_id", "verdict"]])
    before = {p.name: p.read_bytes() for p in (out.folder / "plots").glob("*.png")}
    assert {p.name for p in normlab.plot(out.folder)} == set(before)
    assert {p.name: p.read_bytes() for p in (out.folder / "plots").glob("*.png")} == before
    report = normlab.report([out.folder], tmp_path / "r.md")
    assert "B1-mlp" in report.read_text()


def test_errors_are_one_line_exceptions_naming_the_key():
    with pytest.raises(normlab.ConfigError, match="run.optim.lerning_rate: unknown key"):
        normlab.run("baselines", overrides={"run.optim.lerning_rate": 0.1}, smoke=True)
    with pytest.raises(normlab.ConfigError, match="neither a known experiment"):
        normlab.run("no_such_experiment")
    with pytest.raises(normlab.NormlabError, match="does not exist"):
        normlab.load("no/such/folder")


def test_list_experiments_names_every_claim():
    table = normlab.list_experiments()
    assert (
        "knockout" in set(table["experiment"])
        and "K1-bestlr" in table.set_index("experiment").loc["knockout", "claims"]
    )
    assert normlab.__version__ != ""


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The ```python block of README.md's API section, run as written (in a scratch folder)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", text, re.S)
    assert block, "README.md has a Python API section with a python example"
    monkeypatch.chdir(tmp_path)  # from any folder: the example reads only what it writes
    exec(compile(block.group(1), "README.md", "exec"), {})


def test_reproduce_runs_the_named_experiments_reuses_finished_ones_and_writes_both_reports(tmp_path):
    seen = []
    first = normlab.reproduce(
        out=tmp_path / "r",
        smoke=True,
        only=["adaptive_gotchas"],
        on_experiment=lambda i, n, name, folder, reused: seen.append((name, reused)),
    )
    assert seen == [("adaptive_gotchas", False)] and [p.name for p in first.reports] == ["report.md", "report.html"]
    assert list(first.claims["adaptive_gotchas"]["claim_id"]) == [
        "K9-adagrad",
        "K9-rmsprop",
        "K9-eps",
        "K10",
        "K10-step",
    ]
    again = normlab.reproduce(
        out=tmp_path / "r",
        smoke=True,
        only=["adaptive_gotchas"],
        on_experiment=lambda i, n, name, folder, reused: seen.append((name, reused)),
    )
    assert seen[-1] == ("adaptive_gotchas", True)
    pd.testing.assert_frame_equal(first.claims["adaptive_gotchas"], again.claims["adaptive_gotchas"])
    with pytest.raises(normlab.ConfigError, match="nope not known"):
        normlab.reproduce(out=tmp_path / "x", only=["nope"])


def test_errors_speak_of_config_keys_in_the_api_and_of_flags_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from normlab.cli.main import app

    paper = ROOT / "configs" / "paper" / "knockout_cifar10.yaml"
    with pytest.raises(normlab.NormlabError) as e:
        normlab.run(paper, overrides={"run.data.root": str(tmp_path / "nowhere")}, out=tmp_path / "o")
    assert "set run.data.download=true" in str(e.value) and "--set" not in str(e.value)
    r = CliRunner().invoke(
        app,
        [
            "run",
            "knockout",
            "--config",
            str(paper),
            "--set",
            f"run.data.root={tmp_path}/nowhere",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 2 and "pass --set run.data.download=true" in r.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(normlab.NormlabError, match=r"choose another output folder \(out\)"):
        normlab.run("baselines", smoke=True, out=tmp_path / "full")
    r = CliRunner().invoke(app, ["run", "baselines", "--smoke", "--out", str(tmp_path / "full")])
    assert r.exit_code == 2 and "choose another output folder (--out)" in r.output


def test_an_error_names_its_key_and_fix_as_config_keys_and_the_cli_spells_them_as_flags():
    import pickle

    from normlab.cli.options import FLAGS

    e = normlab.ConfigError("cuda is not here; {set:run.train.device=cpu|auto}", key="run.train.device")
    assert str(e) == "run.train.device: cuda is not here; set run.train.device to cpu or auto"
    assert e.text(FLAGS) == "--device: cuda is not here; use --device cpu or --device auto"
    f = normlab.NormlabError("{Set:run.data.root=DIR}, or choose another folder ({out})")
    assert str(f) == "Set run.data.root=DIR, or choose another folder (out)"
    assert f.text(FLAGS) == "Pass --set run.data.root=DIR, or choose another folder (--out)"
    back = pickle.loads(pickle.dumps(e))  # as a worker's error reaches the parent process
    assert type(back) is normlab.ConfigError and back.key == e.key and back.text(FLAGS) == e.text(FLAGS)


def test_execution_is_checked_once_when_it_is_built():
    with pytest.raises(normlab.ConfigError, match="^jobs: must be at least 1"):
        normlab.Execution(jobs=0)
    with pytest.raises(normlab.NormlabError, match="^ensemble: '3x' is not allowed"):
        normlab.Execution(ensemble="3x")
    with pytest.raises(normlab.NormlabError, match="^backend: 'slurm' is not allowed"):
        normlab.Execution(backend="slurm")
    with pytest.raises(normlab.ConfigError, match="^run.train.device: 'tpu' is not allowed"):
        normlab.Execution(device="tpu")
    ex = normlab.Execution(jobs=None, ensemble="off")
    assert ex.jobs >= 1 and ex.members == (1, ()) and ex.overrides() == {}
    assert normlab.Execution(device="cpu").overrides("overrides.run.train.device") == {
        "overrides.run.train.device": "cpu"
    }


def test_validate_returns_the_plan_and_its_runs():
    checked = normlab.validate("baselines", {"seeds": 2})
    assert checked.plan.name == "baselines" and checked.runs == 6 and set(checked.arms) == {"logistic", "mlp", "cnn"}
    assert checked.summary.startswith("3 arm(s) x 2 seed(s) = 6 runs")
    assert "experiment: baselines" in checked.yaml


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_a_missing_gpu_stops_a_command_before_any_folder_exists(tmp_path):
    with pytest.raises(normlab.ConfigError, match="^run.train.device: cuda was asked for"):
        normlab.run("baselines", smoke=True, out=tmp_path / "o", overrides={"run.train.device": "cuda"})
    with pytest.raises(normlab.ConfigError, match="^arms.mlp.train.device: cuda was asked for"):
        normlab.validate("baselines", {"arms.mlp.train.device": "cuda"})
    with pytest.raises(normlab.ConfigError, match="^run.train.device: cuda was asked for"):
        normlab.Execution(device="cuda")
    assert list(tmp_path.iterdir()) == []


def test_an_override_that_reaches_no_run_is_an_error_naming_what_sets_that_key():
    """`--set run.optim.lr=...` used to pass (and `validate` said ok) where the arms, the design's LR
    grid or the search space set every run's LR: the user believed they trained at that rate."""
    knockout = normlab.plan("knockout")
    n = len(knockout.experiment.tasks(knockout.config))
    with pytest.raises(normlab.ConfigError, match=rf"^run.optim.lr: reaches none of the {n} runs: design.lr_grid"):
        normlab.plan("knockout", overrides={"run.optim.lr": 0.123})
    with pytest.raises(normlab.ConfigError, match=r"^run.optim.lr: reaches none of the 42 runs: arms.sgd_a0.01.optim"):
        normlab.validate("eff_lr", {"run.optim.lr": 0.123})
    with pytest.raises(normlab.ConfigError, match=r"search.sgd, search.adam"):
        normlab.plan("optimizer_tuning", overrides={"run.optim.lr": 0.123})
    with pytest.raises(normlab.ConfigError, match=r"^overrides.run.optim.lr: .*the sweep's axis axes.optim.lr"):
        normlab.plan_sweep("wd", {"overrides.run.optim.lr": 0.5}, smoke=True)


def test_an_override_that_reaches_some_runs_is_counted_and_the_missed_arms_named():
    layer = normlab.plan("eff_lr", overrides={"run.model.norm": "layer"})
    assert layer.reach == {"run.model.norm": (36, 42)} and layer.notes == [
        "run.model.norm reaches 36 of 42 runs; not weightnorm"
    ]
    # an LR grid's multiples of run.optim.lr are reached too: only the Adam arms set their own
    bn = normlab.plan("bn_placement", overrides={"run.optim.lr": 0.2})
    tasks = bn.experiment.tasks(bn.config)
    sgd = [t for t in tasks if "adam" not in t.arm]
    assert bn.reach["run.optim.lr"] == (len(sgd), len(tasks)) and "before_adam@lr0.001" in bn.notes[0]
    base = normlab.plan("baselines", overrides={"run.train.steps": 300})
    n = len(base.experiment.tasks(base.config))
    assert n == 3 * base.config.seeds and base.reach == {"run.train.steps": (n, n)}


def test_validate_prints_how_many_runs_each_override_reaches():
    from typer.testing import CliRunner

    from normlab.cli.main import app

    r = CliRunner().invoke(app, ["validate", "baselines", "--set", "run.train.steps=300"])
    base = normlab.plan("baselines")
    n = len(base.experiment.tasks(base.config))
    assert r.exit_code == 0 and f"--set run.train.steps: reaches {n} of {n} runs" in r.output
    r = CliRunner().invoke(app, ["validate", "knockout", "--set", "run.optim.lr=0.123"])
    knockout = normlab.plan("knockout")
    n = len(knockout.experiment.tasks(knockout.config))
    assert r.exit_code == 2 and f"reaches none of the {n} runs" in r.output


def test_a_plan_takes_no_second_set_of_overrides(tmp_path):
    p = normlab.plan("baselines", smoke=True, out=tmp_path / "o")
    with pytest.raises(normlab.ConfigError, match="not with a plan"):
        normlab.run(p, overrides={"run.train.steps": 5})
    with pytest.raises(normlab.ConfigError, match="not with a plan"):
        normlab.sweep(normlab.plan_sweep("wd", smoke=True, out=tmp_path / "s"), seeds=1)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_the_manifest_names_the_commit_the_runs_started_from(tmp_path, monkeypatch):
    """The working tree can change while runs train: the manifest names the commit at the start (a
    later commit, or a -dirty one, read at the end would name code that did not run)."""
    from normlab.engine.runner import run as run_module

    trained = []
    train_stage = run_module._train_stage

    def train_and_edit(*args, **kwargs):  # the tree changes while the runs train
        out = train_stage(*args, **kwargs)
        trained.append(True)
        return out

    monkeypatch.setattr(run_module, "_train_stage", train_and_edit)
    monkeypatch.setattr(run_module, "git_commit", lambda: "b" * 40 + "-dirty" if trained else "a" * 40)
    plan = normlab.plan("baselines", smoke=True, out=tmp_path / "out")
    normlab.run(plan)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["git_commit"] == "a" * 40
