"""The training loop and executor: determinism, parallel = serial, divergence and failures kept."""
import math

import pytest
import torch

from normlab.engine.executor import execute
from normlab.engine.spec import DataConfig, ModelConfig, OptimConfig, ProbeConfig, RunConfig, TrainConfig
from normlab.engine.train import RunTask, train


def tiny(steps=30, lr=0.1, norm="batch", probe_every=10, eval_every=10) -> RunConfig:
    return RunConfig(
        data=DataConfig(name="synthetic", num_samples=300, input_shape=[12], num_classes=3),
        model=ModelConfig(width=16, depth=2, norm=norm),
        optim=OptimConfig(name="sgd", lr=lr),
        train=TrainConfig(steps=steps, batch_size=32, eval_every=eval_every),
        probes=ProbeConfig(every=probe_every))


def test_same_seed_gives_bit_identical_rows_and_other_seed_does_not():
    a = train(RunTask("a", "x", 0, tiny()))
    b = train(RunTask("a", "x", 0, tiny()))
    c = train(RunTask("a", "x", 1, tiny()))
    assert a.rows == b.rows and a.final == b.final
    assert a.rows != c.rows


def test_global_rng_is_untouched_by_a_run():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(RunTask("a", "x", 0, tiny(steps=5)))
    assert torch.equal(torch.rand(3), expected)


def test_step_numbering_of_probes_and_evaluations():
    res = train(RunTask("a", "x", 0, tiny(steps=25, probe_every=10, eval_every=10)))
    probe_steps = sorted({r[0] for r in res.rows if r[1] == "batch_loss"})
    eval_steps = sorted({r[0] for r in res.rows if r[1] == "test_acc"})
    assert probe_steps == [0, 10, 20]          # measured before the update of that step
    assert eval_steps == [0, 10, 20, 25]       # after that many updates, and at the end
    assert res.status == "ok" and res.steps_done == 25
    assert res.final["test_acc"] == [r[5] for r in res.rows if r[1] == "test_acc" and r[0] == 25][0]


def test_pool_gives_the_same_numbers_as_in_process():
    tasks = [RunTask(f"r{s}", "x", s, tiny(steps=20)) for s in range(2)]
    serial = execute(tasks, jobs=1)
    pooled = execute(tasks, jobs=2)
    assert [r.run_id for r in pooled] == ["r0", "r1"]
    for a, b in zip(serial, pooled):
        assert a.rows == b.rows and a.status == b.status == "ok"


def test_divergence_is_recorded_not_dropped():
    res = train(RunTask("d", "x", 0, tiny(steps=200, lr=1e8, norm="none")))
    assert res.status == "diverged"
    assert res.steps_done < 200
    assert all(math.isnan(v) for v in res.final.values())
    assert any(r[1] == "batch_loss" and not math.isfinite(r[5]) for r in res.rows) or \
        any(r[1] == "train_loss" and not math.isfinite(r[5]) for r in res.rows)
    assert any(r[1] == "test_acc" and r[0] == 0 for r in res.rows)  # what was measured is kept


def test_a_crashing_run_is_recorded_as_failed():
    # an inserted module with the wrong input size makes the forward pass raise
    task = RunTask("f", "x", 0, tiny(), after_norm=lambda i, n: torch.nn.Linear(n + 1, n))
    (res,) = execute([task], jobs=1)
    assert res.status == "failed" and "RuntimeError" in res.error


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from normlab.engine.errors import ConfigError
    cfg = tiny()
    cfg.train.device = "cuda"
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        train(RunTask("c", "x", 0, cfg))


def test_ray_backend_gives_the_same_numbers():
    pytest.importorskip("ray", reason="the optional `ray` extra is not installed")
    tasks = [RunTask(f"r{s}", "x", s, tiny(steps=20)) for s in range(5)]  # more runs than cores: workers are reused
    serial = execute(tasks, jobs=1)
    seen = []
    remote = execute(tasks, backend="ray", on_result=lambda r: seen.append(r.run_id))
    ids = [f"r{s}" for s in range(5)]
    assert [r.run_id for r in remote] == ids and sorted(seen) == ids and {r.status for r in remote} == {"ok"}
    for a, b in zip(serial, remote):
        assert a.rows == b.rows


def test_ray_backend_without_ray_is_a_clear_error(monkeypatch):
    import builtins

    from normlab.engine.errors import NormlabError
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(__import__("sys").modules, "ray", raising=False)
    with pytest.raises(NormlabError, match=r"--backend ray needs Ray: pip install -e '.\[ray\]'"):
        execute([RunTask("r", "x", 0, tiny(steps=5))], backend="ray")
