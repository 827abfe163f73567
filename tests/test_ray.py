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
