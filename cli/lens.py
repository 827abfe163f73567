"""`normlab lens ...`: the lens's commands (normlab.lens measures a user's own training loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import normlab

from .options import JsonOpt, user_errors
from .output import flag_lines, ui


lens_app = typer.Typer(
    help="The chapter's instruments on your own training loop: attach in Python with "
    "`lens = normlab.lens.attach(model, optimizer, every=50, out='lens-run')`, train, `lens.close()`, then read it "
    "here.",
    no_args_is_help=True,
)


@lens_app.command("report")
@user_errors
def lens_report(
    folder: Path = typer.Argument(..., help="The folder given to normlab.lens.attach(out=...), holding lens.csv."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: the folder itself)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report.md/report.html."),
    as_json: bool = JsonOpt,
) -> None:
    """Write report.md, report.html (self-contained) and lens.png from a lens folder: per layer its
    scale invariance, ||w||^2, effective learning rate and angle per step, and the flags (implicit
    learning-rate decay, weight-decay equilibrium, Adam's epsilon, effective-LR spread), which it
    also prints, one line per flagged layer with its numbers."""
    paths = normlab.lens.report(folder, out, overwrite)
    found = normlab.lens.flags(folder)
    if as_json:
        ui.emit({"folder": str(folder), "files": [str(p) for p in paths], "flags": found})
        return
    for line in flag_lines(found):
        ui.console.print(line, highlight=False)
    for p in paths:
        ui.console.print(f"wrote {p}")
