"""A client's local training: the steps and learning rates it takes, what it trains, and that its
randomness comes from its seed alone."""

from __future__ import annotations

import math

import pytest
import torch

from raflora.client.train import num_local_steps, train_local
from raflora.config_io import config_from_dict
from raflora.federation.setup import build_setup

CONFIG = {
    "run": {"name": "t", "seed": 1, "rounds": 2, "threads": 1},
    "federation": {"num_clients": 2, "method": "raflora"},
    "ranks": {"policy": "cycle", "ranks": [2, 4], "r_max": 4},
    "train": {"local_steps": 5, "lr": 0.05, "batch_size": 8},
    "task": {"name": "synthetic", "train_size": 64, "test_size": 16},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return build_setup(config_from_dict({**CONFIG, "run": {**CONFIG["run"], "out": str(out)}}))


def train(setup, seed=0, train_a=True, lr_at=None, on_step=None, rank=4, client=1):
    start = setup.fresh_starts()[rank]
    return train_local(
        setup.model,
        setup.task,
        setup.client_examples(client),
        rank,
        start,
        setup.model.get_head(None),
        setup.config.train,
        seed=seed,
        lr_at=lr_at or (lambda f: 0.05),
        train_a=train_a,
        on_step=on_step,
    )


def test_steps_and_the_learning_rate_of_each_step(setup):
    fractions, steps = [], []
    result = train(setup, lr_at=lambda f: fractions.append(f) or 0.05, on_step=lambda: steps.append(1))
    assert result.steps == len(steps) == 5
    assert fractions == [0.0] + [k / 5 for k in range(5)], "the optimiser's lr, then one per step"
    assert result.num_examples == len(setup.client_examples(1))
    assert math.isfinite(result.loss) and not result.diverged


def test_local_epochs_count_passes_over_the_data(setup):
    epochs = setup.config.train.__class__(local_epochs=2, batch_size=8)
    assert num_local_steps(epochs, 20) == 2 * 3


def test_the_start_is_trained_from_and_a_frozen_a_stays(setup):
    start = setup.fresh_starts()[4]
    moved = train(setup, train_a=True)
    frozen = train(setup, train_a=False)
    for m, f in start.items():
        assert not torch.equal(moved.factors[m].A, f.A) and not torch.equal(moved.factors[m].B, f.B)
        assert torch.equal(frozen.factors[m].A, f.A), "train_a=False must leave A untouched (FFA-LoRA)"
        assert not torch.equal(frozen.factors[m].B, f.B)


def test_the_seed_alone_fixes_the_result(setup):
    a, b, c = train(setup, seed=3), train(setup, seed=3), train(setup, seed=4)
    for m in a.factors:
        assert torch.equal(a.factors[m].B, b.factors[m].B) and torch.equal(a.factors[m].A, b.factors[m].A)
    assert any(not torch.equal(a.factors[m].B, c.factors[m].B) for m in a.factors)
