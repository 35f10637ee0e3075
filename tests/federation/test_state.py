"""Checkpoint files: checksums, numeric rotation past round 9,999, durable writes, and folders
written before checkpoints carried a manifest."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from raflora.federation.checkpoint_files import MANIFEST, CorruptCheckpoint, sha256
from raflora.federation.state import (
    STATE_TENSORS,
    FederationState,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from raflora.lora import LoRAFactors


def state(round_: int) -> FederationState:
    g = torch.Generator().manual_seed(round_)
    factors = LoRAFactors(A=torch.randn(2, 6, generator=g), B=torch.randn(5, 2, generator=g), scale=4.0)
    return FederationState(
        round=round_,
        starts={2: {"q": factors}},
        head={"w": torch.randn(3, generator=g)},
        metrics=[{"round": k, "accuracy": 0.5} for k in range(1, round_ + 1)],
    )


def test_manifest_holds_the_sha256_of_every_file(tmp_path):
    path = save_checkpoint(state(3), tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["sha256"]) == {"state.json", STATE_TENSORS}
    for name, digest in manifest["sha256"].items():
        assert sha256((path / name).read_bytes()) == digest
    loaded = load_checkpoint(path)
    assert loaded.round == 3 and torch.equal(loaded.starts[2]["q"].A, state(3).starts[2]["q"].A)


def test_rotation_is_numeric_past_round_9999(tmp_path):
    """As text, round_10000 sorts before round_9999: each new checkpoint was deleted at once."""
    for round_ in range(9998, 10002):
        save_checkpoint(state(round_), tmp_path, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["round_10000", "round_10001"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).round == 10001


def test_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import raflora.federation.checkpoint_files as files

    synced = []
    real_fsync, real_rename = files.os.fsync, type(tmp_path).rename

    def fsync(fd):
        synced.append(fd)
        real_fsync(fd)

    def rename(self, target):
        assert len(synced) >= 4, "state.json, state.safetensors, the manifest and the folder first"
        return real_rename(self, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(type(tmp_path), "rename", rename)
    save_checkpoint(state(1), tmp_path)
    assert (tmp_path / "round_0001" / MANIFEST).is_file()


def test_flipped_value_is_caught_by_the_checksum_and_the_older_checkpoint_used(tmp_path, caplog):
    save_checkpoint(state(1), tmp_path)
    path = save_checkpoint(state(2), tmp_path)
    raw = bytearray((path / STATE_TENSORS).read_bytes())
    raw[-1] ^= 0x40  # one bit of the last float: the file still parses
    (path / STATE_TENSORS).write_bytes(bytes(raw))
    from safetensors.torch import load

    load(bytes(raw))  # safetensors alone would not notice
    with pytest.raises(CorruptCheckpoint, match="state.safetensors does not match its sha256"):
        load_checkpoint(path)
    with caplog.at_level(logging.WARNING):
        found = latest_checkpoint(tmp_path)
    assert found.name == "round_0001"
    assert "round_0002 is unusable: state.safetensors does not match its sha256" in caplog.text
    assert "round_0001 (skipped round_0002)" in caplog.text


def test_checkpoint_without_manifest_loads_unverified_with_a_note(tmp_path, caplog):
    """Folders written by the previous version have no manifest; they are the only copy of those runs."""
    path = save_checkpoint(state(2), tmp_path)
    (path / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(latest_checkpoint(tmp_path)).round == 2
    assert "has no manifest.json (written by an older raflora): loaded without verifying it" in caplog.text
    # still refused, without a manifest, when its files do not parse
    (path / STATE_TENSORS).write_bytes((path / STATE_TENSORS).read_bytes()[:40])
    with pytest.raises(CorruptCheckpoint, match="do not parse"):
        load_checkpoint(path)
    assert latest_checkpoint(tmp_path) is None


def test_garbled_manifest_is_refused(tmp_path):
    path = save_checkpoint(state(1), tmp_path)
    (path / MANIFEST).write_text("[1, 2")
    with pytest.raises(CorruptCheckpoint, match="manifest.json is unreadable"):
        load_checkpoint(path)


def test_rotation_spares_the_checkpoint_just_written(tmp_path):
    """After resume fell back past a corrupt round 5, round 3 is written while round 5 still sorts last."""
    save_checkpoint(state(5), tmp_path)
    path = save_checkpoint(state(3), tmp_path, keep=1)
    assert path.is_dir() and load_checkpoint(path).round == 3
