"""The training loop: one function, readable top to bottom.

`train(task)` builds the data, model and optimizer a RunConfig describes, trains for
`train.steps` optimizer steps, probes every `probes.every` steps and evaluates every
`train.eval_every` steps. A non-finite loss marks the run `diverged` and ends it; the rows
measured so far are kept. Step numbers in the output count the updates already applied.

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
    data = load_dataset(cfg.data).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_classes, task.after_norm).to(device)
    steps = cfg.train.steps
    opt = Optimizer(cfg.optim, model, steps, cfg.kfac)
    batches = Batcher(data.x_train, data.y_train, cfg.train.batch_size, torch.Generator().manual_seed(task.seed))
    probe_every = cfg.probes.every
    probes = Probes(cfg.probes, model) if probe_every else None
    fixed_x = data.x_train[: cfg.probes.fixed_batch] if (probes and cfg.probes.fixed_batch) else None
    if probes and cfg.probes.unit_window:
        probes.window_start = (1.0 - cfg.probes.unit_window) * steps
    curv = cfg.curvature
    curv_steps = set(curv.steps) | set(curv.hessian_steps) | set(curv.density_steps) | set(curv.eq9_steps)
    curv_x, curv_y = data.x_train[: curv.examples], data.y_train[: curv.examples]
    curv_seconds = 0.0
    eval_every = cfg.train.eval_every or steps
    report_every = max(1, steps // 50)

    rows: list[Row] = []
    window_loss, window_steps = 0.0, 0  # training loss averaged over each probe interval
    final = evaluate(model, data, cfg.train.eval_batch_size)
    rows += [Row(0, k, "", "value", None, v) for k, v in final.items()]
    status, step = "ok", 0
    model.train()
    start = time.perf_counter()
    for step in range(steps + 1):
        # -- curvature of one layer at chosen checkpoints (on a copy: training is untouched)
        if step in curv_steps:
            from .curvature import measure as measure_curvature  # curvlinops loads only where it is used

            t0 = time.perf_counter()
            rows += measure_curvature(model, curv, curv_x, curv_y, step, task.seed)
            curv_seconds += time.perf_counter() - t0
        if step == steps:
            break
        # -- batch and schedule
        lr = opt.set_step(step)
        x, y = batches.next()
        probing = probes is not None and step % probe_every == 0
        if probing and fixed_x is not None:
            probes.observe(fixed_x)  # statistics of a fixed batch, before this step's update
        # -- forward (probes listen here unless they use a fixed batch)
        with probes.capture() if (probing and fixed_x is None) else nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            status = "diverged"
            rows.append(Row(step, M.BATCH_LOSS, "", "value", None, loss_value))
            break
        # -- backward (K-FAC first takes its curvature factors from this forward pass's graph)
        opt.zero_grad()
        opt.observe(logits)
        loss.backward()
        window_loss, window_steps = window_loss + loss_value, window_steps + 1
        # -- probes: gradients and statistics of this step, before the update
        if probing:
            acc = (logits.argmax(1) == y).float().mean().item()
            rows += [
                Row(step, M.BATCH_LOSS, "", "value", None, loss_value),
                Row(step, M.BATCH_LOSS_AVG, "", "value", None, window_loss / window_steps),
                Row(step, M.BATCH_ACC, "", "value", None, acc),
                Row(step, M.LR, "", "value", None, lr),
            ]
            rows += probes.record(step, lr)
            window_loss, window_steps = 0.0, 0
        # -- update, and the angle it turned each unit by
        opt.step()
        if probing and cfg.probes.weights:
            rows += probes.after_step(step)
        # -- evaluation on every split, in eval mode
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            final = evaluate(model, data, cfg.train.eval_batch_size)
            rows += [Row(step + 1, k, "", "value", None, v) for k, v in final.items()]
            if not math.isfinite(final[M.TRAIN_LOSS]):
                status, step = "diverged", step + 1
                break
        if progress and (step + 1) % report_every == 0:
            progress(task.run_id, step + 1, steps)
    if probes is not None and status == "ok":
        rows += probes.unit_rows(step)
    train_seconds = time.perf_counter() - start
    if progress:
        progress(task.run_id, steps, steps)
    if status == "diverged":  # final metrics of a diverged run are not numbers to average
        final = {k: float("nan") for k in final}
    if cfg.probes.jacobian_examples and status == "ok":
        final[M.JACOBIAN_FRO_SQ] = input_jacobian_sq_norm(model, data.x_test[: cfg.probes.jacobian_examples])
    if curv_steps:
        final[M.CURVATURE_SECONDS] = curv_seconds  # wall time, like train_seconds: not a result
    return RunResult(task.run_id, task.arm, task.seed, status, step, train_seconds, final, rows)
