"""The Ray backend gives the same files as a local run, for `run`, `sweep` and `reproduce`.

CI runs these against a real Ray head on the loopback address (`ray start --head`, RAY_ADDRESS);
without the `ray` extra they are skipped. Without RAY_ADDRESS the backend starts a local Ray."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from normlab.cli.main import app

pytest.importorskip("ray", reason="the optional `ray` extra is not installed")


def _run(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize(
    "command,files",
    [
        (["run", "baselines", "--smoke"], ["runs.csv", "metrics.csv", "claims.csv"]),
        (["sweep", "wd", "--smoke"], ["metrics.csv", "claims.csv"]),
        (["reproduce", "--smoke", "--only", "identities,knockout"], ["knockout/metrics.csv", "knockout/claims.csv"]),
    ],
    ids=["run", "sweep", "reproduce"],
)
def test_ray_gives_byte_identical_results(command, files, tmp_path):
    _run(*command, "--jobs", "2", "--out", tmp_path / "local")
    _run(*command, "--backend", "ray", "--out", tmp_path / "ray")
    for f in files:
        local, remote = (tmp_path / "local" / f), (tmp_path / "ray" / f)
        if f.endswith("runs.csv"):  # wall-clock columns differ by nature; everything else must not
            wall = ["train_seconds", "final_curvature_seconds"]
            a, b = (pd.read_csv(p).drop(columns=wall, errors="ignore") for p in (local, remote))
            pd.testing.assert_frame_equal(a, b)
        else:
            assert local.read_bytes() == remote.read_bytes(), f


def _subprocess(args, env, tmp_path):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "normlab.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, **env},
    )


def test_ray_worker_that_cannot_import_torch_is_one_line_and_exit_2(tmp_path):
    # The job's runtime_env (NORMLAB_RAY_RUNTIME_ENV) makes every worker fail as one without torch does.
    env = {"NORMLAB_RAY_RUNTIME_ENV": '{"env_vars": {"NORMLAB_FAULT": "worker_import"}}'}
    r = _subprocess(["run", "baselines", "--smoke", "--backend", "ray", "--out", tmp_path / "out"], env, tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not import torch" in errors[0] and "every Ray node needs" in errors[0]
    assert "Traceback" not in r.stderr


def test_ray_bad_runtime_env_is_one_line_and_exit_2(tmp_path):
    r = _subprocess(["run", "baselines", "--smoke", "--backend", "ray"], {"NORMLAB_RAY_RUNTIME_ENV": "{pip"}, tmp_path)
    assert r.returncode == 2 and "NORMLAB_RAY_RUNTIME_ENV is not JSON" in r.stderr
    assert not (tmp_path / "results").exists()


def test_a_local_ray_leaves_no_auth_token_behind(tmp_path):
    # Without RAY_ADDRESS normlab starts its own Ray (loopback only, no token authentication): it must
    # not write ~/.ray/auth_token, which would make a later connection to the user's own head fail.
    env = {"HOME": str(tmp_path), "RAY_ADDRESS": ""}
    r = _subprocess(["run", "baselines", "--smoke", "--backend", "ray", "--out", tmp_path / "out"], env, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Ray cluster of" in r.stderr
    assert not (tmp_path / ".ray" / "auth_token").exists()
