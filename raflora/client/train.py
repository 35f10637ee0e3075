"""A client's local training: start from the given factors and head, take optimiser steps on its
own examples, return the trained factors and head.

Randomness (batch order, dropout) comes from ``seed`` alone, which the federation derives from
the run seed, the round and the client, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from raflora.client.adapters import AdapterModel
from raflora.config import TrainConfig
from raflora.lora import LoRAFactors
from raflora.tasks.base import Task


@dataclass
class LocalResult:
    factors: dict[str, LoRAFactors]
    head: dict[str, Tensor]
    num_examples: int
    loss: float  # mean training loss over the steps (nan if any step diverged)
    steps: int
    diverged: bool  # a non-finite loss was seen; the update is sent anyway


def num_local_steps(train: TrainConfig, num_examples: int) -> int:
    if train.local_epochs > 0:
        return train.local_epochs * math.ceil(num_examples / train.batch_size)
    return train.local_steps


def _batches(num_examples: int, batch_size: int, steps: int, g: torch.Generator):
    """``steps`` index batches; a fresh seeded permutation per pass over the data."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < min(batch_size, num_examples):
            order += torch.randperm(num_examples, generator=g).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


def _optimizer(params: list[Tensor], train: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)


def train_local(
    model: AdapterModel,
    task: Task,
    examples: Sequence,
    rank: int,
    start: Mapping[str, LoRAFactors],
    head: Mapping[str, Tensor],
    train: TrainConfig,
    seed: int,
    lr_at: Callable[[float], float],
    train_a: bool = True,
    on_step: Callable[[], None] | None = None,
) -> LocalResult:
    """Train ``rank``'s adapter on ``examples``. ``lr_at(fraction of this client's steps done)``
    gives the learning rate of each step (the run's schedule)."""
    model.activate(rank, train_a=train_a)
    model.set_factors(rank, start)
    model.set_head(rank, head)
    torch.manual_seed(seed)  # dropout draws
    g = torch.Generator().manual_seed(seed)
    steps = num_local_steps(train, len(examples))
    params = [p for p in model.peft.parameters() if p.requires_grad]
    opt = _optimizer(params, train, lr_at(0.0))
    model.peft.train()
    losses: list[float] = []
    for step, idx in enumerate(_batches(len(examples), train.batch_size, steps, g)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step / steps)
        opt.zero_grad(set_to_none=True)
        with model.autocast():
            loss = task.loss(model.peft, task.collate([examples[i] for i in idx]))
        loss.backward()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step()
    diverged = not all(math.isfinite(x) for x in losses)
    return LocalResult(
        factors=model.get_factors(rank),
        head=model.get_head(rank),
        num_examples=len(examples),
        loss=sum(losses) / len(losses) if losses else float("nan"),
        steps=steps,
        diverged=diverged,
    )
