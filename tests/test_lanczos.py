"""Lanczos in lockstep (engine/lanczos.py) and the curvature products it multiplies with
(engine.curvature.LayerProducts), against scipy's eigsh, dense decompositions and curvlinops."""

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh

from normlab.engine import curvature as CV
from normlab.engine.lanczos import top_eigenpairs_lockstep
from normlab.engine.models import build_model
from normlab.engine.spec import ModelConfig
from normlab.experiments.noise import NoiseConfig, NoiseFactory


def _spiked(dim: int, outliers: int, seed: int) -> np.ndarray:
    """A PSD matrix with `outliers` separated large eigenvalues over a continuous bulk (a GGN's shape)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    vals = np.concatenate([np.linspace(50, 20, outliers), rng.uniform(0, 2, dim - outliers)])
    return (q * vals) @ q.T


def _dense_products(mats):
    return lambda vs, members: [torch.from_numpy(mats[m] @ v.numpy()) for v, m in zip(vs, members)]


def test_each_member_gets_its_own_top_eigenpairs_to_dense_precision():
    mats = [_spiked(300, c, seed) for c, seed in ((3, 0), (10, 1), (0, 2))]
    got = top_eigenpairs_lockstep(_dense_products(mats), 300, 12, 0.0, seeds=[5, 6, 7])
    for mat, (vals, vecs, products) in zip(mats, got):
        exact, basis = np.linalg.eigh(mat)
        assert np.allclose(vals, exact[::-1][:12], rtol=1e-9, atol=1e-9)
        assert products <= 300
        resid = np.linalg.norm(mat @ vecs - vecs * vals, axis=0)
        assert resid.max() < 1e-6 * vals[0]  # each Ritz pair is an eigenpair
        assert np.allclose(np.linalg.norm(vecs, axis=0), 1.0)


def test_at_arpacks_tolerance_it_agrees_with_eigsh_and_stops_members_separately():
    # the top-k of each member are separated outliers (10 and 30 over a bulk in [0, 2]): both solvers
    # must then find them to the tolerance, whatever their paths
    mats = [_spiked(1000, 10, 3), _spiked(1000, 30, 4)]
    got = top_eigenpairs_lockstep(_dense_products(mats), 1000, 30, 1e-3, seeds=[0, 1])
    for mat, seed, k, (vals, _vecs, products) in zip(mats, (0, 1), (10, 30), got):
        v0 = np.random.default_rng(seed).standard_normal(1000)
        ref = np.sort(eigsh(mat, k=30, which="LA", tol=1e-3, v0=v0)[0])[::-1]
        assert np.allclose(vals[:k], ref[:k], rtol=1e-3)
        assert np.allclose(vals[:k], np.linalg.eigvalsh(mat)[::-1][:k], rtol=1e-3)
        assert products < 1000
    assert got[0][2] != got[1][2]  # each member stops on its own criterion (and the lockstep goes on)


def test_the_start_vector_is_seeded_so_results_repeat():
    mats = [_spiked(200, 5, 0)]
    a = top_eigenpairs_lockstep(_dense_products(mats), 200, 8, 1e-3, seeds=[9])[0]
    b = top_eigenpairs_lockstep(_dense_products(mats), 200, 8, 1e-3, seeds=[9])[0]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_an_invariant_krylov_space_ends_that_member_early():
    low_rank = np.diag(np.r_[np.arange(5, 0, -1.0), np.zeros(95)])  # 5 nonzero eigenvalues
    got = top_eigenpairs_lockstep(_dense_products([low_rank]), 100, 3, 0.0, seeds=[0])[0]
    assert np.allclose(got[0], [5, 4, 3]) and got[2] <= 7


def _members(norm: str, noise: bool = False, arch: str = "mlp") -> list:
    cfg = ModelConfig(norm=norm, width=8, depth=2, arch=arch, **({"channels": [4, 4]} if arch == "cnn1d" else {}))
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = build_model(cfg, (12,) if arch == "cnn1d" else (5,), 3, NoiseFactory(NoiseConfig()) if noise else None)
        models.append(CV.measurement_copy(net))
    return models


@pytest.mark.parametrize("norm,noise", [("none", False), ("batch", False), ("center", False), ("batch", True)])
@pytest.mark.parametrize("matrix", ["ggn", "hessian"])
def test_layer_products_are_curvlinops_products_for_every_member(norm, noise, matrix):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    models = _members(norm, noise)
    products = CV.LayerProducts(models, "layer2", x, y, matrix)
    vs = [torch.randn(products.dim, generator=g, dtype=torch.float64) for _ in models]
    got = products(vs)
    assert products([vs[1]], [1])[0].equal(got[1])  # a member alone gets the same product
    for m, v, w in zip(models, vs, got):
        ref = CV.operator(m, "layer2", x, y, matrix).to_scipy() @ v.numpy()
        assert np.allclose(w.numpy(), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_layer_products_of_a_conv_layer_are_curvlinops_products():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 1, 12, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    models = _members("batch", arch="cnn1d")
    for matrix in ("ggn", "hessian"):
        products = CV.LayerProducts(models, "layer2", x, y, matrix)
        vs = [torch.randn(products.dim, generator=g, dtype=torch.float64) for _ in models]
        for m, v, w in zip(models, vs, products(vs)):
            ref = CV.operator(m, "layer2", x, y, matrix).to_scipy() @ v.numpy()
            assert np.allclose(w.numpy(), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_a_layer_not_linear_in_its_weight_takes_curvlinops():
    torch.manual_seed(0)
    wn = CV.measurement_copy(build_model(ModelConfig(norm="weight", width=8, depth=2), (5,), 3))
    assert not CV.fast_products_apply(wn, "layer2")
    with pytest.raises(TypeError, match="linear in its weight"):
        x, y = torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
        CV.LayerProducts([wn], "layer2", x, y, "ggn")
