"""task.model as a Hub id: resolved from a local Hugging Face cache that the test builds (offline),
one line and exit 2 when the cache lacks it; the run's adapter names the id as its base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raflora.tasks.hub import cached_snapshot, looks_like_hub_id
from raflora.tasks.text import resolve_encoder

ROOT = Path(__file__).resolve().parents[2]
REPO = "raflora-test/tiny-bert"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding REPO: a tiny BERT with MiniLM's tokenizer, laid out as
    ``hf download`` leaves it (models--org--name/snapshots/<rev>, refs/main)."""
    from raflora.tasks import BBCNewsTask

    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / "models--raflora-test--tiny-bert"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    task = BBCNewsTask(model="tiny", seed=5, max_length=32)
    task.load_model().backbone.save_pretrained(snapshot)
    task.tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    return cache


def _env(cache: Path) -> dict:
    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert looks_like_hub_id("org/name") and looks_like_hub_id("bert-base-uncased")
    assert not looks_like_hub_id(str(tmp_path))  # an existing folder is a path
    assert not looks_like_hub_id("./a/b/c") and not looks_like_hub_id("a b")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_encoder(str(tmp_path / "a" / "b"))


def test_an_id_missing_from_the_cache_says_so(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        FileNotFoundError, match="'org/absent' is neither a local folder nor a model in the Hugging Face cache"
    ):
        cached_snapshot("org/absent")


CONFIG = """
[run]
name = "hub"
rounds = 1
threads = 1
[federation]
num_clients = 3
[ranks]
ranks = [2, 4]
r_max = 4
[train]
local_steps = 2
batch_size = 8
[partition]
scheme = "iid"
[task]
name = "user_text"
train_file = "{data}"
model = "{model}"
max_length = 24
[eval]
batch_size = 32
"""


def _run(tmp_path, cache, model) -> subprocess.CompletedProcess:
    config = tmp_path / f"{model.replace('/', '_')}.toml"
    config.write_text(CONFIG.format(data=ROOT / "configs" / "examples" / "reviews.csv", model=model))
    return subprocess.run(
        [sys.executable, "-m", "raflora", "run", str(config), "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True,
        text=True,
        env=_env(cache),
        timeout=600,
        cwd=tmp_path,
    )


def test_a_run_loads_the_model_by_its_hub_id(tmp_path, hub_cache):
    done = _run(tmp_path, hub_cache, REPO)
    assert done.returncode == 0, done.stderr
    base = json.loads((tmp_path / "run" / "adapter" / "base" / "config.json").read_text())
    assert base["encoder_name_or_path"] == REPO  # the id, not the cache path: it loads on any machine
    assert f"`{REPO}`" in (tmp_path / "run" / "adapter" / "README.md").read_text()


def test_a_hub_id_not_in_the_cache_is_one_line_exit_2(tmp_path, hub_cache):
    done = _run(tmp_path, hub_cache, "raflora-test/absent")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        "error: task.model = 'raflora-test/absent': the model cannot be loaded: "
        "'raflora-test/absent' is neither a local folder nor a model in the Hugging "
        f"Face cache ({hub_cache})"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_reasoning_loads_a_causal_lm_by_hub_id(tmp_path, monkeypatch):
    """The reasoning task takes a Hub id too: the cached model scores what the same model scores
    when built in memory."""
    import torch
    from huggingface_hub import constants

    from raflora.tasks import ReasoningGymTask

    tiny = ReasoningGymTask(model="tiny", seed=2, train_size=4, test_size=2)
    model = tiny.load_model()
    snapshot = tmp_path / "models--raflora-test--tiny-llama" / "snapshots" / "abc"
    model.save_pretrained(snapshot)
    tiny.tokenizer.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cached = ReasoningGymTask(model="raflora-test/tiny-llama", seed=2, train_size=4, test_size=2)
    loaded = cached.load_model()
    batch = tiny.collate([{"question": "1 + 2 = ?", "answer": "3"}])
    assert torch.equal(cached.collate([{"question": "1 + 2 = ?", "answer": "3"}])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a model"):
        ReasoningGymTask(model="raflora-test/absent").load_model()
