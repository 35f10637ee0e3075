"""An exported adapter folder works wherever it is copied: the tokenizer is in it, its files are
readable by all, and the base is named so that a copy finds it after the run is gone (the Hub id of
a base from the Hugging Face cache, the folder's own ``base/`` for the text task)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raflora.client.adapters import AdapterModel
from raflora.federation.export import base_reference, write_adapter
from raflora.federation.export_folder import RECORD
from raflora.federation.model_card import CardFacts, model_card
from raflora.runtimes.embedded import run_federation
from raflora.tasks import build_task

from .test_hf_export import global_logits, random_state

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


def test_a_copied_text_adapter_loads_after_the_run_is_gone(make_config, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = make_config(
        "text",
        task={"name": "text", "model": "tiny", "max_length": 24, "train_size": 80, "test_size": 32},
        ranks={"ranks": [2, 4], "r_max": 16},  # the global update has rank <= 12: the adapter is exact
        train={"batch_size": 8, "local_steps": 1},
        run={"rounds": 1},
    )
    metrics = run_federation(config)
    run = Path(config.out)
    adapter = run / "adapter"
    listed = json.loads((adapter / RECORD).read_text())["files"]
    assert set(TOKENIZER_FILES) <= set(listed) and all((adapter / name).is_file() for name in TOKENIZER_FILES)
    assert _modes(adapter) == {0o644}
    from transformers import pipeline

    task = build_task("text", model="tiny", max_length=24, train_size=80, test_size=32)
    classify = pipeline("text-classification", model=str(adapter))  # its tokenizer: the base's
    assert classify("Shares rose after the results.")[0]["label"] in task.label_names()
    copy = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(adapter, copy)
    shutil.rmtree(run)

    tokenizer = AutoTokenizer.from_pretrained(copy)
    texts = ["Shares rose after the results.", "The match ended in a draw."]
    assert tokenizer(texts).input_ids == task.tokenizer(texts).input_ids
    # the card's loader for a copy: the base from the copy's own base/ folder
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(copy / "base"), copy)
    result = task.evaluate(model, task.load_data().test, 64)
    assert result["accuracy"] == metrics[-1]["accuracy"]
    assert result["loss"] == pytest.approx(metrics[-1]["loss"], rel=1e-4)
    card = (copy / "README.md").read_text()
    assert 'AutoModelForSequenceClassification.from_pretrained(copy + "/base")' in card
    assert f"AutoTokenizer.from_pretrained({str(adapter)!r})" in card


@pytest.fixture
def hub_cache(tmp_path):
    """A Hugging Face cache (``HF_HUB_CACHE`` layout) holding a tiny causal LM and its tokenizer as
    ``raflora-test/tiny-llama``: (cache folder, snapshot folder, task)."""
    task = build_task("reasoning", model="tiny", train_size=4, test_size=2, max_length=48)
    cache = tmp_path / "hub"
    repo = cache / "models--raflora-test--tiny-llama"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    task.load_model().save_pretrained(snapshot)
    task.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache, snapshot, task


def test_a_copied_causal_lm_adapter_loads_by_hub_id_offline(hub_cache, tmp_path):
    from transformers import AutoModelForCausalLM

    cache, snapshot, task = hub_cache
    model = AdapterModel(AutoModelForCausalLM.from_pretrained(snapshot), task.target_modules, [], [4], {4: 1.0})
    state = random_state(model, 4)
    base0 = {m: model.base_weight(m).detach().clone() for m in model.modules}
    run = tmp_path / "run"
    write_adapter(model, base0, state, 4, 1.0, run / "adapter", task=task, replace=False)
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "raflora-test/tiny-llama"
    assert _modes(run / "adapter") == {0o644}
    card = (run / "adapter" / "README.md").read_text()
    assert f"weights from `{snapshot}`" in card  # the local folder stays in the card

    batch = task.collate(task.load_data().test)
    batch.pop("labels")
    expected = global_logits(model, state, batch)
    copy = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(run / "adapter", copy)
    shutil.rmtree(run)
    torch.save(batch, tmp_path / "batch.pt")
    code = (
        "import sys, torch\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n"
        f"model = AutoPeftModelForCausalLM.from_pretrained({str(copy)!r}).eval()\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(copy)!r})\n"
        "assert tokenizer('12 + 30 =').input_ids\n"
        "with torch.no_grad():\n"
        f"    logits = model(**torch.load({str(tmp_path / 'batch.pt')!r})).logits\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=tmp_path / "elsewhere", env=env)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)


def test_the_base_is_recorded_as_its_hub_id_or_its_folder(tmp_path):
    folder, shown = tmp_path / ".raflora-staging", tmp_path
    smollm2 = "/root/.cache/raflora/smollm2-135m-instruct"
    assert base_reference(smollm2, folder, shown) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cached = "/home/u/.cache/huggingface/hub/models--org--model/snapshots/abc"
    assert base_reference(cached, folder, shown) == "org/model"
    assert base_reference("/data/my-model", folder, shown) == "/data/my-model"
    assert base_reference("efficientnet-lite0", folder, shown) == "efficientnet-lite0"
    assert base_reference(str(folder.resolve() / "base"), folder, shown) == str(shown.resolve() / "base")
    assert base_reference(None, folder, shown) is None


def test_the_card_of_a_bundled_base_keeps_its_local_folder_as_the_fallback():
    local = "/root/.cache/raflora/smollm2-135m-instruct"
    facts = CardFacts(
        task_type="CAUSAL_LM",
        base="HuggingFaceTB/SmolLM2-135M-Instruct",
        source=local,
        method="raflora",
        client_ranks=[2, 4],
        rounds=1,
        rank=4,
        scale=1.0,
        tokenizer=True,
    )
    card = model_card(facts, "out/adapter")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "AutoPeftModelForCausalLM.from_pretrained('out/adapter')" in card
    assert f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({local!r}), 'out/adapter')" in card
    assert "AutoTokenizer.from_pretrained('out/adapter')" in card and ".venv" not in card


@pytest.mark.slow
def test_smollm2_adapter_names_its_hub_id_and_the_cards_fallback_loads_a_copy(tmp_path):
    # the bundled SmolLM2 (dequantised from the package's GGUF) is recorded by its Hub id; this
    # machine's Hugging Face cache lacks that id, so the copy loads the way the card says offline
    task = build_task("reasoning", train_size=4, test_size=2, max_length=48)
    model = AdapterModel(task.load_model(), task.target_modules, [], [2], {2: 1.0})
    state = random_state(model, 2)
    base0 = {m: model.base_weight(m).detach().clone() for m in model.modules}
    write_adapter(model, base0, state, 2, 1.0, tmp_path / "run" / "adapter", task=task, replace=False)
    folder = tmp_path / "run" / "adapter"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = (folder / "README.md").read_text()
    local = str(Path(task.cache_dir).expanduser())
    fallback = f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({local!r}), {str(folder)!r})"
    assert fallback in card
    batch = task.collate(task.load_data().test)
    batch.pop("labels")
    expected = global_logits(model, state, batch)
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    shutil.rmtree(tmp_path / "run")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local), copy).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-3)  # logits of size ~20
    assert AutoTokenizer.from_pretrained(copy).chat_template == task.tokenizer.chat_template
