"""`normlab export --to tensorboard`: the event files, read back by TensorBoard's own reader, hold
every metric series and each run's hyperparameters exactly as the run folder's CSVs do."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.engine.results import load_tables

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "baselines"


def _read(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _hparams(acc: EventAccumulator) -> dict:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    out = {}
    for k, v in info.hparams.items():
        kind = v.WhichOneof("kind")
        out[k] = getattr(v, kind)
    return out


def test_every_series_and_the_hyperparameters_read_back_as_written(tmp_path):
    out = tmp_path / "tb"
    r = CliRunner().invoke(app, ["export", str(REFERENCE), "--to", "tensorboard", "--out", str(out)])
    assert r.exit_code == 0, r.output
    tables = load_tables(REFERENCE)
    assert sorted(p.name for p in out.iterdir()) == sorted(tables.runs["run_id"])
    for run_id in ("mlp-s0", "cnn-s3"):
        acc = _read(out / run_id)
        m = tables.metrics[tables.metrics["run_id"] == run_id]
        for metric in ("train_loss", "test_acc"):
            want = m[(m["metric"] == metric) & (m["stat"] == "value")].sort_values("step")
            got = acc.Scalars(metric)
            assert [e.step for e in got] == want["step"].tolist()
            assert [e.value for e in got] == pytest.approx(want["value"].tolist(), rel=1e-6)  # float32 in events
        run = tables.runs.set_index("run_id").loc[run_id]
        hp = _hparams(acc)
        assert hp["arm"] == run["arm"] and hp["seed"] == pytest.approx(run["seed"])
        assert hp["optim.lr"] == pytest.approx(run["optim.lr"]) and hp["model.arch"] == run["model.arch"]
        assert hp["status"] == "ok"
        final = acc.Scalars("hparam/final_test_acc")
        assert final[0].value == pytest.approx(run["final_test_acc"], rel=1e-6)


def test_export_refuses_an_existing_folder_and_an_unknown_target(tmp_path):
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "old.txt").write_text("an earlier export")
    r = CliRunner().invoke(app, ["export", str(REFERENCE), "--out", str(tmp_path / "tb")])
    words = " ".join(r.output.split())
    assert r.exit_code == 2 and "tb exists; choose another output folder (--out) or replace it (--overwrite)" in words
    # --overwrite replaces it, as `normlab report --overwrite` replaces a report (one rule for both)
    r = CliRunner().invoke(app, ["export", str(REFERENCE), "--out", str(tmp_path / "tb"), "--overwrite", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["folder"] == str(tmp_path / "tb") and not (tmp_path / "tb" / "old.txt").exists()
    assert sorted(Path(p).name for p in doc["runs"]) == sorted(p.name for p in (tmp_path / "tb").iterdir())
    # ... but never over the run folder it reads
    copy = tmp_path / "runs" / "baselines"
    copy.mkdir(parents=True)
    for f in ("config.yaml", "runs.csv", "metrics.csv", "claims.csv", "manifest.json"):
        (copy / f).write_bytes((REFERENCE / f).read_bytes())
    r = CliRunner().invoke(app, ["export", str(copy), "--out", str(copy.parent), "--overwrite"])
    assert r.exit_code == 2 and "holds the run folder" in r.output and (copy / "runs.csv").is_file()
    r = CliRunner().invoke(app, ["export", str(REFERENCE), "--to", "wandb", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "'wandb' is not a target normlab exports to; choose tensorboard" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    r = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "y.partial").exists()


def test_a_reproduce_folder_exports_each_experiment_under_its_name(tmp_path):
    root = tmp_path / "repro"
    for name in ("baselines", "fisher"):
        src = REFERENCE.parent / name
        (root / name).mkdir(parents=True)
        for f in ("config.yaml", "runs.csv", "metrics.csv", "claims.csv", "manifest.json"):
            (root / name / f).write_bytes((src / f).read_bytes())
    r = CliRunner().invoke(app, ["export", str(root), "--out", str(tmp_path / "tb")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "tb" / "baselines" / "mlp-s0").is_dir()
    n = len(load_tables(root / "baselines", metrics=False).runs)
    assert len(list((tmp_path / "tb" / "baselines").iterdir())) == n


def test_without_tensorboard_installed_the_error_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    r = CliRunner().invoke(app, ["export", str(REFERENCE), "--out", str(tmp_path / "tb")])
    assert r.exit_code == 2 and "pip install 'normlab[export]'" in " ".join(r.output.split())
    assert not (tmp_path / "tb").exists() and not (tmp_path / "tb.partial").exists()


def test_the_default_folder_sits_beside_the_first_run_folder_and_is_returned(tmp_path):
    import shutil

    import normlab

    run = tmp_path / "baselines"
    shutil.copytree(REFERENCE, run)
    done = normlab.export([run])
    assert done.folder == tmp_path / "baselines-tensorboard" and done.folder.is_dir()
    assert sorted(done.runs) == sorted(done.folder / r for r in load_tables(run).runs["run_id"])
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "tb")])
    n = len(load_tables(run, metrics=False).runs)
    assert f"wrote {n} TensorBoard run folders under {tmp_path / 'tb'}" in " ".join(r.output.split())
