"""README's two set-up commands stay true: CI runs the second, and the first names a real job."""

import re
from pathlib import Path

from normlab.experiments import REGISTRY

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_an_install_and_run_command_and_a_test_command():
    run_cmd, test_cmd = _bash_blocks()[:2]
    assert run_cmd.startswith("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e . && ")
    job = run_cmd.split("&& ")[-1].split()
    assert job[0] == ".venv/bin/normlab"
    assert job[1] == "reproduce" or (job[1] == "run" and job[2] in REGISTRY)
    assert "pytest" in test_cmd and "'.[test]'" in test_cmd


def test_constraints_pin_versions_the_ranges_in_pyproject_admit():
    """constraints.txt holds exact versions; each must lie inside pyproject's declared range."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    deps = {Requirement(d).name.lower(): Requirement(d) for d in declared}
    pins = [
        Requirement(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {"torch", "torchvision"} <= {p.name.lower() for p in pins}
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", pin
        req = deps.get(pin.name.lower())
        assert req is not None and req.specifier.contains(spec.version), (pin, req)
    assert not any(s.operator == "==" for s in deps["torch"].specifier)  # a range, not a pin


def test_ci_runs_exactly_the_readme_test_command():
    test_cmd = _bash_blocks()[1]
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_the_user_ci_recipe_is_what_ci_runs():
    """examples/ci/normlab-smoke.yml: a workflow users copy. CI installs the built wheel outside the
    checkout and runs the recipe's normlab- steps through .ci/workflow_steps.py, as written."""
    import subprocess
    import sys

    import yaml

    recipe = ROOT / "examples" / "ci" / "normlab-smoke.yml"
    steps = [s for job in yaml.safe_load(recipe.read_text())["jobs"].values() for s in job["steps"]]
    ids = [s.get("id", "") for s in steps]
    install = steps[ids.index("install")]["run"]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install and "normlab" in install
    tested = [s for s in steps if s.get("id", "").startswith("normlab-")]
    assert ids.index("install") < ids.index(tested[0]["id"])  # normlab is installed before it is used
    commands = " ".join(s["run"] for s in tested)
    assert "normlab reproduce --smoke" in commands and "run.plugins=[my_plugin]" in commands
    script = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "workflow_steps.py"), str(recipe)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert all(s["run"].strip() in script for s in tested) and "download.pytorch.org" not in script
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".ci/workflow_steps.py examples/ci/normlab-smoke.yml" in ci and "pip wheel" in ci
    assert (ROOT / "examples" / "ci" / "my_plugin.py").is_file()


def test_quoted_times_come_from_one_place_and_agree_with_the_reference_manifests():
    import json

    from typer.testing import CliRunner

    from normlab import timings
    from normlab.cli.main import app

    reference = ROOT / "results" / "reference"
    wall = {p.parent.name: json.loads(p.read_text())["wall_seconds"] for p in reference.glob("*/manifest.json")}
    reproduced = sum(s for name, s in wall.items() if name in REGISTRY)  # sweep_wd is not part of reproduce
    assert set(REGISTRY) <= set(wall)
    # reproduce runs them side by side: its quoted minutes are its recorded schedule, replayed on two
    # workers (engine/costs.py), plus the time outside the pool
    import pandas as pd

    from normlab.engine.costs import SHIPPED_SCHEDULE, model_table, replay

    schedule = pd.read_csv(SHIPPED_SCHEDULE)
    two = replay(schedule, 2).wall_s
    assert abs((two + timings.OUTSIDE_SCHEDULE_S) / 60 - timings.REPRODUCE_MINUTES) <= 1.0
    speed = " ".join((ROOT / "docs" / "speed.md").read_text().split())
    assert f"One after another the manifests add up to {reproduced / 60:.1f} minutes" in speed
    for row in model_table(schedule).itertuples():  # the docs' table is the model's
        assert f"| {row.workers} | {row.local_minutes:.1f} | {row.ray_minutes:.1f} |" in speed, row.workers
    for name in REGISTRY:  # each experiment's quoted wall time is its manifest's
        assert f"{name} {round(wall[name])} s" in speed, name
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert timings.reproduce_text() in readme and timings.smoke_text() in readme
    assert f"about {timings.REPRODUCE_SMOKE_SECONDS} seconds" in speed
    help_text = " ".join(CliRunner().invoke(app, ["--help"]).output.replace("│", " ").split())
    assert timings.reproduce_text() in help_text and timings.smoke_text() in help_text
