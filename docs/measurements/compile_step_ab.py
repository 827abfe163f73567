"""A/B: a training step eager against torch.compile of the whole step (forward, loss, backward and
update), in interleaved rounds on one device, and whether the losses agree.

    python docs/measurements/compile_step_ab.py mlp 16                 # CPU, one thread, inductor
    python docs/measurements/compile_step_ab.py cnn 8
    python docs/measurements/compile_step_ab.py mlp 1 --device cuda --mode reduce-overhead

`members` 1 times the engine's single-run step (engine.models.Net with engine.optim.Optimizer, as
engine.train steps it); more times the stacked step (EnsembleNet with EnsembleOptimizer, as
engine.ensemble steps it). `--mode reduce-overhead` is torch.compile's CUDA-graph mode: on a GPU it
replays each compiled piece as one CUDA graph, the remedy for a small run bound by kernel launches;
on a CPU it has no graphs to record and compiles as the default mode does. The device is
synchronized before every clock read, and each step's loss is read on the host, as the engine
reads it every step to stop a diverged run.

The CPU figures in docs/speed.md came from this script. It is a one-off measurement, not part of
`normlab bench`: the compiled step did not pay on this CPU, so nothing of it is in the engine.
"""

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from normlab.engine.bench import bench_config, synchronize
from normlab.engine.data import load_dataset
from normlab.engine.ensemble import EnsembleNet, EnsembleOptimizer
from normlab.engine.models import build_model
from normlab.engine.optim import Optimizer
from normlab.engine.spec import ModelConfig

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("arch", choices=["mlp", "cnn"], nargs="?", default="mlp")
parser.add_argument("members", type=int, nargs="?", default=16, help="1: the single-run step; more: stacked")
parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
parser.add_argument("--mode", default="default", choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of 40 steps each way")
args = parser.parse_args()

torch.set_num_threads(1)
device, m = torch.device(args.device), args.members
cfg = bench_config(200, 0, args.device)
if args.arch == "cnn":
    cfg = replace(
        cfg,
        model=ModelConfig(arch="cnn1d", channels=[25, 25, 25], kernel_sizes=[5, 3, 3], strides=[2, 2, 2], norm="batch"),
    )
else:
    cfg = replace(cfg, model=replace(cfg.model, norm="batch"))
data = load_dataset(cfg.data).to(device)
steps = 50  # 10 warm-up steps, then 40 per round: the same 40 batches every round
g = torch.Generator().manual_seed(0)
idx = torch.randint(0, len(data.x_train), (steps, m, cfg.train.batch_size), generator=g).to(device)


def make_step():
    """A fresh model and optimizer (the same initial weights each call) and its step(x, y) -> loss."""
    if m == 1:
        torch.manual_seed(0)
        net = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
        opt = Optimizer(cfg.optim, net, cfg.train.steps, cfg.kfac)
        opt.set_step(0)  # constant learning rate: the schedule is not what is timed
        net.train()

        def step(x, y):
            logits = net(x[0])
            loss = F.cross_entropy(logits, y[0])
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.detach()

        return step
    net = EnsembleNet.from_seeds(cfg.model, data.input_shape, data.num_classes, list(range(m)), device, None)
    opt = EnsembleOptimizer(net, [cfg.optim] * m)
    lrs = [cfg.optim.lr] * m

    def step(x, y):
        logits = net.forward(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, -1).mean(1)
        loss.sum().backward()
        opt.step(lrs)
        return loss.detach()

    return step


def batch(i):
    return data.x_train[idx[i]], data.y_train[idx[i]]


eager = make_step()
t0 = time.perf_counter()
compiled = torch.compile(make_step(), mode=None if args.mode == "default" else args.mode)
la, lb = eager(*batch(0)), compiled(*batch(0))
synchronize(device)
print(f"first compiled step (compile) {time.perf_counter() - t0:.1f} s; loss gap {float((la - lb).abs().max()):.2e}")
for i in range(1, 10):
    la, lb = eager(*batch(i)), compiled(*batch(i))
print(f"after 10 steps loss gap {float((la - lb).abs().max()):.2e}")
rates = {"eager": [], "compiled": []}
for r in range(args.rounds):
    order = (("eager", eager), ("compiled", compiled))
    for name, fn in order if r % 2 == 0 else order[::-1]:
        synchronize(device)
        t = time.perf_counter()
        for i in range(10, steps):
            fn(*batch(i)).tolist()  # the loss read on the host every step, as the engine reads it
        synchronize(device)
        rates[name].append((steps - 10) * m / (time.perf_counter() - t))
e, c = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
print(
    f"{args.arch} M={m} on {args.device}, mode {args.mode}: eager {e:.0f} member-steps/s, compiled {c:.0f}: "
    f"{c / e:.2f}x (medians of {args.rounds} interleaved rounds)"
)
