"""One writer per output folder: a lock file beside it, taken atomically, released on exit.

Two commands writing the same folder would interleave their cells and race on the final rename.
The lock is `OUT.lock` (beside OUT, because OUT.partial/ is renamed into OUT at the end) and holds
the owner's host, process id and command line. A lock whose owner is gone (killed with `kill -9`,
on this host) is stale and is taken over; one held by a live process, or by another host, is an
error that names the owner and what to do.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import NormlabError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


EMPTY_GRACE_S = 5.0  # an empty lock younger than this may be a starting owner between create and write


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextmanager
def folder_lock(out: Path) -> Iterator[Path]:
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "command": " ".join(sys.argv)}
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            pid, host = int(owner.get("pid", 0) or 0), owner.get("host", "")
            if host == me["host"] and pid and not _alive(pid):
                path.unlink(missing_ok=True)  # its owner was killed: stale
                continue
            if not owner and _age(path) > EMPTY_GRACE_S:  # empty: its owner was killed while writing it
                path.unlink(missing_ok=True)
                continue
            who = f"process {pid} on {host or 'an unknown host'}" + (
                f" ({owner['command']})" if owner.get("command") else ""
            )
            raise NormlabError(
                f"{out} is being written by {who}; wait for it to finish or choose another output folder ({{out}}) "
                f"(if that process is gone, remove {path})"
            )
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise NormlabError(f"could not take the lock {path}; remove it if no command is writing {out}")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
