"""Writing files so that a reader never sees half of one: temp file in the same folder, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import faults


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file normal permissions and move it into place atomically."""
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600 files
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str, fault_point: str = "") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            if fault_point and faults.hit(fault_point):  # tests only: die half way through the write
                fh.write(text[: len(text) // 2])
                fh.flush()
                faults.die()
            fh.write(text)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
