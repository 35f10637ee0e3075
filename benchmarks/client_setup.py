"""The runs the client-side benchmarks measure: the demo config (all-MiniLM-L6-v2 on BBC News,
``configs/bbc_minilm.toml``) with a few keys overridden, or its toy version on the random "tiny"
encoder (same tokenizer and data, a 2-layer BERT of width 32) for ``--quick`` and the tests; and,
for the client overhead benchmark's ``--task vision|reasoning``, the vision and reasoning configs
reduced to a few clients and steps (``--quick``: their tiny random models)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raflora.config import Config
from raflora.config_io import load_config

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "bbc_minilm.toml"

# A few hundred articles and a small test split: seconds per run on the tiny encoder.
TOY = {"task.model": "tiny", "task.train_size": 240, "task.test_size": 40}


def demo_config(out: str | Path, quick: bool = False, overrides: Mapping[str, Any] | None = None) -> Config:
    """The demo config writing into ``out``; ``quick`` swaps in the tiny encoder on a data subset."""
    values: dict[str, Any] = {"run.out": str(out)}
    if quick:
        values.update(TOY)
    values.update(overrides or {})
    return load_config(DEMO_CONFIG, values)


# Per task: the config, what the benchmark changes in it (only sizes: data, clients, steps; never
# the model, ranks, batch, learning rate or loss), and what --quick changes on top (the task's tiny
# random model, less data).
TASK_CONFIGS: dict[str, tuple[Path, dict[str, Any], dict[str, Any]]] = {
    "text": (DEMO_CONFIG, {}, TOY),
    # EfficientNet-Lite0 on Fashion-MNIST: 5 of 10 clients per round (ranks 16/8/4 on 2/3/5 clients)
    # x 8 local steps of batch 32; the data subsampled as in configs/experiments/fmnist_reduced.toml.
    "vision": (
        ROOT / "configs" / "fmnist_efficientnet.toml",
        {"federation.num_clients": 10, "train.local_steps": 8, "task.train_size": 3000, "task.test_size": 500},
        # the tiny model's smallest adapted matrix is 16 x 8: ranks up to 8 (a rank above the smaller
        # side is refused before work)
        {
            "task.model": "tiny",
            "task.data": "synthetic",
            "task.train_size": 400,
            "task.test_size": 40,
            "ranks.ranks": [8, 4, 2],
            "ranks.r_max": 8,
        },
    ),
    # SmolLM2-135M on chain_sum, 3 local steps of batch 8 (about 1.7 s a step on 2 cores); the
    # benchmark trains one client of each rank (2, 4, 8 of the heavy-tailed 2/2/4/8/2/2/8/2). Fewer
    # generated problems, which only shortens the set-up.
    "reasoning": (
        ROOT / "configs" / "reasoning_smollm2.toml",
        {"train.local_steps": 3, "task.train_size": 200, "task.test_size": 8},
        {"task.model": "tiny", "task.train_size": 64, "task.test_size": 8},
    ),
}


def task_config(task: str, out: str | Path, quick: bool = False, overrides: Mapping[str, Any] | None = None) -> Config:
    """The benchmark's config for ``task`` ("text": the demo config) writing into ``out``."""
    if task not in TASK_CONFIGS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_CONFIGS)}")
    path, full, toy = TASK_CONFIGS[task]
    values: dict[str, Any] = {"run.out": str(out), **full, **(toy if quick else {}), **(overrides or {})}
    return load_config(path, values)


def adapter_bytes(shapes: Mapping[str, tuple[int, int]], rank: int, bytes_per_value: int = 4) -> int:
    """Bytes of one client's LoRA factors of ``rank``: ``r (m + n)`` values per adapted module."""
    return sum(rank * (m + n) for m, n in shapes.values()) * bytes_per_value
