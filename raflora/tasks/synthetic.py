"""A tiny real task for tests and quick experiments: Gaussian-cluster classification with an MLP.

The model is ``fc1 -> tanh -> fc2 -> tanh -> head``; LoRA targets ``fc1`` and ``fc2`` and the
``head`` is trained fully. Everything is seeded and builds in milliseconds, without any download.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import classification_loss, evaluate_classifier, seeded


class SyntheticMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


class SyntheticTask(Task):
    """Classes are Gaussian clusters around seeded centres in ``dim`` dimensions.

    Options:
        seed: int = 0          -- data, cluster centres and model initialisation.
        num_classes: int = 4, dim: int = 16, hidden: int = 32
        train_size: int = 400, test_size: int = 200
        noise: float = 1.0     -- cluster standard deviation (centres have norm ~3).
        num_keys: int = 4      -- natural keys ("k0", ...) dealt round-robin, for by_key partitioning.
        nan_examples: int = 0  -- the first N training examples get NaN features and the key
                                  "corrupt": the client holding them diverges (for fault tests).
    """

    name = "synthetic"
    metric = "accuracy"
    target_modules = ["fc1", "fc2"]
    head_modules = ["head"]

    def __init__(
        self,
        *,
        seed: int = 0,
        num_classes: int = 4,
        dim: int = 16,
        hidden: int = 32,
        train_size: int = 400,
        test_size: int = 200,
        noise: float = 1.0,
        num_keys: int = 4,
        nan_examples: int = 0,
    ):
        for name, value in (
            ("num_classes", num_classes),
            ("dim", dim),
            ("hidden", hidden),
            ("train_size", train_size),
            ("test_size", test_size),
            ("num_keys", num_keys),
        ):
            if int(value) < 1:
                raise ValueError(f"synthetic task: {name} must be >= 1, got {value}")
        if not 0 <= nan_examples <= train_size:
            raise ValueError(f"synthetic task: nan_examples must be in [0, train_size], got {nan_examples}")
        self.seed, self.num_classes, self.dim, self.hidden = int(seed), int(num_classes), int(dim), int(hidden)
        self.train_size, self.test_size, self.noise = int(train_size), int(test_size), float(noise)
        self.num_keys, self.nan_examples = int(num_keys), int(nan_examples)

    def load_model(self) -> nn.Module:
        with seeded(self.seed + 1):
            return SyntheticMLP(self.dim, self.hidden, self.num_classes)

    def _draw(self, n: int, g: torch.Generator, centres: torch.Tensor) -> list[dict]:
        labels = torch.randint(0, self.num_classes, (n,), generator=g)
        x = centres[labels] + self.noise * torch.randn((n, self.dim), generator=g)
        return [{"x": x[i], "label": int(labels[i])} for i in range(n)]

    def load_data(self) -> TaskData:
        g = torch.Generator().manual_seed(self.seed)
        centres = 3.0 * torch.nn.functional.normalize(torch.randn((self.num_classes, self.dim), generator=g), dim=1)
        train = self._draw(self.train_size, g, centres)
        test = self._draw(self.test_size, g, centres)
        keys = [f"k{i % self.num_keys}" for i in range(len(train))]
        for i in range(self.nan_examples):
            train[i] = {"x": torch.full((self.dim,), float("nan")), "label": train[i]["label"]}
            keys[i] = "corrupt"
        return TaskData(train=train, test=test, train_labels=[ex["label"] for ex in train], train_keys=keys)

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        return {
            "x": torch.stack([ex["x"] for ex in examples]),
            "labels": torch.tensor([ex["label"] for ex in examples], dtype=torch.long),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return classification_loss(model, batch)

    def evaluate(self, model: nn.Module, examples: Sequence[Any], batch_size: int) -> dict[str, float]:
        return evaluate_classifier(self, model, examples, batch_size)
