"""One command per output folder: a live owner's lock is a clear error; a killed owner's lock is gone."""

import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.engine.locks import folder_lock, lock_path

HOLD = """
import sys, time
from normlab.engine.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(out):
    """Another process that holds OUT's lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_held_by_a_live_process_is_refused_with_the_owner_named(tmp_path):
    out = tmp_path / "o"
    holder = _holder(out)
    try:
        for cmd in (["run", "baselines", "--smoke"], ["sweep", "wd", "--smoke"]):
            r = CliRunner().invoke(app, [*cmd, "--out", str(out)])
            assert r.exit_code == 2, r.output
            text = " ".join(r.output.split())
            assert f"is being written by process {holder.pid} on" in text and "folder_lock" not in text
            assert not out.exists() and not (tmp_path / "o.partial").exists()
        assert lock_path(out).exists()  # someone else's lock is never removed
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path):
    out = tmp_path / "o"
    holder = _holder(out)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the lock file stays, its flock goes
    holder.wait()
    assert lock_path(out).exists()
    r = CliRunner().invoke(app, ["run", "baselines", "--smoke", "--set", "seeds=1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "claims.csv").is_file() and not lock_path(out).exists()


def test_a_leftover_lock_file_with_no_holder_is_no_obstacle(tmp_path):
    """What an older normlab or a crash leaves (a pid file, an empty file) is not a lock: only flock is."""
    out = tmp_path / "o"
    for text in ('{"host": "elsewhere", "pid": 1, "command": "normlab run x"}', ""):
        lock_path(out).write_text(text)
        with folder_lock(out):
            assert str(os.getpid()) in lock_path(out).read_text()  # the holder's record replaces it
        assert not lock_path(out).exists()


def test_one_process_holds_the_lock_at_a_time_even_within_a_process(tmp_path):
    out = tmp_path / "o"
    with folder_lock(out):
        t = time.time()
        try:
            with folder_lock(out):
                raise AssertionError("a second holder")
        except Exception as exc:  # NormlabError, at once (timeout 0)
            assert "is being written by process" in str(exc) and time.time() - t < 5
