# GPU A/B: the stacked CNN's conv with the window buffer's autograd backward (before 8c987b7) vs
# the hand-written col2im backward (now), interleaved on one machine
import statistics
import sys
from dataclasses import replace
import torch
import normlab.engine.ensemble as E
from normlab.engine.bench import bench_config
from normlab.engine.runs import RunTask
from normlab.engine.spec import ModelConfig


def old_stacked_conv1d(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """M Conv1d layers at once: h (M or 1, C_in, L, B) -> (M, C_out, L_out, B), with weight
    (M, C_out, C_in, k) and bias (M, C_out). The stacked CNN keeps its activations
    channel-major and batch-last, so a conv is one batched matmul with the batch and positions as
    the long dimension, (M, C_out, C_in k) @ (M, C_in k, L_out B): the weight is each member's
    Conv1d weight as it is, the input windows are k strided slices written into one zero-padded
    buffer (no gather, no padded copy), and batch norm reads the result as channels without a
    copy. Against the batch-first layout (an im2col gather, the weight transposed, a skinny
    (B L_out, k C_in) @ (k C_in, C_out) product) this measured 1.2-1.5x on the CNN ensembles'
    steps, with or without BN (M = 8 and 16, one thread)."""
    m, c_out, c_in, k = weight.shape
    p, s, length = padding, stride, h.shape[2]
    l_out = (length + 2 * p - k) // s + 1
    cols = h.new_zeros(h.shape[0], c_in, k, l_out, h.shape[3])  # the padding stays zero
    for j in range(k):  # output position o reads input position o s + j - p, where that is inside
        o0, o1 = max(0, -(-(p - j) // s)), min(l_out, (length - 1 - j + p) // s + 1)
        if o1 > o0:
            i0 = o0 * s + j - p
            cols[:, :, j, o0:o1, :] = h[:, :, i0 : i0 + s * (o1 - o0 - 1) + 1 : s, :]
    cols = cols.reshape(h.shape[0], c_in * k, -1).expand(m, -1, -1)  # a shared batch is read by every member
    w = weight.reshape(m, c_out, c_in * k)  # columns ordered (channel, tap), as cols' rows
    out = torch.bmm(w, cols) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, cols)
    return out.view(m, c_out, l_out, h.shape[3])


new_stacked_conv1d = E.stacked_conv1d
device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
torch.set_num_threads(1)
base = bench_config(150, 0, device)
cnn = ModelConfig(arch="cnn1d", channels=[25, 25, 25], kernel_sizes=[5, 3, 3], strides=[2, 2, 2])
for bn in (True, False):
    cfg = replace(base, model=replace(cnn, norm="batch" if bn else "none"))
    for m in (8, 16, 32):
        tasks = [RunTask(f"m{i}", "ab", i, cfg) for i in range(m)]
        rates = {"old": [], "new": []}
        finals = {}
        for rep in range(4):
            for name, f in (("old", old_stacked_conv1d), ("new", new_stacked_conv1d)):
                E.stacked_conv1d = f
                res = E.train_ensemble(tasks)
                if rep:  # the first round warms up kernels and allocators
                    rates[name].append(cfg.train.steps / res[0].train_seconds)
                finals[name] = [r.final["train_loss"] for r in res]
        o, n = statistics.median(rates["old"]), statistics.median(rates["new"])
        print(
            f"CNN {'BN' if bn else 'no BN'} M={m}: old {o:.0f}, new {n:.0f} member-steps/s, new/old {n / o:.2f}x; "
            f"final losses max rel diff {max(abs(a - b) / abs(a) for a, b in zip(finals['old'], finals['new'])):.1e}",
            flush=True,
        )
