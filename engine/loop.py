"""The training loop's phases, written once for both ways a run trains.

A run trains alone (engine/train.py, `SingleRun`) or as a member of a batched ensemble
(engine/ensemble.py, `EnsembleRun`: many runs stacked into one model). Both walk the skeleton in
`run_loop` below, top to bottom, and implement its phases; what a phase does is said once here, so
the two stay in step by construction instead of by hand. Step numbers count the updates already
applied: a probe at step s measures before update s, an evaluation after s + 1 updates.

A run whose loss stops being finite is `diverged` at that step and stops; an ensemble's other
members go on. `forward` and `evaluate` return True when no run is left to train.
"""

from __future__ import annotations

import time
from typing import Any


class Loop:
    """The phases of one training loop. Implementations hold their own state (model, optimizer,
    batches, rows); `steps` is how many updates a run makes."""

    steps: int

    def checkpoint(self, step: int) -> None:
        """Curvature of one layer at the config's chosen steps, on copies: training is untouched."""

    def probing(self, step: int) -> bool:
        """Whether the probes measure at this step (every `probes.every` steps)."""
        raise NotImplementedError

    def batch(self, step: int, probing: bool) -> None:
        """The step's learning rate (schedules included) and batch; a probe of a fixed batch measures
        its statistics here, before the update."""
        raise NotImplementedError

    def forward(self, step: int, probing: bool) -> bool:
        """The loss of the step's batch (probes listen, unless they use a fixed batch); a run whose
        loss is not finite is recorded as diverged here. True when no run is left."""
        raise NotImplementedError

    def backward(self) -> None:
        """Gradients (K-FAC first takes its curvature factors from the forward pass's graph), and the
        loss added to the probe interval's running mean."""
        raise NotImplementedError

    def probe(self, step: int) -> None:
        """Rows of the step's batch loss, its interval mean, accuracy and learning rate, and the
        probes' measurements of gradients and statistics, before the update."""
        raise NotImplementedError

    def update(self) -> None:
        """The optimizer's step (and the renormalized control's rescaling)."""
        raise NotImplementedError

    def probe_update(self, step: int) -> None:
        """The angle each unit's weights turned by in the update."""
        raise NotImplementedError

    def evaluate(self, step: int) -> bool:
        """Loss and accuracy on every split, in eval mode, every `train.eval_every` steps and after
        the last; a run whose training loss is not finite is diverged. True when no run is left."""
        raise NotImplementedError

    def report(self, step: int) -> None:
        """Progress, about fifty times a run."""

    def finish(self, started: float) -> Any:
        """The per-unit window rows, final metrics (NaN for a diverged run), the input-Jacobian
        probe, and the result(s); `started` is the loop's perf_counter start, for train_seconds."""
        raise NotImplementedError


def run_loop(loop: Loop) -> Any:
    """Train: the phases in order, step by step, then the results."""
    started = time.perf_counter()
    for step in range(loop.steps + 1):
        loop.checkpoint(step)
        if step == loop.steps:
            break
        probing = loop.probing(step)
        loop.batch(step, probing)
        if loop.forward(step, probing):
            break
        loop.backward()
        if probing:
            loop.probe(step)
        loop.update()
        if probing:
            loop.probe_update(step)
        if loop.evaluate(step):
            break
        loop.report(step)
    return loop.finish(started)
