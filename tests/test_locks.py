"""One command per output folder: a live owner's lock is a clear error, a dead owner's is taken over."""

import json
import os
import socket
import subprocess
import sys

from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.engine.locks import lock_path


def _lock(out, pid):
    lock_path(out).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "command": "normlab run x"}))


def test_a_folder_held_by_a_live_process_is_refused_with_the_owner_named(tmp_path):
    out = tmp_path / "o"
    _lock(out, os.getpid())  # this very process: alive
    for cmd in (["run", "baselines", "--smoke"], ["sweep", "wd", "--smoke"]):
        r = CliRunner().invoke(app, [*cmd, "--out", str(out)])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert f"is being written by process {os.getpid()}" in text and "normlab run x" in text
        assert not out.exists() and not (tmp_path / "o.partial").exists()
    assert lock_path(out).exists()  # someone else's lock is never removed


def test_a_stale_lock_from_a_killed_process_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    out = tmp_path / "o"
    _lock(out, dead.pid)
    r = CliRunner().invoke(app, ["run", "baselines", "--smoke", "--set", "seeds=1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "claims.csv").is_file() and not lock_path(out).exists()


def test_an_empty_lock_left_by_a_kill_during_its_write_is_stale_once_old(tmp_path):
    out = tmp_path / "o"
    lock_path(out).write_text("")
    old = __import__("time").time() - 60
    os.utime(lock_path(out), (old, old))
    r = CliRunner().invoke(app, ["run", "baselines", "--smoke", "--set", "seeds=1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not lock_path(out).exists()
