"""Writing files so that a reader never sees half of one: temp file in the same folder, rename.

The temp file is fsynced before the rename and the folder after it, so that once a write has
returned its result survives a power loss too (a rename alone can reach the disk before the data,
leaving an empty file under the final name).

`atomic_write` is the one writer: every CSV, JSON, YAML, report, figure and dataset cache goes
through it (text through `atomic_write_text`).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from . import faults


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], None], fault_point: str = "") -> Path:
    """Write `path` by calling write(binary file), into a temp file in the same folder that is
    renamed into place only when complete. `fault_point` names a test fault (see faults.py)
    that kills the process half way through this write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getvalue()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if fault_point and faults.hit(fault_point):  # tests only: die half way through the write
                fh.write(data[: len(data) // 2])
                fh.flush()
                faults.die()
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are journalled by NTFS
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (network, FUSE) refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, fault_point: str = "") -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), fault_point)
