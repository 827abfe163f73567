"""One writer per output folder: an flock on a file beside it, released by the kernel when its owner exits.

Two commands writing the same folder would interleave their cells and race on the final rename.
The lock is `OUT.lock` (beside OUT, because OUT.partial/ is renamed into OUT at the end), taken with
`filelock` (flock(2)): the kernel drops it when the owning process ends however it ends, `kill -9`
included, so a lock is never stale and nothing has to guess whether a recorded pid is still alive.
The file holds the owner's host, process id and command line, written once the lock is held, so a
refused command can name who holds the folder; its holder removes it before releasing it.
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

from filelock import FileLock, Timeout

from .errors import NormlabError


def lock_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _owner_writer(owner: dict, held: dict):
    data = json.dumps(owner).encode()

    def write(fd: int) -> None:  # called by filelock with the held descriptor, after each acquire
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        stat = os.fstat(fd)
        held["inode"] = (stat.st_dev, stat.st_ino)

    return write


def _remove_if_ours(path: Path, held: dict) -> None:
    """Remove the lock's name while still holding it (filelock keeps it). A waiter that opened the
    file before the removal finds it unlinked once it gets the flock, and filelock retries on the
    new name, so no two holders can result."""
    try:
        stat = os.stat(path)
    except OSError:
        return
    if (stat.st_dev, stat.st_ino) == held.get("inode"):
        path.unlink(missing_ok=True)


def _owner(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        owner = {}
    if not owner:  # between the holder's acquire and its write
        return "another process"
    who = f"process {owner.get('pid', '?')} on {owner.get('host') or 'an unknown host'}"
    return who + (f" ({owner['command']})" if owner.get("command") else "")


@contextmanager
def folder_lock(out: Path) -> Iterator[Path]:
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "command": " ".join(sys.argv)}
    held: dict = {}
    lock = FileLock(str(path), timeout=0, on_acquired=_owner_writer(me, held))
    try:
        lock.acquire()
    except Timeout:
        raise NormlabError(
            f"{out} is being written by {_owner(path)}; wait for it to finish or choose another output folder ({{out}})"
        ) from None
    try:
        yield path
    finally:
        _remove_if_ours(path, held)
        lock.release()
