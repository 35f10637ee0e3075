"""reasoning-gym / SmolLM2 task: tiny Llama with a character tokenizer for the unit tests."""

from __future__ import annotations

import pytest
import torch

from raflora.tasks import ReasoningGymTask, build_task

SMALL_SUMS = {"chain_sum": {"max_terms": 3, "max_digits": 2}}


@pytest.fixture(scope="module")
def task():
    return ReasoningGymTask(
        model="tiny",
        datasets=["chain_sum", "basic_arithmetic"],
        dataset_options=SMALL_SUMS,
        train_size=30,
        test_size=9,
        system_prompt=None,
        max_length=128,
        max_new_tokens=4,
        seed=2,
    )


@pytest.fixture(scope="module")
def data(task):
    return task.load_data()


def test_data_is_seeded_mixed_and_held_out(task, data):
    again = task.load_data()
    assert data.train == again.train and data.test == again.test
    assert len(data.train) == 30 and len(data.test) == 9
    assert data.train_keys.count("chain_sum") == 15 and data.train_keys.count("basic_arithmetic") == 15
    assert data.train_labels == [0] * 15 + [1] * 15
    assert not {ex["question"] for ex in data.train} & {ex["question"] for ex in data.test}
    other = ReasoningGymTask(model="tiny", dataset_options=None, train_size=30, test_size=9, seed=3).load_data()
    assert other.train[0]["question"] != data.train[0]["question"]


def test_collate_masks_the_prompt(task, data):
    batch = task.collate(data.train[:4])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 4
    for i, ex in enumerate(data.train[:4]):
        target = labels[i][labels[i] != -100].tolist()
        assert task.tokenizer.decode(target) == ex["answer"] + "<|im_end|>"
        assert int(mask[i].sum()) == int((ids[i] != task.tokenizer.pad_token_id).sum())
        prompt = task.tokenizer.decode(ids[i][: int(mask[i].sum()) - len(target)])
        assert prompt.endswith("<|im_start|>assistant\n") and ex["question"] in prompt


def test_long_prompts_are_cut_from_the_left(data):
    short = ReasoningGymTask(model="tiny", max_length=12, train_size=2, test_size=1)
    batch = short.collate(data.train[:2])
    assert batch["input_ids"].shape[1] <= 12
    assert (batch["labels"] != -100).sum(1).min() > 0  # the answer survives


def test_peft_loss_backprop_eval_and_learning(task, data, peft_helpers):
    model = peft_helpers.wrap(task, task.load_model(), r=4)
    batch = task.collate(data.train[:4])
    model.train()
    loss = task.loss(model, batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    result = task.evaluate(model, data.test, batch_size=9)
    assert set(result) == {"exact_match", "loss"} and 0.0 <= result["exact_match"] <= 1.0
    assert result["loss"] > 0
    first, last = peft_helpers.train_steps(task, model, data.train[:6], steps=10, lr=3e-2)
    assert last < first


def test_exact_match_counts_correct_replies(task, data, monkeypatch):
    model = task.load_model()
    answers = [ex["answer"] for ex in data.test]
    monkeypatch.setattr(
        task, "generate", lambda m, qs: answers[: len(qs)] if len(qs) == len(answers) else ["x"] * len(qs)
    )
    assert task.evaluate(model, data.test, batch_size=len(data.test))["exact_match"] == 1.0
    assert task.evaluate(model, data.test, batch_size=4)["exact_match"] == 0.0


def test_options_are_checked():
    with pytest.raises(ValueError, match="model must be"):
        build_task("reasoning", model="")
    # any other name is a folder or a Hub id, looked for when the model loads (tests/tasks/test_hub.py)
    with pytest.raises(FileNotFoundError, match="'no-such-org/gpt2' is neither a local folder nor a model"):
        build_task("reasoning", model="no-such-org/gpt2").load_model()
    with pytest.raises(ValueError, match="not in datasets"):
        ReasoningGymTask(model="tiny", dataset_options={"basic_arithmetic": {}})
    with pytest.raises(ValueError, match="'chain_sum'"):
        ReasoningGymTask(
            model="tiny", dataset_options={"chain_sum": {"max_digits": 0}}, train_size=2, test_size=1
        ).load_data()
    with pytest.raises(ValueError, match="'no_such_task'"):
        ReasoningGymTask(model="tiny", datasets=["no_such_task"], train_size=2, test_size=1).load_data()


@pytest.mark.slow
def test_real_smollm2_generates():
    task = ReasoningGymTask(system_prompt=None, max_new_tokens=12)
    model = task.load_model().eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    with torch.no_grad():
        reply = task.generate(model, ["What is the capital of France?"])[0]
    assert "Paris" in reply
