"""normlab.lens: scale invariance found right on networks whose invariance is known by construction,
the loop left bit-identical, every number against an independent computation, and the report."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import normlab
from normlab.engine.errors import ConfigError
from normlab.engine.invariance import LAYER, UNIT, graph_invariance, rescale_invariance, trace
from normlab.engine.lens_report import flags


# -- networks whose invariance is known by construction ------------------------------------------
def bn_mlp() -> tuple[nn.Module, dict]:
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),  # a bias before BN: cancelled, still per unit
        nn.Linear(16, 16, bias=False), nn.ReLU(), nn.BatchNorm1d(16),  # ReLU is positively homogeneous
        nn.Linear(16, 16), nn.ReLU(), nn.BatchNorm1d(16),  # a bias before the ReLU breaks it
        nn.Linear(16, 16, bias=False), nn.Tanh(), nn.BatchNorm1d(16),  # tanh is not homogeneous
        nn.Linear(16, 3),
    )  # fmt: skip
    return model, {"0": UNIT, "3": UNIT, "6": None, "9": None, "12": None}


def ln_mlp() -> tuple[nn.Module, dict]:
    model = nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.LayerNorm(16), nn.ReLU(),  # only the whole matrix's scale drops out
        nn.Linear(16, 16), nn.LayerNorm(16), nn.ReLU(),  # a bias is not scaled with W: not invariant
        nn.Linear(16, 3),
    )  # fmt: skip
    return model, {"0": LAYER, "3": None, "6": None}


class GroupNormCNN(nn.Module):
    """Group norm with 4 groups (the whole layer's scale), and with a group per channel (each unit's,
    a bias included: instance norm removes per-channel constants)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.gn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.GroupNorm(4, 8)
        self.conv2, self.gn2 = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.gn2(self.conv2(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


GN_EXPECTED = {"conv1": LAYER, "conv2": UNIT, "head": None}


class Block(nn.Module):
    """A transformer block with layer norm before (pre-norm) or after the residual sum (post-norm).
    Neither makes any weight scale invariant: pre-norm normalizes the block's input, not its output,
    and post-norm normalizes x + f(x), where x does not scale with f's weights."""

    def __init__(self, d: int, pre: bool):
        super().__init__()
        self.pre = pre
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ff1, self.ff2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def ff(self, x):
        return self.ff2(F.gelu(self.ff1(x)))

    def forward(self, x):
        if self.pre:
            h = self.ln1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return x + self.ff(self.ln2(x))
        x = self.ln1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ln2(x + self.ff(x))


class TinyTransformer(nn.Module):
    def __init__(self, pre: bool, d: int = 16):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.blocks = nn.Sequential(Block(d, pre), Block(d, pre))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


def transformer_expected(model: nn.Module) -> dict:
    from normlab.engine.invariance import weight_layers

    return {name: None for name, _, _ in weight_layers(model)}


def resnet18() -> tuple[nn.Module, dict]:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    want = {n: UNIT for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}  # every conv feeds a BN
    want["fc"] = None
    return model, want


def _kinds(found: dict) -> dict:
    return {n: inv.kind for n, inv in found.items()}


@pytest.mark.parametrize("build", [bn_mlp, ln_mlp, lambda: (GroupNormCNN(), GN_EXPECTED), resnet18])
def test_scale_invariance_from_the_graph_matches_the_construction(build):
    model, want = build()
    assert _kinds(graph_invariance(model)) == want


@pytest.mark.parametrize("pre", [True, False])
def test_transformer_blocks_are_not_scale_invariant_pre_or_post_norm(pre):
    model = TinyTransformer(pre)
    found = graph_invariance(model)
    assert _kinds(found) == transformer_expected(model)
    assert {"blocks.0.attn", "blocks.0.attn.out_proj", "blocks.1.ff2"} <= set(found)
    if not pre:  # the residual sum before the norm is what breaks it, and the lens says so
        assert "a sum with an unscaled input" in found["blocks.0.attn.out_proj"].reason
        assert "a sum with an unscaled input" in found["blocks.0.ff2"].reason


BUILDS = [bn_mlp, ln_mlp, lambda: (GroupNormCNN(), GN_EXPECTED)]
BUILDS += [lambda: (TinyTransformer(True), None), lambda: (TinyTransformer(False), None)]


@pytest.mark.parametrize("build", BUILDS)
def test_rescaling_a_real_batch_agrees_with_the_graph(build):
    torch.manual_seed(0)
    model, want = build()
    want = want or transformer_expected(model)
    x = torch.randn(6, 5, 4) if isinstance(model, TinyTransformer) else (
        torch.randn(16, 3, 6, 6) if isinstance(model, GroupNormCNN) else torch.randn(32, 8))  # fmt: skip
    model.train()
    assert _kinds(rescale_invariance(model, (x,), {})) == want


@pytest.mark.parametrize("norm_first", [True, False])
def test_untraceable_torch_transformer_layers_fall_back_to_rescaling(norm_first, tmp_path):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True, norm_first=norm_first)
    model = nn.Sequential(nn.Linear(4, 16), layer, nn.Flatten(), nn.Linear(16 * 5, 3))
    with pytest.raises(Exception):
        trace(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lens = normlab.lens.attach(model, opt, every=1, out=tmp_path / "lens")
    x, y = torch.randn(8, 5, 4), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    lens.close()
    manifest = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert not manifest["traced"] and manifest["trace_error"]
    assert {e["found_by"] for e in manifest["layers"]} == {"rescale"}
    assert all(e["scale_invariant"] == 0 for e in manifest["layers"])


def _configs():
    """The engine's own models, every norm x placement x activation x bias (x residual for MLPs)."""
    from normlab.engine.spec import ModelConfig

    for arch, norm, pos, act, bias, res in itertools.product(
        ["mlp", "cnn1d", "cnn2d"], ["none", "batch", "layer", "weight", "center", "rms", "weight_center"],
        ["before", "after"], ["relu", "tanh"], ["auto", "true", "false"], [False, True],
    ):  # fmt: skip
        if (res and arch != "mlp") or (norm in ("weight", "rms", "weight_center") and arch != "mlp"):
            continue
        if norm in ("weight", "weight_center") and pos == "after":
            continue  # refused by RunConfig.check
        yield arch, ModelConfig(arch=arch, norm=norm, norm_position=pos, activation=act, bias=bias, residual=res,
                                width=12, depth=3, channels=[4, 4], kernel_sizes=[3, 3], strides=[2, 2])  # fmt: skip
        if arch == "mlp" and norm == "batch":  # a detached statistic keeps the function's invariance
            for detach in ("mean", "var", "both"):
                yield arch, ModelConfig(arch=arch, norm=norm, norm_position=pos, activation=act, bias=bias,
                                        residual=res, width=12, depth=3, norm_detach=detach)  # fmt: skip
            yield arch, ModelConfig(arch=arch, norm=norm, norm_position=pos, activation=act, bias=bias,
                                    residual=res, width=12, depth=3, norm_ghost=4)  # fmt: skip
        if arch == "mlp" and norm == "none" and bias != "false":  # Eq. 9's coordinates: no invariance
            yield arch, ModelConfig(arch=arch, activation=act, bias=bias, residual=res, width=12, depth=3,
                                    centered_reparam=True)  # fmt: skip


def test_the_lens_agrees_with_every_engine_models_declared_invariance():
    """Two independent answers: models.py's rule per config, the lens's from the graph (or a real batch
    where torch.fx cannot trace: the 2-D CNN compares shapes in its forward)."""
    from normlab.engine.models import build_model

    sources, checked = set(), 0
    for arch, cfg in _configs():
        shape = (3, 8, 8) if arch == "cnn2d" else (40,)
        torch.manual_seed(0)
        model = build_model(cfg, shape, 10)
        try:
            found = graph_invariance(model)
            sources.add("graph")
        except Exception:
            model.train()
            found = rescale_invariance(model, (torch.randn(16, *shape),), {})
            sources.add("rescale")
        by_module = dict(model.named_modules())
        declared = {id(wl.module): wl.invariance for wl in model.weight_layers}
        for name, inv in found.items():
            assert inv.kind == declared[id(by_module[name])], (cfg, name, inv)
            checked += 1
    assert sources == {"graph", "rescale"} and checked > 500


# -- the loop unchanged ---------------------------------------------------------------------------
def _train(model_fn, opt_fn, steps, lens_dir=None, every=1, seed=0):
    torch.manual_seed(seed)
    model = model_fn()
    opt = opt_fn(model)
    lens = normlab.lens.attach(model, opt, every=every, out=lens_dir) if lens_dir else None
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.randn(512, 8, generator=gen), torch.randint(0, 3, (512,), generator=gen)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 512, (64,), generator=gen)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if lens:
        lens.close()
    return losses, model


def _dropout_bn_mlp():
    return nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(32, 3))  # fmt: skip


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so the lens runs its side passes."""

    def __init__(self):
        super().__init__()
        self.body = _dropout_bn_mlp()

    def forward(self, x):
        return self.body(x) if x.shape[0] > 1 else self.body(x.repeat(2, 1))[:1]


@pytest.mark.parametrize("model_fn", [_dropout_bn_mlp, Untraceable])
@pytest.mark.parametrize("opt_fn", [lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3),
                                    lambda m: torch.optim.Adam(m.parameters(), lr=1e-2)])  # fmt: skip
def test_the_loss_trajectory_is_bit_identical_with_and_without_the_lens(model_fn, opt_fn, tmp_path):
    plain, m1 = _train(model_fn, opt_fn, 30)
    seen, m2 = _train(model_fn, opt_fn, 30, tmp_path / "lens", every=3)
    assert plain == seen  # exact: the same floats, dropout masks and BN statistics included
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    manifest = json.loads((tmp_path / "lens" / "lens.json").read_text())
    assert manifest["probes"] == 10 and manifest["steps_seen"] == 30
    assert manifest["traced"] == (model_fn is _dropout_bn_mlp)


# -- every number against an independent computation ----------------------------------------------
def _nearest_rank(v: np.ndarray, q: float) -> float:
    return float(np.sort(v)[round(q * (len(v) - 1))])


def test_eff_lr_angular_update_and_cos_against_the_weights_before_and_after_a_step(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    lr = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5, weight_decay=1e-2)
    lens = normlab.lens.attach(model, opt, every=2, out=tmp_path / "lens")
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    record = {}
    for k in range(5):
        F.cross_entropy(model(x), y).backward()
        w0 = model[0].weight.detach().double().clone().numpy()
        g0 = model[0].weight.grad.detach().double().clone().numpy()
        opt.step()
        opt.zero_grad()
        w1 = model[0].weight.detach().double().numpy()
        record[k] = (w0, g0, w1.copy())
    lens.close()
    table = pd.read_csv(tmp_path / "lens" / "lens.csv", dtype={"layer": str})
    assert sorted(table["step"].unique()) == [0, 2, 4]
    for k in (0, 2, 4):
        w0, g0, w1 = record[k]
        at = table[(table["step"] == k) & (table["layer"] == "0")].set_index(["metric", "stat"])["value"]
        norms = (w0**2).sum(1)
        eff = lr / norms
        cos = (w0 * g0).sum(1) / np.sqrt(norms * (g0**2).sum(1))
        # the angle between the directions, by arccos: a formula other than the lens's chord
        theta = np.arccos(np.clip((w0 * w1).sum(1) / np.sqrt(norms * (w1**2).sum(1)), -1, 1))
        chord = 2 * np.sin(theta / 2)
        for stat, q in (("median", 0.5), ("q10", 0.1), ("q90", 0.9)):
            assert at[("eff_lr", stat)] == pytest.approx(_nearest_rank(eff, q), rel=1e-6)
            assert at[("weight_norm_sq", stat)] == pytest.approx(_nearest_rank(norms, q), rel=1e-6)
            assert at[("angular_update", stat)] == pytest.approx(_nearest_rank(chord, q), rel=1e-4)
        assert at[("eff_lr", "mean")] == pytest.approx(eff.mean(), rel=1e-6)
        assert at[("grad_cos", "mean")] == pytest.approx(cos.mean(), abs=1e-6)
        assert abs(at[("grad_cos", "median")]) < 1e-4  # Eq. 16: invariant units' gradients are orthogonal
        assert at[("scale_invariant", "value")] == 1
        angle = math.sqrt(2 * lr * 1e-2 / 1.5)
        assert at[("wd_equilibrium_angle", "value")] == pytest.approx(angle, rel=1e-12)
        assert at[("wd_equilibrium_ratio", "value")] == pytest.approx(np.sqrt(np.mean(chord**2)) / angle, rel=1e-4)
        head = table[(table["step"] == k) & (table["layer"] == "3")].set_index(["metric", "stat"])["value"]
        assert head[("scale_invariant", "value")] == 0 and ("eff_lr", "median") not in head.index


def test_layer_norm_reports_the_whole_matrix(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = normlab.lens.attach(model, opt, every=1, out=tmp_path / "lens")
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    F.cross_entropy(model(x), y).backward()
    w0, g0 = model[0].weight.detach().double().clone(), model[0].weight.grad.double().clone()
    opt.step()
    lens.close()
    t = pd.read_csv(tmp_path / "lens" / "lens.csv", dtype={"layer": str}).set_index(["layer", "metric", "stat"])
    total = float((w0**2).sum())
    assert t.loc[("0", "eff_lr", "value"), "value"] == pytest.approx(0.1 / total, rel=1e-6)  # summed in float32
    assert t.loc[("0", "weight_norm_sq", "value"), "value"] == pytest.approx(total, rel=1e-6)
    whole = abs(t.loc[("0", "grad_cos", "value"), "value"])
    assert whole < 1e-4  # per matrix (Eq. 16 for the whole W; layer norm's epsilon leaves ~1e-5) ...
    per_unit = max(abs(t.loc[("0", "grad_cos", s), "value"]) for s in ("q10", "q90"))
    assert per_unit > 100 * whole  # ... not per unit
    assert abs(float((w0 * g0).sum() / (w0.norm() * g0.norm())) - t.loc[("0", "grad_cos", "value"), "value"]) < 1e-7


def test_weight_decay_reaches_the_equilibrium_angle_of_eq25(tmp_path):
    """A BN MLP, 3000 steps: under plain SGD (lambda = 1e-2, 6x the transient 1/(2 alpha lambda))
    the rms angle over the last quarter of probes within 0.8-1.25x sqrt(2 alpha lambda), per layer;
    with momentum 0.9 (lambda = 5e-3) within the same band of sqrt(2 alpha lambda / (1 + beta)).
    (With momentum 0.9 and lambda = 1e-2 a tenth of layer 0's units collapse to ||w|| ~ 0 and stop
    turning, and the layer's rms falls to 0.6x: measured, the reason the report lists ||w||^2's q10.)"""
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(2048, 20, generator=gen)
    y_all = (x_all[:, :5].sum(1) > 0).long() + (x_all[:, 5] > 0).long()
    for momentum, decay in ((0.0, 1e-2), (0.9, 5e-3)):
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Linear(20, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 3),
        )  # fmt: skip
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=decay)
        out = tmp_path / f"m{momentum}"
        with normlab.lens.attach(model, opt, every=10, out=out):
            for _ in range(3000):
                idx = torch.randint(0, 2048, (128,), generator=gen)
                F.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
                opt.step()
                opt.zero_grad()
        table, manifest = normlab.lens.read(out)
        (wd_flag,) = [f for f in flags(table, manifest) if f["title"].startswith("Weight decay")]
        assert {r["layer"] for r in wd_flag["rows"]} == {"0", "3"}
        for row in wd_flag["rows"]:
            assert 0.8 <= row["measured / predicted"] <= 1.25, (momentum, row)
            assert row["at equilibrium"] == "yes"


def test_adam_eps_share_against_the_optimizer_state(tmp_path):
    for eps, want in ((1.0, 1.0), (1e-12, 0.0)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=eps)
        out = tmp_path / f"e{eps}"
        with normlab.lens.attach(model, opt, every=1, out=out):
            for _ in range(3):
                F.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,))).backward()
                opt.step()
                opt.zero_grad()
        state = opt.state[model[0].weight]
        v_hat = state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))
        independent = float((v_hat.sqrt() <= eps).double().mean())
        table, manifest = normlab.lens.read(out)
        last = table[(table.metric == "adam_eps_share") & (table.layer == "0") & (table.step == 2)]["value"]
        assert float(last.iloc[0]) == pytest.approx(independent) == pytest.approx(want)
        titles = [f["title"] for f in flags(table, manifest)]
        assert ("Adam groups where epsilon dominates" in titles) == (want == 1.0)
        assert "eff_lr" not in set(table.metric)  # Adam: no alpha/||w||^2


# -- the report and the errors --------------------------------------------------------------------
def test_report_flags_the_implicit_decay_and_writes_md_html_png(tmp_path):
    _train(lambda: nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)),
           lambda m: torch.optim.SGD(m.parameters(), lr=0.5), 400, tmp_path / "run", every=10)  # fmt: skip
    from typer.testing import CliRunner

    from normlab.cli.main import app

    res = CliRunner().invoke(app, ["--plain", "lens", "report", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "run" / "report.md").read_text()
    assert "without weight decay: the effective learning rate decays" in md
    table, manifest = normlab.lens.read(tmp_path / "run")
    (decay,) = [f for f in flags(table, manifest) if "without weight decay" in f["title"]]
    # the terminal shows each flagged layer on a line of its own, with its numbers, as `run` prints its claims
    printed = [ln for ln in res.output.splitlines() if ln.startswith("flag: ") and "without weight decay" in ln]
    assert len(printed) == len(decay["rows"]) == 2
    for line, row in zip(printed, decay["rows"]):
        assert f": {row['layer']}: " in line and f"||w||^2 grew {row['||w||^2 grew']:.3g}" in line
    assert {r["layer"] for r in decay["rows"]} == {"0", "3"}
    for row in decay["rows"]:  # plain SGD: ||w_j||^2 grows by alpha^2 ||g_j||^2 a step (Eq. 17), eff_lr falls
        assert row["||w||^2 grew"] > 1.5 and row["eff_lr fell"] == pytest.approx(row["||w||^2 grew"], rel=0.05)
        assert -1.5 < row["slope (log eff_lr vs log k)"] < 0
        norms = table[(table.metric == "weight_norm_sq") & (table.layer == row["layer"]) & (table.stat == "median")]
        assert (np.diff(norms["value"].to_numpy()) >= 0).all()
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert (tmp_path / "run" / "lens.png").stat().st_size > 10_000
    again = CliRunner().invoke(app, ["lens", "report", str(tmp_path / "run")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    doc = json.loads(CliRunner().invoke(app, ["lens", "report", str(tmp_path / "run"), "--overwrite", "--json"]).stdout)
    assert [f["title"] for f in doc["flags"]] == [f["title"] for f in flags(table, manifest)]
    assert sorted(Path(p).name for p in doc["files"]) == ["lens.png", "report.html", "report.md"]
    missing = CliRunner().invoke(app, ["lens", "report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no lens.csv" in missing.output


def test_attach_refuses_bad_input_with_one_clear_line(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="every: expected a whole number"):
        normlab.lens.attach(model, opt, every=0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="optimizer: expected a torch.optim.Optimizer"):
        normlab.lens.attach(model, "sgd", out=tmp_path / "a")
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="updates none of the model's weight layers"):
        normlab.lens.attach(model, other, out=tmp_path / "a")
    normlab.lens.attach(model, opt, out=tmp_path / "b").close()
    with pytest.raises(ConfigError, match="exists; pass another out= or overwrite=True"):
        normlab.lens.attach(model, opt, out=tmp_path / "b")
    assert not (tmp_path / "a").exists()  # nothing half-written behind a refusal


def test_the_resnet18_example_runs_on_fakedata_and_writes_its_report(tmp_path):
    """examples/lens/train_resnet18.py without CIFAR-10 on disk: FakeData, said on stderr, and a
    report in which all 20 convolutions are per-unit invariant and fc is not."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torchvision")
    script = Path(__file__).resolve().parent.parent / "examples" / "lens" / "train_resnet18.py"
    args = ["--steps", "3", "--every", "1", "--batch-size", "4", "--data", str(tmp_path / "data")]
    res = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(tmp_path / "lens")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert "using torchvision's FakeData" in res.stderr and "--download" in res.stderr
    manifest = json.loads((tmp_path / "lens" / "lens.json").read_text())
    kinds = {e["layer"]: e["invariance"] for e in manifest["layers"]}
    assert sum(k == UNIT for k in kinds.values()) == 20 and kinds["fc"] is None
    assert manifest["probes"] == 3 and (tmp_path / "lens" / "report.html").is_file()


def test_a_loop_that_dies_keeps_every_probe_and_the_report_says_so(tmp_path):
    """No close(): an exception ends the process; lens.csv still holds all 20 probes (flushed at
    exit), there is no lens.json, and the report says the lens was not closed."""
    import subprocess
    import sys

    script = f"""
import torch, torch.nn as nn, torch.nn.functional as F, normlab
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
lens = normlab.lens.attach(model, opt, every=1, out={str(tmp_path / "lens")!r})
for k in range(20):
    F.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 3, (32,))).backward()
    opt.step()
    opt.zero_grad()
raise RuntimeError("the loop died")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 1 and "the loop died" in res.stderr
    table, manifest = normlab.lens.read(tmp_path / "lens")
    assert sorted(table["step"].unique()) == list(range(20)) and manifest == {}
    normlab.lens.report(tmp_path / "lens")
    assert "The lens was not closed" in (tmp_path / "lens" / "report.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_on_cuda_the_loop_is_bit_identical_and_the_numbers_match_the_cpu(tmp_path):
    """The same BN MLP on a GPU: the lens leaves the loop bit-identical there too, and its lens.csv
    agrees with a CPU run's to float rounding (same rows, values within 1e-3 relative)."""

    def train_on(device, out):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
        model = model.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        lens = normlab.lens.attach(model, opt, every=2, out=out) if out else None
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(256, 8, generator=gen).to(device), torch.randint(0, 3, (256,), generator=gen).to(device)
        losses = []
        for _ in range(10):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if lens:
            lens.close()
        return losses

    assert train_on("cuda", None) == train_on("cuda", tmp_path / "gpu")
    train_on("cpu", tmp_path / "cpu")
    gpu, cpu = (pd.read_csv(tmp_path / d / "lens.csv", dtype={"layer": str}) for d in ("gpu", "cpu"))
    assert gpu[["step", "layer", "metric", "stat"]].equals(cpu[["step", "layer", "metric", "stat"]])
    assert np.allclose(gpu["value"], cpu["value"], rtol=1e-3, atol=1e-6)


# -- every weight the optimizer steps: bare matrices, parametrizations, tied weights, wrappers -------
class BareBN(nn.Module):
    """The textbook invariant case with no Linear module: a bare matrix feeding batch norm, a weight-
    normalized layer (torch's current API), and an output layer tied to an embedding (as nanoGPT ties
    lm_head to wte), which also steps a bias, BN's gain and shift and weight norm's gain g."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(32, 8) / 8**0.5)
        self.bn = nn.BatchNorm1d(32)
        self.wn = nn.utils.parametrizations.weight_norm(nn.Linear(32, 16))
        self.emb = nn.Embedding(3, 16)
        self.head = nn.Linear(16, 3, bias=False)
        self.head.weight = self.emb.weight  # tied: one tensor, two names

    def forward(self, x):
        h = torch.relu(self.bn(x @ self.W.t()))
        return self.head(torch.relu(self.wn(h)))


def _sgd_step(model, opt, gen: torch.Generator) -> None:
    """One step of the tests' loop on a fresh random batch (8 features, 3 classes)."""
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _stepped(model, opt) -> int:
    return len({id(p) for g in opt.param_groups for p in g["params"]})


@pytest.mark.parametrize("wrap", ["none", "compile", "ddp"])
def test_every_weight_the_optimizer_steps_appears_with_its_verdict_or_is_accounted_for(wrap, tmp_path):
    torch.manual_seed(0)
    inner = BareBN()
    model = inner
    if wrap == "compile":
        model = torch.compile(inner, backend="eager")  # the layer names gain `_orig_mod.` and tracing fails
    elif wrap == "ddp":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        model = nn.parallel.DistributedDataParallel(inner)
    try:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lens = normlab.lens.attach(model, opt, every=1, out=tmp_path / "run")
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            _sgd_step(model, opt, gen)
        lens.close()
    finally:
        if wrap == "ddp":
            torch.distributed.destroy_process_group()
    manifest = json.loads((tmp_path / "run" / "lens.json").read_text())
    layers = {e["layer"]: e for e in manifest["layers"]}
    assert set(layers) == {"W", "wn", "head"}  # named as the user's model names them, each tensor once
    assert layers["W"]["invariance"] == "unit" and layers["W"]["numeric_check"]["agrees"] is True
    assert layers["W"]["found_by"] == "graph"  # the user's module is traced, wrapped or not (no fallback)
    assert layers["wn"]["invariance"] == "unit" and layers["wn"]["found_by"] == "parametrization"
    assert layers["wn"]["tensor"] == "wn.parametrizations.weight.original1"  # measured on v, the stepped tensor
    assert layers["wn"]["numeric_check"]["agrees"] is True  # cos(v, grad v) is 0: invariant by construction
    assert layers["head"]["invariance"] is None and layers["head"]["shared_with"] == ["emb.weight"]
    assert manifest["wrappers"] == {"none": [], "compile": ["OptimizedModule"],
                                    "ddp": ["DistributedDataParallel"]}[wrap]  # fmt: skip
    params = manifest["parameters"]
    counted = params["measured"] + sum(v["count"] for v in params["by_kind"].values())
    assert params["stepped"] == _stepped(model, opt) == counted  # nothing stepped is missing without a word
    assert {k: v["count"] for k, v in params["by_kind"].items()} == {
        "bias": 1, "normalizer gain or shift": 2, "weight-norm gain g": 1}  # fmt: skip
    table, _ = normlab.lens.read(tmp_path / "run")
    assert {"W", "wn", "head"} == set(table["layer"])
    normlab.lens.report(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "the same tensor as emb.weight, reported once" in md and "The optimizer steps 7 tensors: 3 measured" in md


def test_the_layer_table_shows_what_each_optimizer_family_measures(tmp_path):
    """AdamW has no alpha/||w||^2: its table leaves eff_lr out (no column of None) and shows epsilon's
    share instead; SGD's shows eff_lr for its invariant layers."""
    _train(_dropout_bn_mlp, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), 4, tmp_path / "adamw")
    _train(_dropout_bn_mlp, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), 4, tmp_path / "sgd")
    heads = {}
    for name in ("adamw", "sgd"):
        normlab.lens.report(tmp_path / name)
        md = (tmp_path / name / "report.md").read_text()
        table = md[md.index("## Layers") :].splitlines()
        heads[name] = next(line for line in table if line.startswith("| layer"))
        assert "None" not in "\n".join(line for line in table if line.startswith("| "))
    assert "eps share" in heads["adamw"] and "eff_lr" not in heads["adamw"]
    assert "eff_lr" in heads["sgd"] and "eps share" not in heads["sgd"]


def test_on_probe_gets_each_probe_as_measured_and_tensorboard_reads_it_back(tmp_path):
    """A tracker sees every probe's rows as they are measured (the same numbers lens.csv gets); the
    TensorBoard adapter's events read back with TensorBoard's own reader; the tidy table is the same
    from the lens object and from its folder."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen: list[list[dict]] = []
    board = normlab.lens.tensorboard(tmp_path / "tb")
    torch.manual_seed(0)
    model = _dropout_bn_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def both(rows):
        seen.append(rows)
        board(rows)

    lens = normlab.lens.attach(model, opt, every=2, out=tmp_path / "run", on_probe=both)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        _sgd_step(model, opt, gen)
        if step == 0:
            assert len(seen) == 1 and {r["step"] for r in seen[0]} == {0}  # delivered at the probe, not at close
    live = lens.table()
    lens.close()
    board.close()
    assert [{r["step"] for r in rows} for rows in seen] == [{0}, {2}, {4}]
    table = normlab.lens.table(tmp_path / "run")
    flat = pd.DataFrame([r for rows in seen for r in rows])
    assert (
        flat[["step", "layer", "metric", "stat"]].values.tolist()
        == table[["step", "layer", "metric", "stat"]].values.tolist()
    )
    assert flat["value"].tolist() == pytest.approx(table["value"].tolist(), nan_ok=True)
    assert live[["step", "layer", "metric", "stat", "value"]].equals(
        table[["step", "layer", "metric", "stat", "value"]]
    )
    assert set(table[table["layer"] == "0"]["invariance"]) == {"unit"} and "module" in table
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("0/weight_norm_sq/median")
    want = table[(table.layer == "0") & (table.metric == "weight_norm_sq") & (table.stat == "median")]
    assert [e.step for e in events] == [0, 2, 4]
    assert [e.value for e in events] == pytest.approx(want["value"].tolist(), rel=1e-6)


@pytest.mark.parametrize("case", ["eps", "eval"])
def test_a_layer_whose_numbers_disagree_with_the_graph_is_given_its_cause_with_the_numbers(case, tmp_path):
    """MobileNetV3's depthwise convs: BN's eps (1e-3) is not small against their units' variance, so
    |cos(w, g)| is far from 0 though the graph says invariant; or the loop trains in eval mode. The
    flag names which, with the normalizer, its eps and the variance the lens measured."""

    def model_fn():
        m = nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32, eps=1e-3), nn.ReLU(), nn.Linear(32, 3))
        if case == "eps":
            with torch.no_grad():
                m[0].weight.mul_(1e-3)  # pre-normalizer variance ~1e-7, against eps 1e-3
        else:
            m.eval()  # running statistics: the batch's own would make layer 0 invariant
        return m

    _train(model_fn, lambda m: torch.optim.SGD(m.parameters(), lr=0.01), 6, tmp_path / "run", every=2)
    table, manifest = normlab.lens.read(tmp_path / "run")
    (flag,) = [f for f in flags(table, manifest) if "disagree" in f["title"]]
    (row,) = flag["rows"]
    norm = next(e for e in manifest["layers"] if e["layer"] == "0")["normalizer"]
    assert row["layer"] == "0" and norm["module"] == "1" and norm["eps"] == pytest.approx(1e-3)
    if case == "eps":
        assert norm["training"] is True and norm["eps_share_median"] > 0.5 and norm["var_median"] < 1e-3
        assert "1's eps 0.001 is not small against its units' variance (median" in row["cause"]
    else:
        assert norm["training"] is False and "eval mode" in row["cause"] and "model.eval()" in row["cause"]


def test_the_figure_draws_the_layers_that_matter_and_the_rest_as_a_band(tmp_path):
    """A deep network's figure: the flagged layers and a few by depth as labelled lines (at most
    SHOWN_LAYERS), every other layer inside one grey band, not dozens of unlabelled lines."""
    from normlab.engine.lens_report import SHOWN_LAYERS, shown_layers

    order = [str(i) for i in range(30)]
    found = [{"rows": [{"layer": "17"}, {"layer": "4"}]}, {"rows": [{"between": "3 .. 9"}]}]
    picks = shown_layers(order, found)
    assert len(picks) == SHOWN_LAYERS and {"17", "4", "0", "29"} <= set(picks)
    assert picks == sorted(picks, key=int)  # in depth order
    assert shown_layers(order[:5], found) == order[:5]

    def deep():
        blocks = [m for _ in range(12) for m in (nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())]
        return nn.Sequential(*blocks, nn.Linear(8, 3))

    _train(deep, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), 4, tmp_path / "run", every=1)
    drawn = {}
    from normlab.engine import plots

    def keep(fig, path):
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        drawn["labels"] = [t.get_text() for legend in legends for t in legend.get_texts()]
        return original(fig, path)

    original = plots.save
    plots.save = keep
    try:
        normlab.lens.report(tmp_path / "run")
    finally:
        plots.save = original
    assert "5 other layers (10-90%)" in drawn["labels"]  # 13 layers: 8 lines, 5 in the band
    assert len({t for t in drawn["labels"] if t.isdigit()}) == SHOWN_LAYERS


def test_a_matrix_inside_a_leaf_module_the_algebra_does_not_know_is_not_called_invariant():
    """An LSTM's weight_ih_l0 is measured (a matrix the optimizer steps) but the graph cannot follow
    it through the LSTM: not invariant, even with batch norm after it (conservative, never a false yes)."""

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(8, 16, batch_first=True)
            self.bn = nn.BatchNorm1d(16)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h, _ = self.rnn(x)
            return self.out(self.bn(h[:, -1]))

    from normlab.engine.invariance import weight_layers

    model = Recurrent()
    names = [n for n, _, _ in weight_layers(model)]
    assert "rnn.weight_ih_l0" in names and "rnn.weight_hh_l0" in names
    found = graph_invariance(model)
    assert found["rnn.weight_ih_l0"].kind is None and found["out"].kind is None


def test_the_normalizer_watch_reads_the_loops_own_forward_not_the_rescaling_test(tmp_path):
    """A model with a layer the graph cannot decide (an orthogonal parametrization) is rescaled on
    a real batch at the first probe; the normalizer's variance the lens reports is still the one of
    the loop's own forward pass (checked against an independent computation on the same batch)."""

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.W = nn.Parameter(torch.randn(16, 8))
            self.bn = nn.BatchNorm1d(16)

        def forward(self, x):
            return self.bn(x @ self.W.t())

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.utils.parametrizations.orthogonal(nn.Linear(16, 16))
            self.out = nn.Linear(16, 3)
            self.first = First()  # registered last: the rescaling test rescales its W last

        def forward(self, x):
            return self.out(torch.relu(self.q(torch.relu(self.first(x)))))

    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights at the probe are the initial ones
    lens = normlab.lens.attach(model, opt, every=1, out=tmp_path / "run")
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 3, (64,))
    want = float((x @ model.first.W.detach().t()).double().var(dim=0, unbiased=False).median())
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    lens.close()
    layers = {e["layer"]: e for e in json.loads((tmp_path / "run" / "lens.json").read_text())["layers"]}
    assert layers["q"]["found_by"] == "rescale"  # the rescaling test did run at this probe
    assert layers["first.W"]["invariance"] == "unit" and layers["first.W"]["found_by"] == "graph"  # in a submodule
    assert layers["first.W"]["normalizer"]["var_median"] == pytest.approx(want, rel=1e-6)


class _HandBN(nn.Module):
    """A user's own batch norm, written out: its batch mean and variance, either left out of backprop."""

    def __init__(self, detach: str):
        super().__init__()
        self.detach = detach

    def forward(self, x):
        mean = x.mean(dim=0)
        var = (x - mean).pow(2).mean(dim=0)
        if self.detach in ("mean", "both"):
            mean = mean.detach()
        if self.detach in ("var", "both"):
            var = var.detach()
        return (x - mean) / torch.sqrt(var + 1e-5)


@pytest.mark.parametrize("detach", ["none", "mean", "var", "both"])
def test_a_detached_statistic_is_named_as_why_the_gradient_is_not_orthogonal(detach, tmp_path):
    """The graph reads a hand-written batch norm as making layer 0 invariant per unit, with or without a
    detached statistic (the forward pass is the same); where one is detached it names it, the numeric check
    then expects no orthogonality (|cos(w, g)| is far from 0), and the report says why instead of flagging a
    disagreement. With the whole statistics path the gradient is orthogonal to 1e-4."""

    def model_fn():
        return nn.Sequential(nn.Linear(8, 32, bias=False), _HandBN(detach), nn.ReLU(), nn.Linear(32, 3))

    model = model_fn().train()
    found = graph_invariance(model)["0"]
    assert found.kind == UNIT and found.source == "graph"
    assert (found.detached is None) == (detach == "none")
    if detach != "none":
        assert found.detached.startswith("detach") and "detached from backprop at" in found.reason
    _train(model_fn, lambda m: torch.optim.SGD(m.parameters(), lr=0.05), 6, tmp_path / "run", every=2)
    table, manifest = normlab.lens.read(tmp_path / "run")
    check = next(e for e in manifest["layers"] if e["layer"] == "0")["numeric_check"]
    titles = [f["title"] for f in flags(table, manifest)]
    assert not any("disagree" in t for t in titles)
    if detach == "none":
        assert check["agrees"] is True and check["max_median_abs_cos"] < 1e-4
    else:
        assert check["agrees"] is None and check["detached"] == found.detached
        assert check["max_median_abs_cos"] > 0.01
        (flag,) = [f for f in flags(table, manifest) if "detached" in f["title"]]
        assert [r["layer"] for r in flag["rows"]] == ["0"]


def test_a_statistic_over_the_channels_is_not_read_as_a_per_unit_normalizer():
    """A mean over the features (dim 1) mixes the units: per unit the layer is not invariant (the whole
    matrix is: this is layer norm written out)."""

    class HandLN(nn.Module):
        def forward(self, x):
            mean = x.mean(dim=1, keepdim=True)
            var = (x - mean).pow(2).mean(dim=1, keepdim=True)
            return (x - mean) * torch.rsqrt(var + 1e-5)

    model = nn.Sequential(nn.Linear(8, 32, bias=False), HandLN(), nn.ReLU(), nn.Linear(32, 3))
    assert graph_invariance(model)["0"].kind == LAYER
    # with a bias before it, the bias differs from unit to unit: subtracting the mean over the units does not
    # cancel it, so scaling W alone changes the output (as nn.LayerNorm after a biased layer)
    biased = nn.Sequential(nn.Linear(8, 32), HandLN(), nn.ReLU(), nn.Linear(32, 3))
    assert graph_invariance(biased)["0"].kind is None
    biased.train()
    assert rescale_invariance(biased, (torch.randn(16, 8),), {})["0"].kind is None  # the real batch agrees
