"""Helpers shared by the task tests: wrap a task's model the way the runtime does, and train it."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wrap(task, model, r: int = 4, rank_pattern: dict | None = None):
    """The runtime's wrapping: LoRA on ``target_modules``, the head trained fully."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=task.target_modules,
        modules_to_save=task.head_modules,
        rank_pattern=rank_pattern or {},
    )
    return get_peft_model(model, config)


def check_backprop(task, peft_model, examples):
    """The loss is finite, and gradients reach both LoRA factors' side and the head."""
    peft_model.train()
    loss = task.loss(peft_model, task.collate(examples))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads, "nothing is trainable"
    assert any("lora_B" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert any("modules_to_save" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert frozen, "the base model should stay frozen"
    peft_model.zero_grad()


def train_steps(task, peft_model, examples, steps: int = 8, lr: float = 1e-2) -> tuple[float, float]:
    """Loss on ``examples`` before and after a few optimiser steps on them."""
    batch = task.collate(examples)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def measure() -> float:  # in eval mode, so that dropout does not blur the comparison
        peft_model.eval()
        with torch.no_grad():
            value = task.loss(peft_model, batch).item()
        peft_model.train()
        return value

    first = measure()
    for _ in range(steps):
        opt.zero_grad()
        task.loss(peft_model, batch).backward()
        opt.step()
    return first, measure()


@pytest.fixture
def peft_helpers():
    return SimpleNamespace(wrap=wrap, check_backprop=check_backprop, train_steps=train_steps)
