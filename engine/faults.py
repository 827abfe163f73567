"""Deterministic fault injection, for the tests of resuming after a crash.

NORMLAB_FAULT=POINT:N makes this process kill itself with SIGKILL the N-th time it reaches POINT:
  cell_saved  right after a finished run's cell (its CSV and JSON) has been written;
  cell_write  half way through writing a cell's CSV (a temporary file is left behind).
Unset (the normal case) it does nothing. Only the process that writes cells counts.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def hit(point: str) -> bool:
    """True exactly when this is the N-th arrival at `point` named by NORMLAB_FAULT."""
    spec = os.environ.get("NORMLAB_FAULT", "")
    name, _, n = spec.partition(":")
    if not spec or name != point:
        return False
    _seen[point] = _seen.get(point, 0) + 1
    return _seen[point] == int(n or 1)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
