"""The command line as a user meets it: exit codes, one-line errors, files, regenerable plots."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import normlab
from normlab.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_list_names_every_experiment_and_config():
    r = invoke("list")
    assert r.exit_code == 0 and "baselines" in r.output and "baselines.yaml" in r.output


def test_validate_ok_and_typo(tmp_path):
    r = invoke("validate", "baselines")
    seeds = normlab.plan("baselines").config.seeds
    assert r.exit_code == 0 and f"3 arm(s) x {seeds} seed(s) = {3 * seeds} runs" in r.output
    bad = tmp_path / "typo.yaml"
    bad.write_text("experiment: baselines\nrun:\n  optim: {lerning_rate: 0.1}\n")
    r = invoke("validate", bad)
    assert r.exit_code == 2
    assert "run.optim.lerning_rate: unknown key" in one_error_line(r)


@pytest.mark.parametrize(
    "args,expected",
    [
        (("run", "nonexistent"), "'nonexistent' is neither a known experiment"),
        (("validate", "missing.yaml"), "config file not found: missing.yaml"),
        (("run", "baselines", "--set", "run.train.steps=ten"), "run.train.steps: expected an integer"),
        (("run", "baselines", "--set", "oops"), "expected KEY=VALUE"),
        (("run", "baselines", "--jobs", "0"), "--jobs: must be at least 1"),
        (("run", "baselines", "--device", "tpu"), "--device: 'tpu' is not allowed"),
        (("bench", "--device", "gpu"), "--device: 'gpu' is not allowed"),
        (("plot", "no/such/run"), "no/such/run does not exist"),
        (("run", "baselines", "--set", "run.optim.lr=.nan"), "run.optim.lr: nan is not a finite number"),
        (("run", "baselines", "--set", "run.optim.lr=.inf"), "run.optim.lr: inf is not a finite number"),
        # a value float32 (the training dtype) cannot hold is bad input, found when the config is checked
        (("run", "baselines", "--set", "run.optim.lr=1e300"), "run.optim.lr: 1e+300 cannot be held by float32"),
        (("validate", "baselines", "--set", "run.optim.lr=1e300"), "run.optim.lr: 1e+300 cannot be held by float32"),
        (("run", "baselines", "--set", "run.model.norm_init_scale=1e39"), "norm_init_scale: 1e+39 cannot be held"),
        (("run", "knockout", "--set", "run.probes.every=0"), "knockout needs probes.every > 0"),
        (("run", "bn_placement", "--set", "run.probes.inputs=false"), "run.probes.inputs=true"),
        (("run", "eff_lr", "--set", "run.probes.weights=false"), "eff_lr needs probes.every > 0"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, expected, tmp_path):
    r = invoke(*args, "--out", tmp_path / "o") if args[0] == "run" else invoke(*args)
    assert r.exit_code == 2
    assert expected in one_error_line(r)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_bench_on_a_missing_gpu_names_the_way_out():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = invoke("bench", "--device", "cuda", "--steps", "10", "--repeats", "1")
    assert r.exit_code == 2
    assert "no CUDA device is visible" in one_error_line(r) and "--device cpu" in one_error_line(r)


def test_a_binary_file_as_config_is_one_clear_line(tmp_path):
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe" + bytes(range(256)))
    r = invoke("validate", binary)
    assert r.exit_code == 2 and "not a text file" in one_error_line(r)


def test_when_every_run_diverges_the_folder_completes_and_says_so(tmp_path):
    """Diverged runs are data: the run folder is finished (no .partial), every claim is
    inconclusive with the reason, and the report lists the diverged runs."""
    out = tmp_path / "div"
    r = invoke(
        "run",
        "baselines",
        "--smoke",
        "--jobs",
        "1",
        "--out",
        out,
        "--set",
        "run.optim.name=sgd",
        "--set",
        "run.optim.lr=1e30",
        "--set",
        "arms.logistic={model.depth: 2}",
    )
    assert r.exit_code == 0, r.output
    assert out.is_dir() and not (tmp_path / "div.partial").exists()
    assert set(pd.read_csv(out / "runs.csv")["status"]) == {"diverged"}
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["verdict"]) == {"inconclusive"}
    assert claims["detail"].str.contains("not a number").all()
    report = (out / "report.md").read_text()
    assert "diverged: 3" in report and "logistic-s0" in report


def test_smoke_run_writes_every_file_and_plot_regenerates_identically(tmp_path):
    out = tmp_path / "run"
    r = invoke("run", "baselines", "--smoke", "--jobs", "1", "--out", out)
    assert r.exit_code == 0, r.output
    for name in (
        "config.yaml",
        "manifest.json",
        "runs.csv",
        "metrics.csv",
        "claims.csv",
        "report.md",
        "plots/baselines.png",
    ):
        assert (out / name).is_file(), name
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["arm"]) == ["cnn", "logistic", "mlp"] and set(runs["status"]) == {"ok"}
    assert set(runs["seed"]) == {0}
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims["claim_id"]) == ["B1-logistic", "B1-mlp", "B1-cnn"]
    # one seed is fewer than the rule's minimum: the verdict must say so, not guess
    assert set(claims["verdict"]) == {"inconclusive"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["smoke"] is True and manifest["versions"]["torch"].startswith("2.14.1")
    assert "Claims" in r.output and "B1-cnn" in r.output

    png = (out / "plots/baselines.png").read_bytes()
    (out / "plots/baselines.png").unlink()
    r = invoke("plot", out)
    assert r.exit_code == 0 and (out / "plots/baselines.png").read_bytes() == png

    r = invoke("run", "baselines", "--smoke", "--out", out)  # refuses to overwrite a finished run
    assert r.exit_code == 2 and "already exists" in one_error_line(r)


def test_same_config_and_seed_give_byte_identical_csvs_whatever_jobs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--smoke", "--set", "run.train.steps=15", "--set", "seeds=2")
    assert invoke("run", "baselines", *common, "--jobs", "1", "--out", a).exit_code == 0
    assert invoke("run", "baselines", *common, "--jobs", "2", "--out", b).exit_code == 0
    for name in ("metrics.csv", "claims.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = pd.read_csv(a / "runs.csv"), pd.read_csv(b / "runs.csv")
    assert ra.drop(columns="train_seconds").equals(rb.drop(columns="train_seconds"))


def test_a_killed_run_resumes_from_its_partial_folder(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    args = ["run", "baselines", "--smoke", "--jobs", "1", "--set", "run.train.steps=300", "--set", "seeds=2"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert invoke(*args, "--out", clean).exit_code == 0
    proc = subprocess.run(
        [sys.executable, "-m", "normlab.cli.main", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
        env={**os.environ, "NORMLAB_FAULT": "cell_saved:2"},
    )  # kill -9 after 2 of 6 runs
    assert proc.returncode == -signal.SIGKILL
    cells = tmp_path / "killed.partial" / "cells"
    assert len(list(cells.glob("*.json"))) == 2 and not killed.exists()  # nothing that looks finished
    r = invoke(*args, "--out", killed)
    assert r.exit_code == 0, r.output
    assert "(2 finished runs reused" in r.output
    assert not (tmp_path / "killed.partial").exists()
    assert (clean / "metrics.csv").read_bytes() == (killed / "metrics.csv").read_bytes()


def test_arms_with_identical_configs_share_one_computation_but_keep_their_own_rows(tmp_path):
    out = tmp_path / "same"
    r = invoke("run", "baselines", "--smoke", "--jobs", "1", "--out", out, "--set", "arms.logistic={model.depth: 2}")
    assert r.exit_code == 0, r.output
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["run_id"]) == ["logistic-s0", "mlp-s0", "cnn-s0"]
    assert list(runs["arm"]) == ["logistic", "mlp", "cnn"]
    assert json.loads((out / "manifest.json").read_text())["runs_executed_now"] == 2  # logistic == mlp here
    metrics = pd.read_csv(out / "metrics.csv")
    a = metrics[metrics["arm"] == "logistic"].drop(columns=["run_id", "arm"]).reset_index(drop=True)
    b = metrics[metrics["arm"] == "mlp"].drop(columns=["run_id", "arm"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    "address,expected",
    [
        ("127.0.0.1:1", "no Ray head answers at 127.0.0.1:1"),  # nobody listens on port 1
        ("not-an-address", "is not HOST:PORT"),
    ],
)
def test_an_unreachable_ray_address_fails_within_seconds_with_one_line(address, expected, tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.monotonic()
    r = invoke("run", "baselines", "--smoke", "--backend", "ray", "--out", tmp_path / "o")
    assert time.monotonic() - start < 30
    assert r.exit_code == 2 and expected in one_error_line(r)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_version_matches_the_package():
    import normlab

    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"normlab {normlab.__version__}"


@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is not None, reason="Ray is installed here")
@pytest.mark.parametrize("command", [["run", "baselines"], ["sweep", "wd"], ["reproduce", "--only", "baselines"]])
def test_every_command_takes_backend_ray_and_without_ray_says_what_to_install(command, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    r = invoke(*command, "--smoke", "--backend", "ray", "--out", tmp_path / "o")
    line = one_error_line(r)
    assert r.exit_code == 2 and "--backend ray needs Ray: pip install 'normlab[ray]' (in a checkout: pip" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_help_shows_choices_as_choices_and_flags_as_flags():
    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "160"})
    assert r.exit_code == 0
    assert "[cpu|cuda|auto]" in r.output and "[local|ray]" in r.output
    assert "<bool>" not in r.output  # --smoke and --help take no value
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "160"}).output
    assert "--install-completion" in top and "--plain" in top and "--version" in top
    assert "[md|html]" in runner.invoke(app, ["report", "--help"], env={"COLUMNS": "160"}).output


def test_plain_mode_prints_tables_as_tab_separated_lines():
    r = invoke("--plain", "list")
    assert r.exit_code == 0
    lines = r.output.splitlines()
    header = lines.index("experiment\tclaims\tconfig\twhat it asks")
    rows = [ln.split("\t") for ln in lines[header + 1 :] if "\t" in ln]
    from normlab.experiments import REGISTRY

    assert sorted(row[0] for row in rows) == sorted(REGISTRY) and all(len(row) == 4 for row in rows)
    assert "\x1b[" not in r.output and "┃" not in r.output
    assert "┃" in invoke("list").output  # the next command is back to the default


def test_validate_print_shows_the_resolved_config_which_validates_again(tmp_path):
    r = runner.invoke(app, ["validate", "kfac", "--smoke", "--print", "--set", "seeds=3"])
    assert r.exit_code == 0
    text = r.stdout
    import yaml

    cfg = yaml.safe_load(text[: text.index("ok: ")] if "ok: " in text else text)
    assert cfg["seeds"] == 3 and cfg["run"]["train"]["steps"] == 60 and cfg["run"]["kfac"]["fisher"] == "exact"
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(cfg))
    again = invoke("validate", tmp_path / "resolved.yaml")
    assert again.exit_code == 0 and "3 seed(s)" in again.output


def test_manifest_records_the_machine_the_versions_and_hashes_of_config_and_data(tmp_path):
    from normlab.engine.data import load_dataset
    from normlab.engine.results import dataset_sha256, sha256_of
    from normlab.engine.runner import load_config
    from normlab.experiments import REGISTRY
    from normlab.engine.config import to_dict

    r = invoke("run", "baselines", "--smoke", "--set", "run.train.steps=4", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key in ("cpu_model", "cpus", "gpu", "cuda"):
        assert key in m
    # what decides the rounding: torch's kernels, the BLAS builds, the CPU flags, the threads
    import torch

    a = m["arithmetic"]
    assert a["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert a["torch_blas"] and a["torch_blas"] in torch.__config__.show()
    assert a["torch_threads"] == torch.get_num_threads() and isinstance(a["cpu_kernel_flags"], list)
    assert m["threads_per_run"] == [1]
    for pkg in ("torch", "numpy", "mnist1d", "matplotlib", "scipy", "torchvision", "ray"):
        assert m["versions"][pkg]  # a version, or "-" where it is not installed
    _, cfg = load_config(REGISTRY["baselines"].default_config, REGISTRY, {"run.train.steps": 4}, smoke=True)
    assert m["config_sha256"] == sha256_of(to_dict(cfg))
    (digest,) = m["datasets_sha256"].values()
    assert digest == dataset_sha256(load_dataset(cfg.run.data)) and len(digest) == 64


def test_the_cli_calls_only_the_python_api():
    """cli/ is options and printing over `normlab.*`: it imports neither the engine nor the experiments."""
    import ast

    root = Path(__file__).resolve().parent.parent / "cli"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(("normlab.engine", "normlab.experiments"))]
            assert not bad, f"{path.name} imports {bad}: call normlab.* instead"


def test_piped_output_keeps_whole_rows_and_plain_is_accepted_after_the_subcommand():
    """A CI log or a pipe is not a terminal: rows are never wrapped at 80 columns or cut with '…'."""
    import subprocess
    import sys

    from normlab.experiments import REGISTRY

    r = invoke("list")
    title = REGISTRY["knockout"].title
    assert any(title in line for line in r.output.splitlines()) and "…" not in r.output
    p = subprocess.run([sys.executable, "-m", "normlab.cli.main", "list", "--plain"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.splitlines()[1] == "experiment\tclaims\tconfig\twhat it asks"


def test_short_help_and_version_flags():
    import normlab

    assert invoke("-V").output.strip() == f"normlab {normlab.__version__}"
    r = invoke("run", "-h")
    assert r.exit_code == 0 and "Usage: normlab run" in r.output


def test_json_gives_scripts_one_document_on_stdout(tmp_path):
    from typer.testing import CliRunner

    runner = CliRunner()  # stdout alone: what a script reads (messages go to stderr)
    r = runner.invoke(app, ["run", "baselines", "--smoke", "--json", "--out", str(tmp_path / "o")])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["folder"] == str(tmp_path / "o") and doc["crashed"] == []
    assert [x["status"] for x in doc["runs"]] == ["ok"] * 3
    assert [c["claim_id"] for c in doc["claims"]] == ["B1-logistic", "B1-mlp", "B1-cnn"]
    assert all(c["verdict"] in ("supported", "not supported", "inconclusive") for c in doc["claims"])
    listed = json.loads(runner.invoke(app, ["list", "--json"]).stdout)
    assert "knockout" in {e["experiment"] for e in listed["experiments"]} and "wd" in listed["sweeps"]
    checked = json.loads(runner.invoke(app, ["validate", "eff_lr", "--json", "--set", "run.model.norm=layer"]).stdout)
    assert checked["runs"] == 42 and checked["reach"]["run.model.norm"] == {"reached": 36, "runs": 42}
    rep = json.loads(
        runner.invoke(app, ["report", str(tmp_path / "o"), "--json", "--out", str(tmp_path / "r.md")]).stdout
    )
    assert rep["report"] == str(tmp_path / "r.md") and (tmp_path / "r.md").is_file()


@pytest.mark.parametrize(
    "words,cword,expected",
    [
        ("normlab run kn", 2, ["knockout"]),
        ("normlab validate eff", 2, ["eff_lr"]),
        ("normlab sweep ", 2, ["wd"]),
        ("normlab run knockout --device c", 4, ["cpu", "cuda"]),
        ("normlab run knockout --backend ", 4, ["local", "ray"]),
        ("normlab reproduce --ensemble o", 3, ["off"]),
        ("normlab report x --format ", 4, ["md", "html"]),
    ],
)
def test_tab_completion_offers_experiment_and_sweep_names_and_every_choice(words, cword, expected):
    """What `normlab --install-completion` wires into the shell: the console script answers the
    shell's completion request with the names and choices that fit."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "normlab"
    env = {**os.environ, "_NORMLAB_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    p = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.split() == expected, p.stdout + p.stderr


def test_a_run_prints_its_own_final_metrics_per_arm(tmp_path):
    """A run on a user's own data or model shows the user's results, not only the claim rows."""
    r = invoke("--plain", "run", "baselines", "--smoke", "--out", tmp_path / "o")
    lines = r.output.splitlines()
    at = lines.index("# Final metrics per arm (mean over finished runs)")
    assert lines[at + 1] == "arm\tok / runs\ttrain_loss\ttest_acc"
    runs = pd.read_csv(tmp_path / "o" / "runs.csv").set_index("arm")
    mlp = next(line.split("\t") for line in lines[at:] if line.startswith("mlp\t"))
    assert mlp[1] == "1 / 1" and float(mlp[3]) == pytest.approx(runs.loc["mlp", "final_test_acc"], rel=1e-3)


def test_a_run_on_other_data_says_why_b1_is_not_judged(tmp_path):
    r = invoke("--plain", "run", "baselines", "--smoke", "--set", "run.data.name=synthetic", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("B1-mlp not judged: "))
    assert "the published 68% is for MNIST-1D" in line and "data.name='synthetic'" in line
    claims = pd.read_csv(tmp_path / "o" / "claims.csv")
    assert set(claims["verdict"]) == {"not judged"}


def test_a_bad_option_value_is_one_line_with_no_blank_line_before_it(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for args in (["--out", tmp_path / "full"], ["--ensemble", "3x", "--out", tmp_path / "o"]):
        r = invoke("run", "baselines", "--smoke", *args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output


def test_an_experiment_that_trains_nothing_says_its_tables_ignore_the_device(tmp_path):
    r = invoke("run", "identities", "--smoke", "--device", "cpu", "--out", tmp_path / "o")
    assert r.exit_code == 0 and "identities: trains no runs; its tables are computed on the CPU" in r.output


def test_the_overall_bar_covers_the_follow_up_stage_from_the_start_and_never_falls_back(tmp_path):
    """optimizer_tuning adds its final re-runs once the search is done; the plan knows their steps."""
    from rich.progress import Progress

    from normlab.cli.output import RunBars, eta_seconds

    plan = normlab.plan("optimizer_tuning", smoke=True, out=tmp_path / "o", seeds=None)
    assert plan.later_steps and plan.later_steps[0] > 0
    runs = RunBars(Progress(disable=True), plan.later_steps)
    seen = []  # (completed, total) after every report

    def progress(run_id, done, total):
        runs.progress(run_id, done, total)
        task = runs.bars.tasks[0]
        seen.append((task.completed, task.total))

    def on_start(tasks, reused):
        runs.start(sum(t.config.train.steps for t in tasks))
        seen.append((runs.bars.tasks[0].completed, runs.bars.tasks[0].total))

    normlab.run(plan, execution=normlab.Execution(jobs=1, progress=progress, on_start=on_start))
    assert runs.stages == 3  # the search, the tuning seeds, the final seeds
    totals = {t for _, t in seen}
    assert len(totals) == 1, totals  # the planned total was the real one: no jump when stage 2 began
    fractions = [c / t for c, t in seen]
    assert fractions == sorted(fractions) and seen[-1][0] == seen[-1][1]
    # the ETA at the average rate so far: 10 s for 25 of 100 steps leaves 30 s
    assert eta_seconds(10.0, 25, 100) == 30.0 and eta_seconds(10.0, 0, 100) is None
    assert eta_seconds(10.0, 100, 100) == 0.0


def test_bench_marks_each_figure_met_or_missed_against_its_target():
    """A benchmark exits 0 whatever it measures, so the table says which targets hold."""
    from normlab.engine.bench import BenchResult

    res = BenchResult([100.0], [97.0], [85.0], 50, {1: 100.0, 2: 150.0}, lens=[(100.0, 96.0)],
                      ensemble={("MLP", True, 8): 350.0}, engine_by_model={("MLP", True): 100.0},
                      limit_by_model={("MLP", True): 1000.0})  # fmt: skip
    met = {row[0].split(" (")[0]: row[3] for row in res.rows()}
    assert met["engine / plain"] == "met"  # 0.97 >= 0.95
    assert met["probe cost"] == "missed"  # 12.4% > 10%
    assert met["normlab.lens cost"] == "met"  # 4% <= 5%
    assert met["pool of 2 worker(s)"] == "missed" and met["pool of 1 worker(s)"] == ""  # 1.5x < 1.6x; no target
    assert met["MLP, BN: ensemble of 8"] == "met"  # 3.5x >= 3x
    assert met["plain PyTorch loop"] == "" and all(len(row) == 4 for row in res.rows())


def test_list_shows_config_names_in_a_terminal_and_full_paths_for_scripts():
    """A wheel's config path is long: a terminal gets the file name (whole, never broken mid-word), the
    folder once below; --plain and --json give the full path."""
    config = normlab.list_experiments().set_index("experiment").loc["baselines", "config"]
    shown = invoke("list").output
    assert "baselines.yaml" in shown and config not in shown.replace("\n", "")
    assert f"configs in {Path(config).parent}" in " ".join(shown.split())
    plain = invoke("--plain", "list").output
    assert any(line.startswith("baselines\t") and line.split("\t")[2] == config for line in plain.splitlines())


def test_plot_json_names_every_figure_it_drew(tmp_path):
    import shutil

    src = Path(__file__).resolve().parent.parent / "results" / "reference" / "eff_lr"
    folder = tmp_path / "eff_lr"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("plots"))
    r = runner.invoke(app, ["plot", str(folder), "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["folder"] == str(folder)
    assert sorted(Path(p).name for p in doc["plots"]) == sorted(p.name for p in (folder / "plots").glob("*.png"))


def test_every_command_takes_json_as_the_docs_say():
    """README and docs/usage.md say every command takes --json: each command's --help lists it."""
    import typer.main

    group = typer.main.get_command(app)
    commands = [(name,) for name in group.commands if name != "lens"] + [("lens", "report")]
    for path in commands:
        r = invoke(*path, "--help")
        assert r.exit_code == 0 and "--json" in r.output, f"normlab {' '.join(path)} lacks --json"
    assert len(commands) == 12


def test_judge_recomputes_a_folders_claims_and_write_records_the_judging_commit(tmp_path):
    """`judge` prints the rows today's rules give; --write puts them in claims.csv and the manifest
    names the commit that judged them beside the one that trained the runs; an analysis key renamed
    since the runs is an error naming --current-analysis, which judges with the shipped thresholds."""
    import shutil

    import yaml

    src = Path(__file__).resolve().parent.parent / "results" / "reference" / "identities"
    folder = tmp_path / "identities"
    shutil.copytree(src, folder)
    before = (folder / "claims.csv").read_bytes()
    r = invoke("judge", str(folder), "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["written"] is False and (folder / "claims.csv").read_bytes() == before
    expected = normlab.judge(folder)
    assert [c["claim_id"] for c in doc["claims"]] == expected["claim_id"].tolist()
    r = invoke("judge", str(folder), "--write")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        r.exit_code == 0 and "git_commit" in manifest["judged"] and "normlab judge --write" in manifest["judged"]["how"]
    )
    written = pd.read_csv(folder / "claims.csv")
    assert {"p_value", "p_against", "test"} <= set(written.columns)
    assert written["verdict"].tolist() == expected["verdict"].tolist()
    assert "claims judged again by commit" in (folder / "report.md").read_text()
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["analysis"]["a_renamed_threshold"] = 1.0
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    r = invoke("judge", str(folder))
    assert r.exit_code == 2 and "a_renamed_threshold: unknown key" in r.output and "--current-analysis" in r.output
    r = invoke("judge", str(folder), "--current-analysis", "--write")
    assert r.exit_code == 0 and "a_renamed_threshold" not in (folder / "config.yaml").read_text()
    assert "identities.yaml" in json.loads((folder / "manifest.json").read_text())["judged"]["how"]
