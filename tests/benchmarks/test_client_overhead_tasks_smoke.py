"""The client overhead benchmark on the vision and reasoning tasks, at toy size (their tiny random
models): it runs, its bare loops do the runtime's work, and its same-work check really fails when a
bare loop does something else. No timing assertions (the numbers live in docs/performance.md)."""

from __future__ import annotations

import pytest

from benchmarks import bare_loops, client_overhead
from benchmarks.bare_loops import BareLoop, same_work

pytest.importorskip("peft")


def _agreement(**changes) -> dict:
    base = {"runtime_loss": 1.25, "bare_loss": 1.25, "factor_max_rel_err": 0.0, "head_max_rel_err": 0.0}
    return {**base, **changes}


def test_same_work_tolerances():
    same_work(_agreement())
    same_work(_agreement(runtime_loss=1.25 * (1 + 5e-6), factor_max_rel_err=5e-5, head_max_rel_err=5e-5))
    for bad in (
        _agreement(runtime_loss=1.26),
        _agreement(factor_max_rel_err=1e-3),
        _agreement(head_max_rel_err=1e-3),
        _agreement(runtime_loss=float("nan")),
    ):
        with pytest.raises(RuntimeError, match="does not do the runtime's work"):
            same_work(bad)


def test_vision_same_work_head_included():
    out = client_overhead.run(task="vision", quick=True, repeats=1, threads=1, clients=[0, 1])
    a = out["agreement"]
    assert a["runtime_loss"] == pytest.approx(a["bare_loss"], rel=bare_loops.LOSS_RTOL)
    assert a["factors"] > 0 and a["head_tensors"] == 2  # the classifier's weight and bias were compared
    assert a["factor_max_rel_err"] <= bare_loops.FACTOR_RTOL and a["head_max_rel_err"] <= bare_loops.FACTOR_RTOL
    assert out["config"]["task"] == "vision" and sum(r["clients"] for r in out["rows"]) == 2
    assert out["round"]["ratio"] > 0 and "task vision" in client_overhead.table(out)


def test_reasoning_same_work_one_client_per_rank():
    out = client_overhead.run(task="reasoning", quick=True, repeats=1, threads=1)
    a = out["agreement"]
    assert a["runtime_loss"] == pytest.approx(a["bare_loss"], rel=bare_loops.LOSS_RTOL)
    assert a["factor_max_rel_err"] <= bare_loops.FACTOR_RTOL and a["head_tensors"] == 0  # a causal LM: no head
    ranks = [r["rank"] for r in out["rows"]]
    assert len(ranks) == len(set(ranks)) == out["config"]["clients"] and all(r["clients"] == 1 for r in out["rows"])


def test_vision_check_fails_when_batchnorm_trains(monkeypatch):
    # The bare loop a user might write without freezing BatchNorm: other losses, and the check says so.
    monkeypatch.setitem(bare_loops.BARE_LOOPS, "vision", BareLoop(bare_loops.vision_loss))
    with pytest.raises(RuntimeError, match="does not do the runtime's work"):
        client_overhead.run(task="vision", quick=True, repeats=1, threads=1, clients=[0])


def test_reasoning_check_fails_when_the_prompt_is_in_the_loss(monkeypatch):
    def every_token(model, batch):
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]
        ).loss

    monkeypatch.setitem(bare_loops.BARE_LOOPS, "reasoning", BareLoop(every_token))
    with pytest.raises(RuntimeError, match="does not do the runtime's work"):
        client_overhead.run(task="reasoning", quick=True, repeats=1, threads=1, clients=[0])


def test_bare_model_scalings():
    from raflora.tasks import build_task

    task = build_task("vision", model="tiny", data="synthetic", train_size=16, test_size=8)
    lora = bare_loops.bare_peft_model(task, rank=4, alpha=16.0, dropout=0.0)
    rs = bare_loops.bare_peft_model(task, rank=4, alpha=16.0, dropout=0.0, scaling="rslora")
    layer = next(iter(bare_loops._lora_layers(lora).values()))
    assert layer.scaling["default"] == pytest.approx(16.0 / 4)
    assert next(iter(bare_loops._lora_layers(rs).values())).scaling["default"] == pytest.approx(16.0 / 2)
    with pytest.raises(ValueError, match="scalings"):
        bare_loops.bare_peft_model(task, rank=4, alpha=16.0, dropout=0.0, scaling="sfed")
