"""normlab.lens: the chapter's instruments on your own training loop, with no change to the loop.

    import normlab
    lens = normlab.lens.attach(model, optimizer, every=50, out="lens-run")
    for x, y in loader:                      # your loop, as it was
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    lens.close()                             # lens-run/lens.csv and lens-run/lens.json
    normlab.lens.report("lens-run")          # lens-run/report.md, report.html and lens.png

(or `with normlab.lens.attach(...) as lens:` around the loop; `normlab lens report lens-run` on
the command line). Per weight layer, every `every` optimizer steps: whether the loss ignores its
scale (from the module graph, checked against cos(w, grad)), ||w||^2, cos(w, grad), the effective
learning rate alpha / ||w||^2 (SGD), the angle each unit turns per step, the weight-decay
equilibrium angle sqrt(2 alpha lambda) (Grosse ch. 5, Eq. 25), and for Adam the share of entries
whose epsilon outweighs sqrt(v_hat). The experiments' probes compute these with the same code
(normlab.engine.instruments). docs/lens.md says what each number means and how the report reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from normlab.engine.lens import METRICS, Lens, TensorBoardProbes, read, tidy

__all__ = ["Lens", "METRICS", "TensorBoardProbes", "attach", "flags", "read", "report", "table", "tensorboard"]


def attach(
    model, optimizer, every: int = 50, out: str | Path = "lens-run", overwrite: bool = False, on_probe=None
) -> Lens:
    """Hook `optimizer.step` (its step pre- and post-hooks) to measure `model` every `every` steps
    into `out`/lens.csv. Refuses a folder that already holds a lens.csv unless `overwrite`.
    `on_probe(rows)` receives each probe's rows as they are measured (dicts of step, layer, metric,
    stat, value): send them to your tracker, e.g. `on_probe=normlab.lens.tensorboard("runs/lens")`."""
    return Lens(model, optimizer, every=every, out=out, overwrite=overwrite, on_probe=on_probe)


def tensorboard(log_dir: str | Path) -> TensorBoardProbes:
    """An `on_probe` for `attach` that writes every probe to TensorBoard (LAYER/METRIC/STAT scalars)."""
    return TensorBoardProbes(log_dir)


def table(folder: str | Path):
    """A lens folder as one tidy pandas table (lens.csv's rows with each layer's module and verdict);
    `lens.table()` gives the same from a lens still attached."""
    return tidy(Path(folder))


def report(folder: str | Path, out: Optional[str | Path] = None, overwrite: bool = False) -> list[Path]:
    """Write report.md, report.html and the figure lens.png from a lens folder's lens.csv and
    lens.json (into `out`, the folder itself by default); returns the paths written."""
    from normlab.engine.lens_report import write_report

    return write_report(Path(folder), Path(out) if out is not None else None, overwrite)


def flags(folder: str | Path) -> list[dict]:
    """The report's flags of a lens folder, each {"title", "text", "rows": [{layer: ..., numbers}]}
    (docs/lens.md lists the conditions and their thresholds)."""
    from normlab.engine.lens_report import flags as find

    return find(*read(Path(folder)))
