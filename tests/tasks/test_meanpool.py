"""The mean-pooling classifier as a transformers model: Auto-class registration, save/load, base folders."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import raflora  # noqa: F401  (registers raflora-meanpool)
from raflora.tasks import BBCNewsTask, meanpool


@pytest.fixture(scope="module")
def task():
    return BBCNewsTask(model="tiny", seed=3, max_length=32)


@pytest.fixture(scope="module")
def batch(task):
    batch = task.collate(task.load_data().test[:12])
    batch.pop("labels")
    return batch


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_import_raflora_registers_without_importing_transformers():
    code = (
        "import sys, raflora; assert 'transformers' not in sys.modules, 'imported eagerly'\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification\n"
        "from raflora.tasks.meanpool import MeanPoolConfig, MeanPoolForSequenceClassification\n"
        "assert type(AutoConfig.for_model('raflora-meanpool')) is MeanPoolConfig\n"
        "assert AutoModelForSequenceClassification._model_mapping[MeanPoolConfig] is MeanPoolForSequenceClassification\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_head_is_torch_linear_init_drawn_from_the_seed(task):
    model = task.load_model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(task.seed)
        reference = torch.nn.Linear(model.config.hidden_size, 5)
    assert torch.equal(model.classifier.weight, reference.weight)
    assert torch.equal(model.classifier.bias, reference.bias)
    assert model.config.id2label[0] == "business" and model.config.num_labels == 5
    assert model.config.label2id == {name: i for i, name in model.config.id2label.items()}


def test_forward_returns_logits_and_loss(task, batch):
    model = task.load_model()
    labels = torch.arange(12) % 5
    out = model(**batch, labels=labels)
    assert out.logits.shape == (12, 5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))


def test_save_pretrained_loads_with_the_auto_class(task, batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = task.load_model()
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model)
    assert torch.equal(logits(model, batch), logits(loaded, batch))


def test_the_module_imports_only_torch_transformers_and_the_standard_library():
    """save_standalone copies this module into a folder that must load where raflora is not installed."""
    tree = ast.parse(Path(meanpool.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"line {node.lineno}: a relative import"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"torch", "transformers"}


def test_a_label_map_read_without_label2id_gets_it_from_id2label():
    config = meanpool.MeanPoolConfig.from_dict({"id2label": {"0": "ham", "1": "spam"}, "label2id": None})
    assert config.id2label == {0: "ham", 1: "spam"} and config.label2id == {"ham": 0, "spam": 1}


def test_standalone_folder_where_raflora_is_loaded_too(task, batch, tmp_path):
    """With raflora registered, transformers prefers raflora's classes to the folder's code (an explicitly
    registered model type wins over ``trust_remote_code``); importing the folder's copy of this module
    leaves raflora's classes registered under raflora-meanpool."""
    model = task.load_model()
    model.save_standalone(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "modeling_raflora_meanpool.MeanPoolConfig",
        "AutoModelForSequenceClassification": "modeling_raflora_meanpool.MeanPoolForSequenceClassification",
    }
    torch.save(logits(model, batch), tmp_path / "logits.pt")
    torch.save(batch, tmp_path / "batch.pt")
    code = (
        "import sys, torch, raflora\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification\n"
        "from transformers.dynamic_module_utils import get_class_from_dynamic_module\n"
        "from raflora.tasks.meanpool import MeanPoolConfig, MeanPoolForSequenceClassification\n"
        "folder, batch, expected = sys.argv[1], torch.load(sys.argv[2]), torch.load(sys.argv[3])\n"
        "copy = get_class_from_dynamic_module('modeling_raflora_meanpool.MeanPoolConfig', folder)\n"
        "assert copy is not MeanPoolConfig and copy.__module__.startswith('transformers_modules.')\n"
        "assert type(AutoConfig.for_model('raflora-meanpool')) is MeanPoolConfig\n"
        "for trust in (True, False):\n"
        "    loaded = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust).eval()\n"
        "    assert type(loaded) is MeanPoolForSequenceClassification, type(loaded)\n"
        "    with torch.no_grad():\n"
        "        assert torch.equal(loaded(**batch).logits, expected)\n"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")  # the copy goes to HF_HOME/modules
    args = [str(tmp_path / name) for name in ("m", "batch.pt", "logits.pt")]
    subprocess.run([sys.executable, "-c", code, *args], check=True, timeout=300, env=env)


def test_base_folder_loads_the_encoder_from_its_source(task, batch, tmp_path):
    """A folder with config.json only: the encoder comes from encoder_name_or_path, the head is new."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    from raflora.tasks.meanpool import mean_pool_classifier

    task.load_model().backbone.save_pretrained(tmp_path / "encoder")
    encoder = AutoModel.from_pretrained(tmp_path / "encoder")
    model = mean_pool_classifier(encoder, 5, seed=0)
    assert model.config.encoder_name_or_path == str(tmp_path / "encoder")
    model.save_base(tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["config.json"]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    assert loaded.config.name_or_path == str(tmp_path / "base")
    loaded.classifier.load_state_dict(model.classifier.state_dict())
    assert torch.equal(logits(model, batch), logits(loaded, batch))


def test_base_folder_of_an_in_memory_encoder_holds_the_weights(task, batch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = task.load_model()  # the tiny encoder is built in memory: no source to point to
    assert model.config.encoder_name_or_path is None
    model.save_base(tmp_path / "base")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    assert torch.equal(logits(model, batch), logits(loaded, batch))


def test_encoder_from_the_hub_cache_is_named_by_its_hub_id(task, batch, tmp_path):
    """An encoder loaded by Hub id from a local Hugging Face cache (offline): the base folder names
    the id, reloads from the cache, and the model card's hub_id is that id."""

    snapshot = tmp_path / "hub" / "models--raflora-test--tiny-bert" / "snapshots" / "0123abc"
    task.load_model().backbone.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--raflora-test--tiny-bert" / "refs").mkdir()
    (tmp_path / "hub" / "models--raflora-test--tiny-bert" / "refs" / "main").write_text("0123abc")
    torch.save(batch, tmp_path / "batch.pt")
    code = (
        "import torch, raflora\n"
        "from transformers import AutoModel, AutoModelForSequenceClassification\n"
        "from raflora.federation.model_card import hub_id\n"
        "from raflora.tasks.meanpool import mean_pool_classifier\n"
        "model = mean_pool_classifier(AutoModel.from_pretrained('raflora-test/tiny-bert'), 5, seed=0).eval()\n"
        "assert model.config.encoder_name_or_path == 'raflora-test/tiny-bert'\n"
        "assert hub_id(model.config.encoder_name_or_path) == 'raflora-test/tiny-bert'\n"
        f"model.save_base({str(tmp_path / 'base')!r})\n"
        f"loaded = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / 'base')!r})\n"
        "loaded.classifier.load_state_dict(model.classifier.state_dict())\n"
        f"batch = torch.load({str(tmp_path / 'batch.pt')!r})\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(model(**batch).logits, loaded.eval()(**batch).logits)\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)
