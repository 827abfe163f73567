"""The batched ensemble (engine/ensemble.py) against the single-run engine: member m, started from
seed m's weights and fed seed m's batches, must see the losses run m sees."""

import pytest
import torch

from normlab.engine import config as C
from normlab.engine.data import load_dataset
from normlab.engine.ensemble import EnsembleMLP, train_ensemble
from normlab.engine.runs import RunTask
from normlab.engine.spec import RunConfig
from normlab.engine.train import train


def _single_run_losses(norm: str, seed: int, lr: float, steps: int) -> list[float]:
    cfg = C.from_dict(
        RunConfig,
        {
            "model": {"width": 32, "depth": 2, "norm": norm},
            "optim": {"name": "sgd", "lr": lr},
            "train": {"steps": steps, "batch_size": 64, "eval_every": 0},
            "probes": {"every": 1, "weights": False, "inputs": False, "preacts": False},
        },
    )
    rows = train(RunTask("r", "r", seed, cfg)).rows
    return [r.value for r in rows if r.metric == "batch_loss"]


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_each_member_follows_its_own_single_run(norm):
    from normlab.engine.spec import DataConfig, ModelConfig

    seeds, lrs, steps = [0, 1, 2], [0.05, 0.1, 0.2], 40
    data = load_dataset(DataConfig())
    torch.manual_seed(123)  # the ensemble must not depend on the global generator
    model = EnsembleMLP.from_seeds(ModelConfig(width=32, depth=2, norm=norm), data.input_shape, 10, seeds)
    losses = train_ensemble(model, data, seeds, lrs, steps, batch_size=64)
    for m, (seed, lr) in enumerate(zip(seeds, lrs)):
        single = torch.tensor(_single_run_losses(norm, seed, lr, steps))
        torch.testing.assert_close(losses[:, m], single, rtol=1e-5, atol=1e-6)
    assert len({round(float(losses[-1, m]), 4) for m in range(3)}) == 3  # the members really differ


def test_unsupported_models_are_refused():
    from normlab.engine.spec import ModelConfig

    with pytest.raises(ValueError, match="before the ReLU"):
        EnsembleMLP.from_seeds(ModelConfig(norm="batch", norm_position="after"), (40,), 10, [0])
    with pytest.raises(ValueError, match="plain MLPs"):
        EnsembleMLP.from_seeds(ModelConfig(arch="cnn1d"), (40,), 10, [0])
