"""Training one run alone: `train(task)`.

It builds the data, model and optimizer a RunConfig describes, trains for `train.steps` optimizer
steps, probes every `probes.every` steps and evaluates every `train.eval_every` steps, walking the
loop of engine/loop.py (`SingleRun` holds this path's phases; engine/ensemble.py has the batched
path's). A non-finite loss marks the run `diverged` and ends it; the rows measured so far are kept.
Step numbers in the output count the updates already applied.

All randomness comes from the run's seed: the model init (and any noise module) from torch's
RNG seeded inside `fork_rng`, so the caller's global state is untouched, and the batches from
a generator of their own. Same config + seed + thread count = bit-identical numbers.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from . import metrics as M
from .data import Batcher, Dataset, load_dataset
from .loop import Loop, run_loop
from .models import Net, build_model
from .optim import Optimizer
from .plugins import load_plugins
from .probes import Probes, input_jacobian_sq_norm
from .runs import Progress, Row, RunResult, RunTask
from .spec import RunConfig


def resolve_device(name: str, key: str = "run.train.device") -> torch.device:
    """`name` (cpu, cuda or auto) as a device; a cuda that is not there is an error about `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError(f"cuda was asked for but no CUDA device is visible; {{set:{key}=cpu|auto}}", key=key)
    return torch.device(name)


@torch.no_grad()
def evaluate(model: Net, data: Dataset, batch_size: int) -> dict[str, float]:
    """Loss and accuracy (fraction correct) on every split, in eval mode."""
    was_training = model.training
    model.eval()
    out = {}
    for split, (x, y) in data.splits().items():
        loss_sum, correct = 0.0, 0
        for i in range(0, len(y), batch_size):
            logits = model(x[i : i + batch_size])
            loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
            correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
        out[f"{split}_loss"] = loss_sum / len(y)
        out[f"{split}_acc"] = correct / len(y)
    model.train(was_training)
    return out


def train(task: RunTask, progress: Progress = None) -> RunResult:
    cfg: RunConfig = task.config
    device = resolve_device(cfg.train.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task.seed)
            return _train(task, cfg, device, progress)
    finally:
        torch.set_num_threads(threads_before)


def _train(task: RunTask, cfg: RunConfig, device: torch.device, progress: Progress) -> RunResult:
    load_plugins(cfg.plugins)  # this may be a fresh worker process: it needs the user's modules too
    return run_loop(SingleRun(task, cfg, device, progress))


class SingleRun(Loop):
    """One run's phases of the loop (engine/loop.py): its model, optimizer, batches and rows."""

    def __init__(self, task: RunTask, cfg: RunConfig, device: torch.device, progress: Progress):
        self.task, self.cfg, self.progress = task, cfg, progress
        self.data = data = load_dataset(cfg.data).to(device)
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, task.after_norm).to(device)
        self.steps = steps = cfg.train.steps
        self.opt = Optimizer(cfg.optim, self.model, steps, cfg.kfac, seed=task.seed)
        self.batches = Batcher(
            data.x_train, data.y_train, cfg.train.batch_size, torch.Generator().manual_seed(task.seed)
        )
        self.probes = Probes(cfg.probes, self.model) if cfg.probes.every else None
        self.fixed_x = data.x_train[: cfg.probes.fixed_batch] if (self.probes and cfg.probes.fixed_batch) else None
        if self.probes and cfg.probes.unit_window:
            self.probes.window_start = (1.0 - cfg.probes.unit_window) * steps
        curv = cfg.curvature
        self.curv_steps = set(curv.steps) | set(curv.hessian_steps) | set(curv.density_steps) | set(curv.eq9_steps)
        self.curv_seconds = 0.0
        self.eval_every = cfg.train.eval_every or steps
        self.report_every = max(1, steps // 50)
        self.window_loss, self.window_steps = 0.0, 0  # training loss averaged over each probe interval
        self.final = evaluate(self.model, data, cfg.train.eval_batch_size)
        self.rows: list[Row] = [Row(0, k, "", "value", None, v) for k, v in self.final.items()]
        self.status, self.done = "ok", steps
        self.model.train()

    def checkpoint(self, step: int) -> None:
        if step in self.curv_steps:
            from .curvature import measure as measure_curvature  # curvlinops loads only where it is used

            t0, curv = time.perf_counter(), self.cfg.curvature
            x, y = self.data.x_train[: curv.examples], self.data.y_train[: curv.examples]
            self.rows += measure_curvature(self.model, curv, x, y, step, self.task.seed)
            self.curv_seconds += time.perf_counter() - t0

    def probing(self, step: int) -> bool:
        return self.probes is not None and step % self.cfg.probes.every == 0

    def batch(self, step: int, probing: bool) -> None:
        self.lr = self.opt.set_step(step)
        self.x, self.y = self.batches.next()
        if probing and self.fixed_x is not None:
            self.probes.observe(self.fixed_x)

    def forward(self, step: int, probing: bool) -> bool:
        with self.probes.capture() if (probing and self.fixed_x is None) else nullcontext():
            self.logits = self.model(self.x)
            self.loss = F.cross_entropy(self.logits, self.y)
        self.loss_value = self.loss.item()
        if math.isfinite(self.loss_value):
            return False
        self.status, self.done = "diverged", step
        self.rows.append(Row(step, M.BATCH_LOSS, "", "value", None, self.loss_value))
        return True

    def backward(self) -> None:
        self.opt.zero_grad()
        self.opt.observe(self.logits, self.x, self.y)
        self.loss.backward()
        self.window_loss, self.window_steps = self.window_loss + self.loss_value, self.window_steps + 1

    def probe(self, step: int) -> None:
        acc = (self.logits.argmax(1) == self.y).float().mean().item()
        self.rows += [
            Row(step, M.BATCH_LOSS, "", "value", None, self.loss_value),
            Row(step, M.BATCH_LOSS_AVG, "", "value", None, self.window_loss / self.window_steps),
            Row(step, M.BATCH_ACC, "", "value", None, acc),
            Row(step, M.LR, "", "value", None, self.lr),
        ]
        self.rows += self.probes.record(step, self.lr)
        self.window_loss, self.window_steps = 0.0, 0

    def update(self) -> None:
        self.opt.step()

    def probe_update(self, step: int) -> None:
        if self.cfg.probes.weights:
            self.rows += self.probes.after_step(step)

    def evaluate(self, step: int) -> bool:
        if (step + 1) % self.eval_every != 0 and step + 1 != self.steps:
            return False
        self.final = evaluate(self.model, self.data, self.cfg.train.eval_batch_size)
        self.rows += [Row(step + 1, k, "", "value", None, v) for k, v in self.final.items()]
        if math.isfinite(self.final[M.TRAIN_LOSS]):
            return False
        self.status, self.done = "diverged", step + 1
        return True

    def report(self, step: int) -> None:
        if self.progress and (step + 1) % self.report_every == 0:
            self.progress(self.task.run_id, step + 1, self.steps)

    def finish(self, started: float) -> RunResult:
        task, cfg, final = self.task, self.cfg, self.final
        if self.probes is not None and self.status == "ok":
            self.rows += self.probes.unit_rows(self.done)
        train_seconds = time.perf_counter() - started
        if self.progress:
            self.progress(task.run_id, self.steps, self.steps)
        if self.status == "diverged":  # final metrics of a diverged run are not numbers to average
            final = {k: float("nan") for k in final}
        if cfg.probes.jacobian_examples and self.status == "ok":
            x = self.data.x_test[: cfg.probes.jacobian_examples]
            final[M.JACOBIAN_FRO_SQ] = input_jacobian_sq_norm(self.model, x)
        if self.curv_steps:
            final[M.CURVATURE_SECONDS] = self.curv_seconds  # wall time, like train_seconds: not a result
        return RunResult(task.run_id, task.arm, task.seed, self.status, self.done, train_seconds, final, self.rows)
