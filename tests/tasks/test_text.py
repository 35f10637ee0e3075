"""BBC News text classification task: tiny model for the unit tests, real MiniLM under ``slow``."""

from __future__ import annotations

import pytest
import torch

from raflora.tasks import BBCNewsTask, build_task


@pytest.fixture(scope="module")
def task():
    return BBCNewsTask(model="tiny", seed=3, max_length=32)


@pytest.fixture(scope="module")
def data(task):
    return task.load_data()


def test_split_is_seeded_and_disjoint(task, data):
    again = BBCNewsTask(model="tiny", seed=3).load_data()
    assert [ex["file"] for ex in data.train] == [ex["file"] for ex in again.train]
    assert [ex["file"] for ex in data.test] == [ex["file"] for ex in again.test]
    other = BBCNewsTask(model="tiny", seed=4).load_data()
    assert [ex["file"] for ex in other.test] != [ex["file"] for ex in data.test]
    assert len(data.train) == 1780 and len(data.test) == 445
    assert not {ex["file"] for ex in data.train} & {ex["file"] for ex in data.test}


def test_labels_keys_and_classes(data):
    assert data.info["label_names"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert data.train_labels == [ex["label"] for ex in data.train]
    assert set(data.train_labels) == set(range(5))
    assert data.train_keys == [data.info["label_names"][y] for y in data.train_labels]


def test_sizes_are_options():
    d = BBCNewsTask(model="tiny", test_size=0.1, train_size=100).load_data()
    assert len(d.train) == 100 and len(d.test) == 222


def test_collate_shapes(task, data):
    batch = task.collate(data.train[:5])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 5 and batch["input_ids"].shape[1] <= 32
    assert batch["labels"].dtype == torch.long


def test_model_head_is_seeded(task):
    a, b = task.load_model(), task.load_model()
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert a.classifier.out_features == 5


def test_peft_loss_backprop_eval_and_learning(task, data, peft_helpers):
    model = peft_helpers.wrap(task, task.load_model(), r=4, rank_pattern={"value": 2})
    peft_helpers.check_backprop(task, model, data.train[:6])
    result = task.evaluate(model, data.test[:20], batch_size=8)
    assert set(result) == {"accuracy", "loss"} and 0.0 <= result["accuracy"] <= 1.0
    assert model.training, "evaluate restores the caller's mode"
    first, last = peft_helpers.train_steps(task, model, data.train[:8], steps=8)
    assert last < first


def test_build_task_errors():
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_task("nope")
    with pytest.raises(ValueError, match="unknown option.*'max_len'"):
        build_task("text", max_len=3)
    assert isinstance(build_task("text", model="tiny", max_length=16), BBCNewsTask)


def test_missing_encoder_folder_is_named(tmp_path):
    task = BBCNewsTask(model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        task.load_model()


@pytest.mark.slow
def test_real_minilm_mean_pooling_and_forward(data, peft_helpers):
    task = BBCNewsTask(seed=0)
    model = task.load_model()
    model.eval()
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market crashed today."]
    enc = task.tokenizer(sentences, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.embed(enc["input_ids"], enc["attention_mask"]), dim=-1)
    assert emb[0] @ emb[1] > 0.6 > emb[0] @ emb[2]
    wrapped = peft_helpers.wrap(task, model, r=8)
    result = task.evaluate(wrapped, data.test[:16], batch_size=16)
    assert 0.0 <= result["accuracy"] <= 1.0
