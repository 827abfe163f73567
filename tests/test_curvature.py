"""The curvature measurement against independent dense computations (float64), and its promises:
it never changes training, it repeats exactly, and the noise it freezes is one fixed function."""

import numpy as np
import torch
import torch.nn.functional as F

from normlab.engine import curvature as CV
from normlab.engine.models import build_model
from normlab.engine.runs import RunTask
from normlab.engine.spec import CurvatureConfig, DataConfig, ModelConfig, RunConfig, TrainConfig, ProbeConfig
from normlab.engine.train import train
from normlab.experiments.noise import NoiseConfig, NoiseFactory


def _small(norm="none", position="before", noise=False):
    torch.manual_seed(0)
    cfg = ModelConfig(norm=norm, norm_position=position, width=8, depth=2)
    return build_model(cfg, (5,), 3, NoiseFactory(NoiseConfig()) if noise else None)


def _batch(n=40):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _dense_ggn(model, x, y):
    """GGN of the mean cross-entropy w.r.t. layer2's weight: (1/N) sum_n J_n^T (diag p - p p^T) J_n,
    with the Jacobian of all logits taken at once (examples interact through batch statistics)."""
    w = model.blocks[1].weight_layer.weight
    w0 = w.detach().clone()

    def logits(flat):
        return torch.func.functional_call(model, {"blocks.1.weight_layer.weight": flat.view_as(w0)}, (x,))

    J = torch.autograd.functional.jacobian(logits, w0.flatten())  # N x C x P
    p = logits(w0.flatten()).softmax(1).detach()
    H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # N x C x C
    return torch.einsum("ncp,ncd,ndq->pq", J, H, J) / len(x)


def _dense_hessian(model, x, y):
    w0 = model.blocks[1].weight_layer.weight.detach().clone()

    def loss(flat):
        out = torch.func.functional_call(model, {"blocks.1.weight_layer.weight": flat.view_as(w0)}, (x,))
        return F.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, w0.flatten())


def test_top_eigenvalues_match_a_dense_decomposition_to_1e_6():
    x, y = _batch()
    for norm, position in (("none", "before"), ("batch", "before"), ("center", "after")):
        m = CV.measurement_copy(_small(norm, position))
        for matrix, dense in (("ggn", _dense_ggn), ("hessian", _dense_hessian)):
            exact = np.sort(np.linalg.eigvalsh(dense(m, x, y).numpy()))[::-1][:10]
            op = CV.operator(m, "layer2", x, y, matrix)
            vals, products = CV.top_eigenvalues(op, 10, 0.0, seed=0)
            assert np.allclose(vals, exact, rtol=1e-6, atol=1e-12 * exact[0]), (norm, matrix, vals, exact)
            assert products >= 10


def test_a_measurement_does_not_change_training_and_repeats_exactly():
    base = RunConfig(
        data=DataConfig(name="synthetic", num_samples=300, input_shape=[10]),
        model=ModelConfig(norm="batch", width=12, depth=2),
        train=TrainConfig(steps=30, batch_size=32, eval_every=30),
        probes=ProbeConfig(every=0),
    )
    measured = RunConfig(
        **{
            **vars(base),
            "curvature": CurvatureConfig(
                steps=[0, 15, 30], hessian_steps=[30], density_steps=[15], top_k=5, examples=50, density_vectors=8
            ),
        }
    )
    noise = NoiseFactory(NoiseConfig())
    plain = train(RunTask("a", "a", 3, base, noise))
    first = train(RunTask("b", "b", 3, measured, noise))
    again = train(RunTask("c", "c", 3, measured, noise))
    assert plain.final == {k: v for k, v in first.final.items() if k != "curvature_seconds"}
    eig = [r for r in first.rows if r.metric == "ggn_eig"]
    assert len(eig) == 3 * 5 and {r.step for r in eig} == {0, 15, 30}
    assert [r.value for r in eig] == [r.value for r in again.rows if r.metric == "ggn_eig"]
    assert {r.step for r in first.rows if r.metric == "hessian_eig"} == {30}
    assert {r.step for r in first.rows if r.metric == "ggn_density"} == {15}


def test_frozen_noise_is_one_function_and_the_copy_leaves_buffers_alone():
    model = _small("batch", "before", noise=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = CV.measurement_copy(model)
    x, _ = _batch()
    assert torch.equal(m(x), m(x))  # no fresh draw per call, no running statistics in play
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(hasattr(mod, "frozen") for mod in m.modules())


def test_the_density_is_a_probability_density():
    x, y = _batch()
    m = CV.measurement_copy(_small("batch"))
    op = CV.operator(m, "layer2", x, y, "ggn")
    top, _ = CV.top_eigenvalues(op, 3, 0.0, seed=0)
    torch.manual_seed(0)
    grid, dens = CV.spectral_density(op, float(top[0]), CurvatureConfig(density_vectors=20, density_repeats=2))
    assert abs(np.trapezoid(dens, grid) - 1.0) < 0.05


def test_an_unknown_layer_is_named_with_the_choices():
    import pytest

    from normlab.engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"curvature.layer: 'layer9' .* choose one of \['layer1', 'layer2', 'out'\]"):
        CV.weight_of(_small(), "layer9")


def test_float32_measurements_agree_with_float64():
    x, y = _batch(60)
    model = _small("batch")
    vals = {}
    for dtype in (torch.float64, torch.float32):
        op = CV.operator(CV.measurement_copy(model, dtype), "layer2", x, y, "ggn")
        vals[dtype], _ = CV.top_eigenvalues(op, 5, 0.0, seed=0)
    assert np.allclose(vals[torch.float32], vals[torch.float64], rtol=1e-5)


def test_mean_shares_of_structured_and_random_directions():
    mean = torch.tensor([3.0, 4.0, 0.0, 0.0])
    u = np.array([1.0, -2.0, 0.5])
    structured = np.outer(u, [0.6, 0.8, 0.0, 0.0]).ravel()  # u (x) m_hat
    across = np.outer(u, [0.0, 0.0, 1.0, 0.0]).ravel()  # orthogonal to the mean in input space
    vecs = np.stack([structured / np.linalg.norm(structured), across / np.linalg.norm(across)], axis=1)
    np.testing.assert_allclose(CV.mean_shares(vecs, (3, 4), mean), [1.0, 0.0], atol=1e-12)
    rng = np.random.default_rng(0)
    random = rng.standard_normal((3 * 400, 200))
    big_mean = torch.from_numpy(rng.standard_normal(400))
    assert abs(np.mean(CV.mean_shares(random / np.linalg.norm(random, axis=0), (3, 400), big_mean)) - 1 / 400) < 3e-4


def test_the_eq9_copy_is_the_same_function_with_the_curvature_of_centered_inputs():
    """centered_copy computes the network's function, and its GGN w.r.t. layer2's weight is the dense
    GGN of a network whose layer2 sees its inputs minus their mean (built here by hand)."""
    x, y = _batch()
    m = CV.measurement_copy(_small())
    a = CV.layer_inputs(m, "layer2", x)
    mean = a.mean(0)
    c = CV.centered_copy(m, "layer2", mean)
    torch.testing.assert_close(c(x), m(x), rtol=1e-12, atol=1e-12)
    assert mean.min() > 0.01  # ReLU outputs: uncentered
    assert CV.layer_inputs(c, "layer2", x).mean(0).abs().max() < 1e-12  # the copy's layer sees them centered
    w = c.blocks[1].weight_layer.weight
    w0 = w.detach().clone()
    b = c.blocks[1].weight_layer.bias.detach()
    head = torch.nn.Sequential(*list(c.blocks[1].children())[1:])  # what follows the linear map in block 2

    def logits(flat):  # the same network with layer2 written out on centered inputs
        z = (a - mean) @ flat.view_as(w0).T + b
        h = head(z)
        for block in c.blocks[2:]:
            h = block(h)
        return c.out(h)

    torch.testing.assert_close(logits(w0.flatten()), m(x), rtol=1e-10, atol=1e-10)
    J = torch.autograd.functional.jacobian(logits, w0.flatten())
    p = logits(w0.flatten()).softmax(1).detach()
    H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    dense = torch.einsum("ncp,ncd,ndq->pq", J, H, J).detach() / len(x)
    exact = np.sort(np.linalg.eigvalsh(dense.numpy()))[::-1][:10]
    vals, vecs, _ = CV.top_eigenpairs(CV.operator(c, "layer2", x, y, "ggn"), 10, 0.0, seed=0)
    np.testing.assert_allclose(vals, exact, rtol=1e-6, atol=1e-12 * exact[0])
    assert vecs.shape == (w0.numel(), 10)


def test_uncentered_relu_inputs_give_mean_direction_outliers_that_eq9_removes():
    """ReLU outputs are uncentered: the GGN's top eigenvector lies along u (x) m_hat, and the same
    network reparameterized (Eq. 9) has a smaller top eigenvalue and no such eigenvector."""
    torch.manual_seed(0)
    net = CV.measurement_copy(build_model(ModelConfig(width=30, depth=3), (5,), 3))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (200,), generator=g)
    mean = CV.layer_inputs(net, "layer2", x).mean(0)
    shape = tuple(net.blocks[1].weight_layer.weight.shape)
    before, vb, _ = CV.top_eigenpairs(CV.operator(net, "layer2", x, y, "ggn"), 5, 0.0, seed=0)
    after, va, _ = CV.top_eigenpairs(
        CV.operator(CV.centered_copy(net, "layer2", mean), "layer2", x, y, "ggn"), 5, 0.0, 0
    )
    assert CV.mean_shares(vb, shape, mean)[0] > 0.8
    assert CV.mean_shares(va, shape, mean).max() < 0.5
    assert after[0] < before[0] / 2


def test_eq9_is_refused_on_a_layer_without_a_bias():
    import pytest

    from normlab.engine.config import ConfigError, from_dict

    for model in ({"norm": "batch", "norm_position": "before"}, {"bias": "false"}):
        with pytest.raises(ConfigError, match="curvature.eq9_steps: Eq. 9 moves W m into the measured layer's bias"):
            from_dict(RunConfig, {"model": model, "curvature": {"steps": [0], "eq9_steps": [0]}}).check("run")
    from_dict(RunConfig, {"curvature": {"steps": [0], "eq9_steps": [0]}}).check("run")  # no normalizer: fine


def test_ones_shares_of_structured_directions():
    mean = torch.tensor([3.0, 4.0, 0.0, 0.0])
    ones_mean = np.outer(np.ones(3) / np.sqrt(3), [0.6, 0.8, 0.0, 0.0]).ravel()  # 1_hat (x) m_hat
    ones_other = np.outer(np.ones(3) / np.sqrt(3), [0.0, 0.0, 1.0, 0.0]).ravel()  # 1_hat (x) e_3
    balanced = np.outer([1.0, -1.0, 0.0] / np.sqrt(2), [0.6, 0.8, 0.0, 0.0]).ravel()  # u orthogonal to 1
    vecs = np.stack([ones_mean, ones_other, balanced], axis=1)
    ones, both = CV.ones_shares(vecs, (3, 4), mean)
    np.testing.assert_allclose(ones, [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(both, [1.0, 0.0, 0.0], atol=1e-12)


def _ggn_and_mean(norm):
    torch.manual_seed(0)
    net = CV.measurement_copy(build_model(ModelConfig(norm=norm, width=8, depth=2), (5,), 3))
    x, y = _batch()
    return net, _dense_ggn(net, x, y).detach().numpy(), CV.layer_inputs(net, "layer2", x).mean(0), x, y


def test_layer_norm_removes_exactly_the_all_ones_direction_from_the_layer_before_it():
    """§4.4's algebra on a small exact case (float64, the dense GGN): layer norm right after layer2 maps the
    all-ones direction of layer2's outputs to zero, so G (1 (x) x) = 0 for every x; RMS norm (the same
    without centering) does not; and the mean direction u (x) m_hat with u orthogonal to 1 survives both."""
    for norm, zero in (("layer", True), ("rms", False)):
        net, G, mean, x, y = _ggn_and_mean(norm)
        out, fan_in = net.blocks[1].weight_layer.weight.shape
        ones_block = np.kron(np.ones((out, 1)) / np.sqrt(out), np.eye(fan_in))  # columns 1_hat (x) e_i
        leak = np.linalg.norm(G @ ones_block) / np.linalg.norm(G)
        assert (leak < 1e-12) if zero else (leak > 1e-3), (norm, leak)
        vals, vecs, _ = CV.top_eigenpairs(CV.operator(net, "layer2", x, y, "ggn"), 5, 0.0, seed=0)
        ones, _ = CV.ones_shares(vecs, (out, fan_in), mean)
        assert (ones.max() < 1e-12) if zero else (ones.max() > 1e-4), (norm, ones)
        u = np.zeros(out)
        u[0], u[1] = 1.0, -1.0
        along_mean = np.kron(u / np.sqrt(2), (mean / mean.norm()).numpy())  # u (x) m_hat, u orthogonal to 1
        assert along_mean @ G @ along_mean > 1e-3 * vals[0]  # not removed: curvature remains along the mean


def test_weight_norm_with_batch_centering_sees_its_inputs_centered():
    """Batch centering right after the layer cancels any shift of its inputs (z - mean z = W (a - mean a)):
    the function and the GGN with respect to v are unchanged when layer2's inputs move by a constant vector,
    as they are under Eq. 9; under weight norm alone the GGN changes."""
    for norm, same in (("weight_center", True), ("weight", False)):
        net, G, _, x, y = _ggn_and_mean(norm)
        shift = torch.linspace(0.5, 2.0, net.blocks[1].weight_layer.weight.shape[1], dtype=torch.float64)
        handle = net.blocks[1].weight_layer.register_forward_pre_hook(lambda _m, args: (args[0] + shift,))
        try:
            moved = _dense_ggn(net, x, y).detach().numpy()
        finally:
            handle.remove()
        gap = np.linalg.norm(moved - G) / np.linalg.norm(G)
        assert (gap < 1e-10) if same else (gap > 1e-2), (norm, gap)
