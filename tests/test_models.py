"""Model construction: shapes, normalizer placement, bias rule and scale-invariance flags."""

import pytest
import torch
import torch.nn.functional as F

from normlab.engine.models import BatchCenter, build_model
from normlab.engine.config import ConfigError, from_dict
from normlab.engine.spec import ModelConfig, RunConfig


@pytest.mark.parametrize("arch,shape", [("mlp", (40,)), ("cnn1d", (40,)), ("cnn2d", (3, 16, 16))])
@pytest.mark.parametrize("norm", ["none", "batch", "layer", "center", "weight", "rms", "weight_center"])
def test_every_arch_and_norm_builds_and_outputs_logits(arch, shape, norm):
    if norm in ("weight", "rms", "weight_center") and arch != "mlp":
        with pytest.raises(ConfigError, match="model.norm: .* is implemented for MLPs only; use batch, layer"):
            from_dict(RunConfig, {"model": {"arch": arch, "norm": norm}})
        return
    cfg = ModelConfig(arch=arch, norm=norm, depth=3, width=16, channels=[4, 4], kernel_sizes=[3, 3], strides=[2, 2])
    model = build_model(cfg, shape, 7)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    assert len(model.weight_layers) == len(model.blocks) + 1 and model.weight_layers[-1].name == "out"


def test_logistic_regression_is_depth_zero():
    model = build_model(ModelConfig(depth=0), (40,), 10)
    assert len(model.blocks) == 0 and sum(p.numel() for p in model.parameters()) == 40 * 10 + 10


def test_bias_auto_drops_the_bias_a_batch_normalizer_cancels():
    before = build_model(ModelConfig(norm="batch", norm_position="before"), (40,), 10)
    after = build_model(ModelConfig(norm="batch", norm_position="after"), (40,), 10)
    plain = build_model(ModelConfig(norm="none"), (40,), 10)
    assert before.blocks[0].weight_layer.bias is None
    assert after.blocks[0].weight_layer.bias is not None
    assert plain.blocks[0].weight_layer.bias is not None


def test_invariance_flags():
    flag = lambda **kw: build_model(ModelConfig(**kw), (40,), 10).weight_layers[0].invariance  # noqa: E731
    assert flag(norm="batch") == "unit"
    assert flag(norm="weight") == "unit"
    assert flag(norm="layer", bias="false") == "layer"
    assert flag(norm="layer", bias="true") is None
    assert flag(norm="batch", norm_position="after", bias="false") == "unit"
    assert flag(norm="batch", norm_position="after") is None  # a bias before ReLU breaks it
    assert flag(norm="center") is None and flag(norm="none") is None
    assert flag(norm="rms", bias="false") == "layer" and flag(norm="rms") is None  # LN's rule: its bias breaks it
    assert flag(norm="weight_center") == "unit"
    out = build_model(ModelConfig(norm="batch"), (40,), 10).weight_layers[-1]
    assert out.name == "out" and out.invariance is None


def test_bn_after_relu_centers_the_next_layers_input_and_before_does_not():
    torch.manual_seed(0)
    x = torch.randn(256, 40)
    means = {}
    for pos in ("before", "after"):
        model = build_model(ModelConfig(norm="batch", norm_position=pos, depth=2, width=32), (40,), 10)
        seen = {}
        model.blocks[1].weight_layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
        model.train()(x)
        means[pos] = seen["x"].mean(0)
    assert means["after"].abs().max() < 1e-5  # BN after ReLU: centered inputs
    assert means["before"].min() > 0.1  # ReLU after BN: every unit's mean is positive


def test_batch_center_uses_batch_mean_in_training_and_running_mean_in_eval():
    bc = BatchCenter(3, momentum=1.0)
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    assert torch.allclose(bc(x), x - x.mean(0))
    bc.eval()
    assert torch.allclose(bc(torch.zeros(1, 3)), -x.mean(0, keepdim=True))


def test_after_norm_hook_is_inserted_after_every_normalizer_only():
    made = []

    def factory(index, features):
        made.append((index, features))
        return torch.nn.Identity()

    build_model(ModelConfig(norm="batch", depth=3, width=8), (40,), 10, after_norm=factory)
    assert made == [(0, 8), (1, 8), (2, 8)]
    made.clear()
    build_model(ModelConfig(norm="none", depth=3, width=8), (40,), 10, after_norm=factory)
    assert made == []


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_reparam_scale_changes_the_parameters_and_not_the_function(activation):
    torch.manual_seed(0)
    base = build_model(ModelConfig(depth=2, activation=activation), (40,), 10)
    torch.manual_seed(0)
    rep = build_model(ModelConfig(depth=2, activation=activation, reparam_scale=4.0), (40,), 10)
    w0, w1 = base.weight_layers[0].module, rep.weight_layers[0].module
    torch.testing.assert_close(w1.weight, 4.0 * w0.weight)
    torch.testing.assert_close(w1.bias, 4.0 * w0.bias)
    torch.testing.assert_close(rep.weight_layers[1].module.weight, base.weight_layers[1].module.weight / 4.0)
    x = torch.randn(64, 40)
    torch.testing.assert_close(rep(x), base(x), rtol=1e-5, atol=1e-6)


def test_reparam_scale_is_refused_where_it_would_change_the_function():
    for bad in ({"norm": "batch"}, {"activation": "tanh"}, {"depth": 0}, {"arch": "cnn1d"}):
        with pytest.raises(ConfigError, match="model.reparam_scale: keeps the function only"):
            from_dict(RunConfig, {"model": {"reparam_scale": 2.0, **bad}}).check("run")


def test_rms_norm_is_layer_norm_without_its_centering_step():
    """An independent computation: x / sqrt(mean(x^2) + eps) per example; layer norm of the same input
    equals it after the input is centered per example, and a per-example shift changes RMS norm only."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(norm="rms", depth=1, width=6, norm_eps=1e-5), (4,), 3)
    norm = model.blocks[0].norm
    z = torch.randn(5, 6, dtype=torch.float64)
    norm = norm.double()
    expected = z / torch.sqrt(z.pow(2).mean(1, keepdim=True) + 1e-5)
    assert torch.allclose(norm(z), expected, atol=1e-12)
    ln = torch.nn.LayerNorm(6, eps=1e-5, elementwise_affine=False).double()
    centered = z - z.mean(1, keepdim=True)
    assert torch.allclose(ln(z), norm(centered), atol=1e-12)
    shifted = z + 3.0
    assert torch.allclose(ln(shifted), ln(z), atol=1e-12) and not torch.allclose(norm(shifted), norm(z), atol=1e-3)


def test_weight_center_is_weight_norm_then_batch_centering():
    torch.manual_seed(0)
    model = build_model(ModelConfig(norm="weight_center", depth=1, width=6), (4,), 3).double()
    block = model.blocks[0]
    assert block.weight_layer.bias is None and isinstance(block.norm, BatchCenter)
    x = torch.randn(8, 4, dtype=torch.float64)
    v = block.weight_layer.weight
    z = x @ (v / v.norm(dim=1, keepdim=True)).T
    assert torch.allclose(block.tap(block.norm(block.weight_layer(x))), z - z.mean(0), atol=1e-12)
    with pytest.raises(ConfigError, match="model.norm_position: weight norm reparameterizes"):
        from_dict(RunConfig, {"model": {"norm": "weight_center", "norm_position": "after"}})


def test_a_detached_statistic_leaves_the_forward_pass_and_moves_only_the_radial_gradient():
    """Against an independent computation (float64): BN's gradient along a unit's weights is the sum of the
    direct path's sum_i ybar_i z_i / sigma, the mean path's -mu sum_i ybar_i / sigma and the variance path's
    -sum_i ybar_i (z_i - mu) / sigma (Grosse ch. 5, §4.2): each arm's w_j . grad_j is the sum over the paths
    it keeps, and only the whole (0) is orthogonal. The forward pass is the same in every arm."""
    torch.manual_seed(0)
    x, ybar = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)
    outs, radial = {}, {}
    for detach in ("none", "mean", "var", "both"):
        torch.manual_seed(1)
        model = build_model(ModelConfig(norm="batch", depth=1, width=4, norm_detach=detach, norm_eps=1e-30), (5,), 2)
        block = model.blocks[0].double()
        out = block.norm(block.weight_layer(x))
        (out * ybar).sum().backward()
        w = block.weight_layer.weight
        outs[detach], radial[detach] = out.detach(), (w * w.grad).sum(1).detach()
    z = x @ w.detach().T
    mu, sigma = z.mean(0), z.std(0, unbiased=False)
    direct = (ybar * z).sum(0) / sigma
    mean_path = -mu * ybar.sum(0) / sigma
    var_path = -(ybar * (z - mu)).sum(0) / sigma
    expected = {"none": direct + mean_path + var_path, "mean": direct + var_path, "var": direct + mean_path,
                "both": direct}  # fmt: skip
    for detach in expected:
        assert torch.allclose(outs[detach], outs["none"], atol=1e-12)
        assert torch.allclose(radial[detach], expected[detach], atol=1e-9), detach
    assert radial["none"].abs().max() < 1e-9 and min(radial[d].abs().max() for d in ("mean", "var", "both")) > 1e-2


def test_norm_detach_is_refused_off_batch_norm_and_by_the_batched_path():
    from normlab.engine.ensemble import why_not_packable
    from normlab.engine.runs import RunTask

    with pytest.raises(ConfigError, match="model.norm_detach: detaches batch norm's statistics"):
        from_dict(RunConfig, {"model": {"norm": "layer", "norm_detach": "mean"}})
    cfg = from_dict(RunConfig, {"model": {"norm": "batch", "norm_detach": "var"}})
    assert why_not_packable(RunTask("r", "a", 0, cfg)) == "batch norm with a detached statistic (var)"


def test_ghost_batch_norm_normalizes_each_chunk_by_its_own_statistics():
    """Against an independent computation: each chunk of `ghost` examples minus its own mean, over its own
    (biased) standard deviation; eval mode is plain batch norm on the running statistics, which every chunk
    updated in turn."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(norm="batch", depth=1, width=6, norm_ghost=4, norm_eps=1e-30), (5,), 2)
    block = model.blocks[0].double()
    x = torch.randn(12, 5, dtype=torch.float64) * 3 + 1
    z = block.weight_layer(x)
    out = block.norm(z)
    for c in range(3):
        chunk = z[4 * c : 4 * c + 4]
        expected = (chunk - chunk.mean(0)) / chunk.std(0, unbiased=False)
        assert torch.allclose(out[4 * c : 4 * c + 4], expected, atol=1e-10)
    whole = (z - z.mean(0)) / z.std(0, unbiased=False)
    assert (out - whole).abs().max() > 0.05  # not the whole batch's statistics
    running = torch.zeros(6, dtype=torch.float64)
    for c in range(3):
        running = 0.9 * running + 0.1 * z[4 * c : 4 * c + 4].mean(0)
    assert torch.allclose(block.norm.running_mean, running.detach(), atol=1e-12)
    odd = block.norm(z[:9])  # a ragged side pass: chunks 4 and 5 (a lone last example joins the one before)
    assert torch.allclose(odd[4:], (z[4:9] - z[4:9].mean(0)) / z[4:9].std(0, unbiased=False), atol=1e-10)


@pytest.mark.parametrize(
    "model,train,message",
    [
        ({"norm": "layer", "norm_ghost": 8}, {}, "model.norm_ghost: ghost batches belong to batch norm on an MLP"),
        ({"norm": "batch", "norm_ghost": 48}, {}, "model.norm_ghost: 48 must be at least 2, below train.batch_size"),
        ({"norm": "batch", "norm_ghost": 128}, {}, "model.norm_ghost: 128 must be at least 2, below"),
        ({"norm": "batch", "centered_reparam": True}, {}, "model.centered_reparam: Eq. 9's centering needs an MLP"),
        ({"centered_reparam": True, "bias": "false"}, {}, "model.centered_reparam: Eq. 9's centering needs"),
    ],
)
def test_ghost_batches_and_eq9_coordinates_refuse_a_model_they_would_not_change(model, train, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, {"model": model, "train": train})


def test_dead_units_need_the_relu_inputs():
    with pytest.raises(ConfigError, match="probes.dead_units: reads the ReLUs' inputs at every probe"):
        from_dict(RunConfig, {"probes": {"dead_units": True, "preacts": False}})
    with pytest.raises(ConfigError, match="model.activation relu"):
        from_dict(RunConfig, {"probes": {"dead_units": True}, "model": {"activation": "tanh"}})


def test_eq9_coordinates_keep_the_function_and_step_as_sgd_preconditioned_by_eq10():
    """The centered layer starts as the plain one (same draws, m = 0); a training forward pass moves m and b
    together so that the function is unchanged; and one SGD step on (W, b~) with m held moves the plain
    parameters W, b = b~ - W m by -lr R R^T grad, R R^T the inverse of Eq. 10's matrix (Sigma = I),
    computed here independently by inverting that matrix."""
    torch.manual_seed(3)
    plain = build_model(ModelConfig(depth=1, width=3), (4,), 2).double()
    torch.manual_seed(3)
    eq9 = build_model(ModelConfig(depth=1, width=3, centered_reparam=True), (4,), 2).double()
    x = torch.randn(16, 4, dtype=torch.float64) + 2.0
    with torch.no_grad():
        assert torch.allclose(plain(x), eq9(x), atol=1e-12)  # m = 0 and the same initial weights
    layer = eq9.blocks[0].weight_layer
    eq9(x)  # a training forward pass (train mode, gradients on) moves m ...
    m = layer.center.clone()
    assert torch.allclose(m, 0.1 * x.mean(0)) and m.abs().min() > 0.1
    with torch.no_grad():
        plain_b = layer.bias - layer.weight @ m  # ... and b~ with it: the plain network it stands for
        assert torch.allclose(F.linear(x, layer.weight, plain_b), layer(x), atol=1e-12)
    layer.update_running = False  # hold m for the step
    eq9.zero_grad()
    torch.nn.functional.cross_entropy(eq9(x), torch.arange(16) % 2).backward()
    gw_t, gb_t = layer.weight.grad.clone(), layer.bias.grad.clone()
    # the plain network's gradient at the same function, from the plain network itself
    w_plain = layer.weight.detach().clone().requires_grad_(True)
    b_plain = plain_b.detach().clone().requires_grad_(True)
    rest = eq9.out
    logits = rest(eq9.blocks[0].act(F.linear(x, w_plain, b_plain)))
    torch.nn.functional.cross_entropy(logits, torch.arange(16) % 2).backward()
    grad = torch.cat([w_plain.grad.T.reshape(-1), b_plain.grad])  # vec(W) column-major, then b
    out_units = 3
    eye = torch.eye(out_units, dtype=torch.float64)
    eq10 = torch.zeros(4 * out_units + out_units, 4 * out_units + out_units, dtype=torch.float64)
    eq10[: 4 * out_units, : 4 * out_units] = torch.kron(torch.eye(4, dtype=torch.float64) + torch.outer(m, m), eye)
    eq10[: 4 * out_units, 4 * out_units :] = torch.kron(m.unsqueeze(1), eye)
    eq10[4 * out_units :, : 4 * out_units] = torch.kron(m.unsqueeze(0), eye)
    eq10[4 * out_units :, 4 * out_units :] = eye
    step = -0.1 * torch.linalg.solve(eq10, grad)
    new_w = layer.weight.detach() - 0.1 * gw_t  # SGD on (W, b~) ...
    new_plain_b = (layer.bias.detach() - 0.1 * gb_t) - new_w @ m  # ... seen in the plain coordinates
    moved = torch.cat([(new_w - layer.weight.detach()).T.reshape(-1), new_plain_b - plain_b.detach()])
    assert torch.allclose(moved, step, atol=1e-12)
    assert (moved - (-0.1 * grad)).abs().max() > 1e-3  # not plain SGD
