"""The contract between a task (model + data + metric) and the federation runtime.

A task knows how to build its model, load its data, batch it, compute the training loss and
evaluate. It knows nothing of clients, ranks or aggregation: the runtime wraps the model with PEFT
LoRA on ``target_modules`` and trains ``head_modules`` fully (PEFT ``modules_to_save``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TaskData:
    """A task's examples. ``train_labels``/``train_keys`` drive the partitioners
    (Dirichlet label skew needs labels; by-key partitioning needs a natural key per example)."""

    train: Sequence[Any]
    test: Sequence[Any]
    train_labels: Sequence[int] | None = None
    train_keys: Sequence[str] | None = None
    info: dict = field(default_factory=dict)


class Task(ABC):
    """One task family instance, built from the ``[task]`` section of a config."""

    name: str = "task"
    metric: str = "accuracy"  # the key ``evaluate`` returns besides "loss"
    target_modules: list[str] = []  # PEFT target_modules (leaf names or a regex)
    head_modules: list[str] = []  # PEFT modules_to_save (new task head), FedAvg'd

    @abstractmethod
    def load_model(self) -> nn.Module:
        """A fresh base model with its (seeded) task head. Called once per run."""

    def check_model(self) -> None:  # noqa: B027 (optional hook, not abstract)
        """Raise (ImportError naming the package to install, FileNotFoundError) when the model is not
        on this machine; called before :meth:`load_model`, and quick: it loads nothing."""

    @abstractmethod
    def load_data(self) -> TaskData:
        """Train and test examples; deterministic for the task's seed."""

    def tokens_per_example(self) -> int:
        """The most positions one example takes in a forward pass (1 for a task without
        sequences): the memory estimate's activations (:mod:`raflora.federation.sizes`)."""
        return 1

    def check_positions(self, model: nn.Module) -> None:  # noqa: B027 (optional hook, not abstract)
        """ValueError naming the option when an example would need more positions than ``model``
        has (``max_length`` above its position embeddings); called before any example is tokenised."""

    def prepare(self, examples: Sequence[Any]) -> None:  # noqa: B027 (optional hook, not abstract)
        """Called once per run with the training and test examples before any round: a task whose
        ``collate`` does per-example work (tokenising) can do it here once instead of every step."""

    @abstractmethod
    def collate(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """A batch of tensors ready for ``loss`` / ``evaluate``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, examples: Sequence[Any], batch_size: int) -> dict[str, float]:
        """``{self.metric: value, "loss": value}`` on ``examples`` (model in eval mode, no grad)."""
