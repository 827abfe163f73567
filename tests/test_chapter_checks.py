"""The chapter checks (X rows): each compares two independent computations, and each can fail.

Every test here breaks one side of a check (damping in K-FAC, epsilon in BN, the chapter's own 1 + |m|^2
in place of the exact outlier) and asserts that the check then reports the difference, or reads a
hand-made table and asserts the verdict the rule gives."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from normlab.engine.claims import judge
from normlab.experiments.chapter_checks import CHECKS, ChapterChecks, worst
from normlab.experiments.chapter_checks import conditioning as cond
from normlab.experiments.chapter_checks import normalizers as norms
from normlab.experiments.chapter_checks.claims import CLAIMS
from normlab.experiments.chapter_checks.config import ChecksConfig


@pytest.fixture(scope="module")
def small():
    cfg = ChecksConfig(experiment="chapter_checks")
    cfg.problem.dims, cfg.problem.examples, cfg.problem.depths = [10, 40], 6, [2, 3]
    return cfg


def test_every_check_row_has_one_claim_and_every_claim_a_row(small):
    checks = {r["check"] for fn in CHECKS for r in fn(small, 0)}
    assert checks == set(CLAIMS)
    assert len({c.id for c, _ in CLAIMS.values()}) == len(CLAIMS) == len(ChapterChecks.claims)


def test_the_outlier_is_the_homogeneous_closed_form_not_one_plus_m_squared():
    d = 100
    g = cond.gen(0, 1)
    m = torch.full((d,), 0.1, dtype=torch.float64)
    x = cond.exact_moments(g, 3 * d, m, torch.eye(d, dtype=torch.float64))
    top = float(torch.linalg.eigvalsh(cond._regression_hessian(x, True))[-1])
    r = float(m @ m)
    assert top == pytest.approx((2 + r + math.sqrt(r * r + 4 * r)) / 2, rel=1e-12)
    assert abs(top - (1 + r)) / (1 + r) > 0.3  # the chapter's 1 + |m|^2 is the value without the bias
    no_bias = float(torch.linalg.eigvalsh(cond._regression_hessian(x, False))[-1])
    assert no_bias == pytest.approx(1 + r, rel=1e-12)


def test_damped_kfac_loses_the_affine_invariance():
    x, t, params, maps, tilde = cond._affine_instance(0)
    f0 = cond._net_function(params, x)
    out = {}
    for damping in (0.0, 1.0):
        p1 = cond._kfac_step([p.clone().requires_grad_() for p in params], x, t, None, 0.1, damping)
        p2 = cond._kfac_step([p.clone().requires_grad_() for p in tilde], x, t, maps, 0.1, damping)
        f1, f2 = cond._net_function(p1, x), cond._net_function(p2, x, maps)
        out[damping] = float((f1 - f2).norm() / (f1 - f0).norm())
    assert out[0.0] < 1e-9 and out[1.0] > 1e-2


def test_bn_with_epsilon_breaks_the_exact_shift_and_scale_check(small, monkeypatch):
    exact = {r["check"]: r["value"] for r in norms.check_bn_layer(small, 0)}
    assert exact["bn_shift_scale"] < 1e-12

    def bn_eps(x):
        xc = x - x.mean(0)
        return xc / (xc.pow(2).mean(0) + 1.0).sqrt()

    monkeypatch.setattr(norms, "bn", bn_eps)
    broken = {r["check"]: r["value"] for r in norms.check_bn_layer(small, 0)}
    assert broken["bn_shift_scale"] > 1e-3


def test_the_diagonal_step_is_not_invariant_where_the_quasi_diagonal_one_is(small):
    (r,) = cond.check_quasi_invariant(small, 1)
    assert r["value"] < 1e-12 and r["diagonal_change"] > 1e-2


def test_worst_reads_the_largest_error_and_the_smallest_difference():
    t = pd.DataFrame(
        [
            {"check": "eq27", "seed": 0, "case": "a", "value": 1e-15},
            {"check": "eq27", "seed": 1, "case": "a", "value": 3e-9},
            {"check": "sgd_affine", "seed": 0, "case": "b", "value": 0.5},
            {"check": "sgd_affine", "seed": 1, "case": "b", "value": 2e-4},
        ]
    )
    s = SimpleNamespace(tables=SimpleNamespace(read=lambda name: t))
    a = ChecksConfig(experiment="chapter_checks").analysis
    agree, differ = CLAIMS["eq27"][0], CLAIMS["sgd_affine"][0]
    e1, e2 = worst(s, "eq27", "max"), worst(s, "sgd_affine", "min")
    assert (e1.value, e1.n, e2.value) == (3e-9, 2, 2e-4)
    assert judge(agree, e1, a).verdict == "not supported"  # 3e-9 is above the 1e-9 tolerance
    assert judge(differ, e2, a).verdict == "not supported"  # 2e-4 is below the 1e-3 floor
    ok = pd.DataFrame([{"check": "eq27", "seed": 0, "case": "a", "value": 1e-15}])
    s.tables.read = lambda name: ok
    assert judge(agree, worst(s, "eq27", "max"), a).verdict == "supported"
    assert judge(differ, worst(s, "sgd_affine", "min"), a).verdict == "inconclusive"  # no rows: saying why


def test_only_full_bn_keeps_the_gradient_orthogonal_to_the_weights(small):
    from normlab.experiments.chapter_checks import normalizers

    radial, needed = normalizers.check_bn_path_radial(small, 0)
    assert radial["value"] < 1e-12 and radial["full_bn_cos"] < 1e-12  # the closed forms hold; full BN: w . grad = 0
    for arm in ("mean_detached_cos", "var_detached_cos", "both_detached_cos"):
        assert needed[arm] > 1e-2, arm  # each detached arm leaves a radial part
