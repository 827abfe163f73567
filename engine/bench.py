"""Throughput benchmarks, measured side by side in one process so machine noise hits all alike.

1. engine vs plain: the engine's `train` (probes off) against a hand-written PyTorch loop
   (nn.Sequential, same layers, same data, batch, optimizer and thread count).
2. probe cost: the engine with probes at the default interval against probes off; lens cost: the
   plain loop with `normlab.lens` attached (every 50 steps) against the same loop without it, in
   back-to-back blocks of 500 steps (lens_pairs).
3. pool scaling: k one-thread workers training at once, total steps/s against one worker.
4. batched ensembles (engine/ensemble.py): M runs trained as one stacked model, with and without
   BN, in member-steps/s, against the single-run engine and against the compute limit (this
   thread's large-matmul speed times the FLOPs of one step).
Every loop runs on one device (`device`, cpu by default; cuda times a GPU the same way, with the
device synchronized before each clock read, and the limit measured by a large matmul there).
Trials of 1 and 2 are interleaved (plain, engine, engine+probes, repeat) and the reported ratio
is the median over repeats (for the lens, over the pairs).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import load_dataset
from .execution import Execution
from .executor import default_jobs, execute
from .spec import DataConfig, ModelConfig, OptimConfig, ProbeConfig, RunConfig, TrainConfig
from .runs import RunTask
from .train import resolve_device, train


def bench_config(steps: int, probe_every: int, device: str = "cpu") -> RunConfig:
    """MLP 40-100-100-10 with BN before ReLU, SGD, batch 128, on MNIST-1D."""
    return RunConfig(
        data=DataConfig(name="mnist1d"),
        model=ModelConfig(arch="mlp", width=100, depth=2, norm="batch"),
        optim=OptimConfig(name="sgd", lr=0.1),
        train=TrainConfig(steps=steps, batch_size=128, eval_every=0, threads=1, device=device),
        probes=ProbeConfig(every=probe_every),
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a host clock read after it covers that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n: int = 1024, repeats: int = 5, device: torch.device | str = "cpu") -> float:
    """This thread's (or this GPU's, in float32 as torch is set to compute it) large-matmul speed,
    the compute limit the bench compares against."""
    device = torch.device(device)
    n = n * 8 if device.type == "cuda" else n  # a GPU needs a larger product to reach its speed
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# The targets each figure is held to (docs/speed.md): the engine within 5% of a hand-written loop, probes
# at their default interval at most 10%, the lens at most 5%, a pool of one-thread workers about linear
# in the workers (at least 0.8x per worker), and the BN MLP stacked 8 at a time at least 3x one run.
TARGET_ENGINE_RATIO = 0.95
TARGET_PROBE_COST = 0.10
TARGET_LENS_COST = 0.05
TARGET_POOL_SCALING = 0.8
TARGET_ENSEMBLE_SPEEDUP = 3
LENS_EVERY = 50  # the interval the lens's overhead target (<= 5% of the step) is stated at


class PlainLoop:
    """A hand-written loop over the same data, model shape, batch and optimizer as the engine's
    bench run: nn.Sequential, SGD, a fresh permutation per epoch. `run(steps)` trains on from where
    the previous call stopped and returns its steps/s."""

    def __init__(self, cfg: RunConfig, seed: int = 0):
        torch.set_num_threads(cfg.train.threads)
        self.device = device = resolve_device(cfg.train.device)
        data = load_dataset(cfg.data).to(device)
        torch.manual_seed(seed)
        w = cfg.model.width
        self.model = nn.Sequential(
            nn.Linear(40, w, bias=False),
            nn.BatchNorm1d(w, affine=False),
            nn.ReLU(),
            nn.Linear(w, w, bias=False),
            nn.BatchNorm1d(w, affine=False),
            nn.ReLU(),
            nn.Linear(w, 10),
        ).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr)
        self.x_all, self.y_all = data.x_train, data.y_train
        self.bs = cfg.train.batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(self.y_all), generator=self.gen).to(device), 0

    def run(self, steps: int) -> float:
        model, opt, n, bs = self.model, self.opt, len(self.y_all), self.bs
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            if self.pos + bs > n:
                self.order, self.pos = torch.randperm(n, generator=self.gen).to(self.device), 0
            idx = self.order[self.pos : self.pos + bs]
            self.pos += bs
            loss = F.cross_entropy(model(self.x_all[idx]), self.y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        synchronize(self.device)
        return steps / (time.perf_counter() - start)


def plain_loop(cfg: RunConfig, seed: int = 0) -> float:
    """Steps/s of the hand-written loop (PlainLoop) over cfg.train.steps."""
    return PlainLoop(cfg, seed).run(cfg.train.steps)


def lens_pairs(cfg: RunConfig, pairs: int, block: int = 500, every: int = LENS_EVERY) -> list[tuple[float, float]]:
    """(steps/s without, steps/s with `normlab.lens` attached every `every` steps) for `pairs`
    back-to-back blocks of `block` steps of one PlainLoop: each pair a fraction of a second apart,
    so that a shared machine's drift hits both alike (a small overhead is lost in the noise of
    separate trials). Attaching (the graph trace) and closing are outside the clock."""
    import tempfile

    from .lens import Lens

    loop = PlainLoop(cfg)
    loop.run(block)  # warm up
    out = []
    with tempfile.TemporaryDirectory(prefix="normlab-bench-lens-") as folder:
        for i in range(pairs):
            without = loop.run(block)
            lens = Lens(loop.model, loop.opt, every=every, out=f"{folder}/{i}")
            with_lens = loop.run(block)
            lens.close()
            out.append((without, with_lens))
    return out


# The lens's overhead on a real network as well as on the bench's MLP: torchvision's MobileNetV3-small
# (54 weight layers, BN with eps 1e-3, depthwise convs) on CIFAR-sized random images, SGD with momentum.
REAL_MODELS = ("mobilenet_v3_small", "resnet18")


def real_model_lens_pairs(name: str, pairs: int, block: int = 100, batch: int = 32, every: int = LENS_EVERY,
                          device: str = "cpu") -> list[tuple[float, float]]:  # fmt: skip
    """(steps per CPU second without, with `normlab.lens` every `every` steps) for `pairs` back-to-back
    blocks of `block` steps of a torchvision model at 32x32 (process CPU time, so that other work on a
    shared machine does not count). Needs torchvision."""
    import tempfile

    import torchvision

    from .lens import Lens

    torch.manual_seed(0)
    where = resolve_device(device, key="device")
    model = getattr(torchvision.models, name)(num_classes=10).to(where)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(512, 3, 32, 32, generator=gen).to(where)
    y_all = torch.randint(0, 10, (512,), generator=gen).to(where)

    def run(steps: int) -> float:
        synchronize(where)
        start = time.process_time()
        for _ in range(steps):
            idx = torch.randint(0, 512, (batch,), generator=gen).to(where)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        synchronize(where)
        return steps / (time.process_time() - start)

    run(10)  # warm up
    out = []
    with tempfile.TemporaryDirectory(prefix="normlab-bench-lens-") as folder:
        for i in range(pairs):
            without = run(block)
            lens = Lens(model, opt, every=every, out=f"{folder}/{i}")
            with_lens = run(block)
            lens.close()
            out.append((without, with_lens))
    return out


def engine_loop(cfg: RunConfig, seed: int = 0) -> float:
    res = train(RunTask("bench", "bench", seed, cfg))
    return res.steps_done / res.train_seconds


@dataclass
class BenchResult:
    plain: list[float]
    engine: list[float]
    probed: list[float]
    probe_every: int
    pool: dict[int, float]
    lens: list[tuple[float, float]] = field(default_factory=list)  # (without, with) the lens, paired blocks
    lens_real: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # the same on a real network
    lens_real_note: str = ""  # why the real network was not measured, where it was not
    ensemble: dict[tuple[str, bool, int], float] = field(default_factory=dict)  # (model, BN, M) -> member-steps/s
    engine_by_model: dict[tuple[str, bool], float] = field(default_factory=dict)  # single-run engine steps/s
    limit_by_model: dict[tuple[str, bool], float] = field(default_factory=dict)  # steps/s at large-matmul speed

    @property
    def engine_ratio(self) -> float:
        return statistics.median(e / p for e, p in zip(self.engine, self.plain))

    @property
    def probe_cost(self) -> float:
        return 1.0 - statistics.median(q / e for q, e in zip(self.probed, self.engine))

    @property
    def lens_cost(self) -> float:
        return 1.0 - statistics.median(w / p for p, w in self.lens)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The bench's table: (measure, value, target, met), medians over the interleaved repeats; `met`
        says whether the figure meets its target (met / missed), '' for a row without one."""

        def met(ok: bool) -> str:
            return "met" if ok else "missed"

        rows = [
            ("plain PyTorch loop", f"{statistics.median(self.plain):.0f} steps/s", "", ""),
            ("engine, probes off", f"{statistics.median(self.engine):.0f} steps/s", "", ""),
            ("engine / plain", f"{self.engine_ratio:.3f}x", f">= {TARGET_ENGINE_RATIO}x",
             met(self.engine_ratio >= TARGET_ENGINE_RATIO)),
            (f"probe cost (every {self.probe_every} steps)", f"{100 * self.probe_cost:.1f}%",
             f"<= {TARGET_PROBE_COST:.0%}", met(self.probe_cost <= TARGET_PROBE_COST)),
        ]  # fmt: skip
        if self.lens:
            label = f"normlab.lens cost (every {LENS_EVERY} steps, plain loop, {len(self.lens)} paired blocks)"
            rows.append((label, f"{100 * self.lens_cost:.1f}%", f"<= {TARGET_LENS_COST:.0%}",
                         met(self.lens_cost <= TARGET_LENS_COST)))  # fmt: skip
        for name, pairs in self.lens_real.items():
            cost = 1.0 - statistics.median(w / p for p, w in pairs)
            label = (
                f"normlab.lens cost on {name} 32x32 (every {LENS_EVERY} steps, CPU time, {len(pairs)} paired blocks)"
            )
            rows.append((label, f"{100 * cost:.1f}%", f"<= {TARGET_LENS_COST:.0%}", met(cost <= TARGET_LENS_COST)))
        if self.lens_real_note:
            rows.append(("normlab.lens cost on a real network", self.lens_real_note, f"<= {TARGET_LENS_COST:.0%}", ""))
        base = self.pool.get(1)
        for k, rate in sorted(self.pool.items()):
            scale = rate / base if base else float("nan")
            target = f">= {TARGET_POOL_SCALING * k:.2g}x of 1 worker (about linear)" if base and k > 1 else ""
            value = f"{rate:.0f} steps/s" + (f" ({scale:.2f}x of 1 worker)" if base else "")
            rows.append(
                (f"pool of {k} worker(s)", value, target, met(scale >= TARGET_POOL_SCALING * k) if target else "")
            )
        for (name, bn), single in self.engine_by_model.items():
            label, limit = f"{name}, {'BN' if bn else 'no BN'}", self.limit_by_model[(name, bn)]
            rows.append((f"{label}: engine, one run", f"{single:.0f} steps/s", "", ""))
            rows.append((f"{label}: compute limit", f"{limit:.0f} steps/s", "large-matmul speed", ""))
            for (n2, bn2, m), rate in self.ensemble.items():
                if (n2, bn2) == (name, bn):
                    goal = (name, bn, m) == ("MLP", True, 8)
                    value = (
                        f"{rate:.0f} member-steps/s ({rate / single:.2f}x the engine, {rate / limit:.0%} of the limit)"
                    )
                    target = f">= {TARGET_ENSEMBLE_SPEEDUP}x the engine" if goal else ""
                    rows.append((f"{label}: ensemble of {m}", value, target,
                                 met(rate / single >= TARGET_ENSEMBLE_SPEEDUP) if goal else ""))  # fmt: skip
        return rows


def device_name(device: torch.device) -> str:
    """`cpu`, or `cuda (NVIDIA H100 80GB HBM3)`: the card a bench's numbers belong to."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def run_bench(
    steps: int = 2000,
    repeats: int = 5,
    probe_every: int | None = None,
    pool_steps: int = 3000,
    workers: int | None = None,
    log=print,
    ensemble_sizes=(1, 4, 8, 16, 32),
    ensemble_steps: int = 300,
    device: str = "cpu",
    lens_model: str | None = None,
) -> BenchResult:
    probe_every = probe_every or ProbeConfig().every
    off, on = bench_config(steps, 0, device), bench_config(steps, probe_every, device)
    log(
        "MLP 40-100-100-10 + BN, batch 128, SGD, MNIST-1D, 1 torch thread per loop, on "
        f"{device_name(resolve_device(device, key='device'))}"
    )
    load_dataset(off.data)
    plain_loop(replace(off, train=replace(off.train, steps=200)))  # warm up kernels and caches
    engine_loop(replace(off, train=replace(off.train, steps=200)))
    res = BenchResult([], [], [], probe_every, {})
    for r in range(repeats):
        res.plain.append(plain_loop(off))
        res.engine.append(engine_loop(off))
        res.probed.append(engine_loop(on))
        log(
            f"  repeat {r + 1}/{repeats}: plain {res.plain[-1]:.0f}, engine {res.engine[-1]:.0f}, "
            f"engine+probes {res.probed[-1]:.0f} steps/s"
        )
    res.lens = lens_pairs(off, pairs=4 * repeats)
    ratios = sorted(w / p for p, w in res.lens)
    log(f"  lens: {len(res.lens)} paired blocks of 500 steps, with/without {ratios[0]:.3f}..{ratios[-1]:.3f}")
    if lens_model:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            res.lens_real_note = "not measured: needs torchvision (pip install 'normlab[vision]')"
        else:
            block = min(100, max(10, steps // 20))  # 100 at the default 2,000 steps; a short bench stays short
            res.lens_real[lens_model] = real_model_lens_pairs(lens_model, pairs=2 * repeats, block=block, device=device)
            ratios = sorted(w / p for p, w in res.lens_real[lens_model])
            log(f"  lens on {lens_model}: {2 * repeats} paired blocks of {block} steps, with/without "
                f"{ratios[0]:.3f}..{ratios[-1]:.3f}")  # fmt: skip
    workers = workers or default_jobs()
    pool_cfg = bench_config(pool_steps, 0, device)
    for k in sorted({1, workers}):
        results = execute([RunTask(f"w{i}", "bench", i, pool_cfg) for i in range(k)], Execution(jobs=k, ensemble="off"))
        res.pool[k] = sum(r.steps_done / r.train_seconds for r in results)
        log(f"  pool of {k} one-thread worker(s): {res.pool[k]:.0f} steps/s in total")
    if ensemble_sizes:
        ensemble_bench(res, ensemble_sizes, ensemble_steps, log, device)
    return res


def ensemble_bench(res: BenchResult, sizes, steps: int, log=print, device: str = "cpu") -> None:
    """Member-steps/s of `train_ensemble` (the path `--ensemble` uses) for the bench MLP and the 1-D
    CNN of the baselines, each with and without BN, against the single-run engine on the same model
    and against the compute limit (this thread's large-matmul speed / FLOPs of one step)."""
    from .ensemble import conv1d_flops_per_step, mlp_flops_per_step, train_ensemble

    base = bench_config(steps, 0, device)
    data = load_dataset(base.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gflops = matmul_gflops(device=resolve_device(device))
        cnn = ModelConfig(arch="cnn1d", channels=[25, 25, 25], kernel_sizes=[5, 3, 3], strides=[2, 2, 2])
        b, w = base.train.batch_size, base.model.width
        models = {
            "MLP": (base.model, mlp_flops_per_step([40, w, w, 10], b), steps),
            # as many steps as the MLP: at a quarter, evaluating every member on the three splits was
            # a third of a CNN trial (measured), and the rows read as slow training
            "CNN": (cnn, conv1d_flops_per_step(cnn, data.input_shape[-1], 10, b), steps),
        }
        for name, (model, flops, n_steps) in models.items():
            for bn in (True, False):
                cfg = replace(base, model=replace(model, norm="batch" if bn else "none"))
                cfg = replace(cfg, train=replace(cfg.train, steps=n_steps))
                key = (name, bn)
                res.engine_by_model[key] = statistics.median(engine_loop(cfg) for _ in range(3))
                res.limit_by_model[key] = gflops * 1e9 / flops
                for m in sizes:
                    results = train_ensemble([RunTask(f"m{i}", "bench", i, cfg) for i in range(m)])
                    rate = n_steps / results[0].train_seconds  # train_seconds: each member's share of the wall time
                    res.ensemble[(name, bn, m)] = rate
                    log(f"  {name} ensemble of {m} ({'BN' if bn else 'no BN'}): {rate:.0f} member-steps/s")
    finally:
        torch.set_num_threads(threads)


def bench(
    steps: int = 2000,
    repeats: int = 5,
    probe_every: int | None = None,
    workers: int | None = None,
    ensemble_steps: int = 300,
    device: str = "cpu",
    log=print,
    lens_model: str | None = "mobilenet_v3_small",
) -> BenchResult:
    """`normlab bench`: the arguments checked (one clear error each), then `run_bench`. `lens_model`:
    the real network (REAL_MODELS) the lens's overhead is measured on beside the MLP, or None."""
    from .errors import ConfigError
    from .execution import DEVICES

    if steps < 10:
        raise ConfigError(f"must be at least 10, got {steps}", key="steps")
    if repeats < 1:
        raise ConfigError(f"must be at least 1, got {repeats}", key="repeats")
    if device not in DEVICES:
        raise ConfigError(f"{device!r} is not allowed; choose cpu, cuda or auto", key="device")
    if lens_model is not None and lens_model not in REAL_MODELS:
        raise ConfigError(f"{lens_model!r} is not allowed; choose {', '.join(REAL_MODELS)} or none", key="lens_model")
    where = resolve_device(device, key="device")  # a cuda asked for where none is visible stops here
    return run_bench(
        steps=steps,
        repeats=repeats,
        probe_every=probe_every,
        workers=workers,
        log=log,
        ensemble_sizes=(1, 4, 8, 16, 32) if ensemble_steps else (),
        ensemble_steps=max(ensemble_steps, 1),
        device=str(where),
        lens_model=lens_model,
    )
