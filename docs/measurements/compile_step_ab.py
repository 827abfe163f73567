"""A/B: the stacked ensemble training step eager against torch.compile of the whole step (forward,
loss, backward and update), one torch thread, in interleaved rounds; and whether the losses agree.

    python docs/measurements/compile_step_ab.py mlp 16    # or: cnn 16, cnn 8

The figures in docs/speed.md came from this script. It is a one-off measurement, not part of
`normlab bench`: the compiled step did not pay, so nothing of it is in the engine.
"""

import statistics
import sys
import time
import torch
import torch.nn.functional as F
from dataclasses import replace
from normlab.engine.bench import bench_config
from normlab.engine.data import load_dataset
from normlab.engine.ensemble import EnsembleNet, EnsembleOptimizer
from normlab.engine.spec import ModelConfig

torch.set_num_threads(1)
arch = sys.argv[1] if len(sys.argv) > 1 else "mlp"
m = int(sys.argv[2]) if len(sys.argv) > 2 else 16
cfg = bench_config(200, 0)
if arch == "cnn":
    cfg = replace(
        cfg,
        model=ModelConfig(arch="cnn1d", channels=[25, 25, 25], kernel_sizes=[5, 3, 3], strides=[2, 2, 2], norm="batch"),
    )
else:
    cfg = replace(cfg, model=replace(cfg.model, norm="batch"))
data = load_dataset(cfg.data)


def build():
    net = EnsembleNet.from_seeds(
        cfg.model, data.input_shape, data.num_classes, list(range(m)), torch.device("cpu"), None
    )
    return net, EnsembleOptimizer(net, [cfg.optim] * m)


g = torch.Generator().manual_seed(0)
idx = torch.randint(0, len(data.x_train), (50, m, cfg.train.batch_size), generator=g)
lrs = [cfg.optim.lr] * m


def make_step(net, opt):
    def step(x, y):
        logits = net.forward(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(m, -1).mean(1)
        loss.sum().backward()
        opt.step(lrs)
        return loss.detach()

    return step


eager_net, eager_opt = build()
comp_net, comp_opt = build()
eager = make_step(eager_net, eager_opt)
t0 = time.perf_counter()
compiled = torch.compile(make_step(comp_net, comp_opt))
x, y = data.x_train[idx[0]], data.y_train[idx[0]]
la, lb = eager(x, y), compiled(x, y)
print(f"first compiled step (compile) {time.perf_counter() - t0:.1f} s; loss gap {float((la - lb).abs().max()):.2e}")
for i in range(1, 5):
    x, y = data.x_train[idx[i]], data.y_train[idx[i]]
    la, lb = eager(x, y), compiled(x, y)
print(f"after 5 steps loss gap {float((la - lb).abs().max()):.2e}")
rates = {"eager": [], "compiled": []}
for r in range(6):
    for name, fn in (
        (("eager", eager), ("compiled", compiled)) if r % 2 == 0 else (("compiled", compiled), ("eager", eager))
    ):
        t = time.perf_counter()
        for i in range(10, 50):
            fn(data.x_train[idx[i]], data.y_train[idx[i]])
        rates[name].append(40 * m / (time.perf_counter() - t))
e, c = statistics.median(rates["eager"]), statistics.median(rates["compiled"])
print(f"{arch} M={m}: eager {e:.0f} member-steps/s, compiled {c:.0f}: {c / e:.2f}x (medians of 6 interleaved rounds)")
