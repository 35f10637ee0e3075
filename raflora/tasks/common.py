"""Small helpers shared by the task families: seeded splits, seeded head init, batching,
device placement, classification evaluation, and the progress shown while models load and evaluate."""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import os
import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def offline() -> None:
    """Every model here loads from local files; make sure nothing ever reaches for a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. building a new head) under ``seed`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def permutation(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)`` that does not depend on torch's global RNG."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def split_indices(n: int, test_size: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/test split of ``range(n)``. ``test_size`` is a count, or a fraction if < 1.
    Both index lists come back sorted so that the examples keep their file order."""
    n_test = int(round(test_size * n)) if isinstance(test_size, float) and test_size < 1 else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves no train or no test examples out of {n}")
    order = permutation(n, seed)
    return sorted(order[n_test:]), sorted(order[:n_test])


def subsample(items: Sequence[Any], size: int | None, seed: int) -> list[Any]:
    """``size`` items drawn without replacement under ``seed`` (all of them if ``size`` is None)."""
    if size is None or size >= len(items):
        return list(items)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return [items[i] for i in sorted(permutation(len(items), seed)[:size])]


def batches(items: Sequence[Any], batch_size: int) -> Iterator[Sequence[Any]]:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


# Whether loading and evaluating show progress: the command line turns it on (off with --quiet);
# a library caller, a test and a Flower client, which share no terminal, see nothing.
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("raflora_progress", default=False)


@contextlib.contextmanager
def progress_bars(on: bool) -> Iterator[None]:
    token = _PROGRESS.set(on)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress(items: Sequence[Any], batch_size: int, desc: str) -> Iterator[Sequence[Any]]:
    """``batches(items, batch_size)`` with a tqdm bar (when progress is on) that goes away when done."""
    chunks = batches(items, batch_size)
    if not _PROGRESS.get():
        yield from chunks
        return
    from tqdm import tqdm

    with tqdm(chunks, total=math.ceil(len(items) / batch_size), desc=desc, unit="batch", leave=False) as bar:
        yield from bar


@contextlib.contextmanager
def spinner(desc: str) -> Iterator[None]:
    """A turning line with the seconds so far while a block runs (loading a model can take a
    minute and shows no other sign of life); nothing when progress is off."""
    if not _PROGRESS.get():
        yield
        return
    from tqdm import tqdm

    done = threading.Event()
    with tqdm(desc=desc, bar_format="{desc} {elapsed}", leave=False) as bar:

        def turn() -> None:
            for mark in itertools.cycle("|/-\\"):
                if done.wait(0.25):
                    return
                bar.set_description_str(f"{desc} {mark}")  # refreshes the line

        ticker = threading.Thread(target=turn, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; the caller's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward pass: a transformers ``ModelOutput``'s ``.logits`` or the tensor itself."""
    return output.logits if hasattr(output, "logits") else output


def evaluate_classifier(task: Any, model: nn.Module, examples: Sequence[Any], batch_size: int) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a model whose forward returns logits (or an output with
    ``.logits``); ``task.collate``
    must put the targets under ``"labels"`` and everything else is passed to the model."""
    if len(examples) == 0:
        raise ValueError("evaluate needs at least one example")
    device = model_device(model)
    correct, total_loss = 0, 0.0
    with eval_mode(model):
        for chunk in progress(examples, batch_size, "evaluating"):
            batch = to_device(task.collate(chunk), device)
            labels = batch.pop("labels")
            logits = logits_of(model(**batch))
            total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
    n = len(examples)
    return {task.metric: correct / n, "loss": total_loss / n}


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    batch = to_device(batch, model_device(model))
    labels = batch.pop("labels")
    return F.cross_entropy(logits_of(model(**batch)), labels)
