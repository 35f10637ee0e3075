"""Every ```python block of docs/api.md runs, in order, in one namespace, in a fresh folder holding
the repository's configs/synthetic.toml (as a reader runs them from the repository root)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def test_the_page_has_examples_of_every_part():
    code = "\n".join(python_blocks())
    for call in ("raflora.run(", "on_round=", "raflora.rounds(", "raflora.resume(", "raflora.export("):
        assert call in code, call
    for call in ("update_from_peft(", "save_peft_adapter(", "load_into_peft(", "peft_state_dict(", "from_pretrained("):
        assert call in code, call
    assert '"raflora"' in code and '"flexlora"' in code and "ranks = [2, 4, 8]" in code


def test_every_python_block_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "synthetic.toml", tmp_path / "configs" / "synthetic.toml")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "docs_api"}
    try:
        for i, block in enumerate(python_blocks()):
            try:
                exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)
            except Exception as err:
                pytest.fail(f"docs/api.md block {i + 1} failed: {type(err).__name__}: {err}\n{block}")
    finally:
        torch.set_num_threads(threads)  # a run sets run.threads for the process
    out = capsys.readouterr().out
    assert "round 1: accuracy" in out and "[1, 2, 3, 4]" in out
    assert (tmp_path / "runs" / "api-demo" / "export" / "adapter_config.json").is_file()
    assert (tmp_path / "runs" / "peft-loop" / "flexlora" / "client-2" / "adapter_model.safetensors").is_file()
