"""A corrupt latest checkpoint: resume and export fall back to the newest valid one, say so, and
the resumed run finishes with the numbers of an uninterrupted run."""

from __future__ import annotations

import logging

import pytest

from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.federation import export_run
from raflora.federation.state import STATE_JSON, STATE_TENSORS
from raflora.runtimes.embedded import run_federation

from .conftest import read_metrics, small_config, without_time


def truncate(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:50])


def flip_value(folder):
    raw = bytearray((folder / STATE_TENSORS).read_bytes())
    raw[-3] ^= 0x01  # one bit inside the last stored float: the file still parses
    (folder / STATE_TENSORS).write_bytes(bytes(raw))


CORRUPTIONS = {
    "truncated_safetensors": (truncate(STATE_TENSORS), "state.safetensors does not match its sha256"),
    "truncated_state_json": (truncate(STATE_JSON), "state.json does not match its sha256"),
    "garbled_state_json": (lambda f: (f / STATE_JSON).write_text('{"round": 2, "metr'), "state.json does not match"),
    "missing_tensor_file": (lambda f: (f / STATE_TENSORS).unlink(), "state.safetensors is missing"),
    "flipped_value": (flip_value, "state.safetensors does not match its sha256"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_resume_and_export_fall_back_to_the_older_checkpoint(tmp_path, caplog, name):
    corrupt, reason = CORRUPTIONS[name]
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3}))
    first = run_federation(config, stop_after=2)
    corrupt(tmp_path / "r" / "checkpoints" / "round_0002")
    with caplog.at_level(logging.WARNING):
        export_run(tmp_path / "r", tmp_path / "export")
        assert (tmp_path / "export" / "adapter_config.json").is_file()
        run_federation(config, resume=True)
    assert f"round_0002 is unusable: {reason}" in caplog.text
    assert "falling back to checkpoint" in caplog.text and "round_0001 (skipped round_0002)" in caplog.text
    metrics = read_metrics(tmp_path / "r")
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert without_time(metrics[:2]) == without_time(first)  # round 2 trained again, to the same numbers
    assert (tmp_path / "r" / "adapter" / "adapter_config.json").is_file()


def test_no_usable_checkpoint_is_a_config_error(tmp_path):
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3, "keep_checkpoints": 1}))
    run_federation(config, stop_after=1)
    (tmp_path / "r" / "checkpoints" / "round_0001" / STATE_TENSORS).unlink()
    with pytest.raises(ConfigError, match="no checkpoint of a run that can be used"):
        export_run(tmp_path / "r", tmp_path / "export")
    with pytest.raises(ConfigError, match="cannot resume"):
        run_federation(config, resume=True)


def rewrite(folder, change):
    """Replace the checkpoint in ``folder`` by ``change(state)`` with a valid manifest: the bytes
    check out, the meaning does not."""
    import shutil

    from raflora.federation.state import load_checkpoint, save_checkpoint

    state = load_checkpoint(folder)
    change(state)
    written = save_checkpoint(state, folder.parent / "elsewhere", keep=1)
    shutil.rmtree(folder)
    written.rename(folder)
    (folder.parent / "elsewhere").rmdir()


def nan_start(state):
    factors = next(iter(state.starts.values()))
    next(iter(factors.values())).A[0, 0] = float("nan")


def wrong_head(state):
    key = next(iter(state.head))
    state.head[key] = state.head[key][:1]


def far_round(state):
    state.round = 10**9


def far_round_everywhere(state):
    state.round = 2
    state.metrics = state.metrics[:1] + [dict(state.metrics[1], round=10**9)]


MEANINGLESS = {
    "round_1e9_in_state_json": (
        lambda f: rewrite(f, far_round),
        "state.json says round 1000000000 but the folder is round 2",
    ),
    "round_1e9_in_the_metrics": (
        lambda f: rewrite(f, far_round_everywhere),
        "state.json says round 2 but its last metrics are of round 1000000000",
    ),
    "nan_state": (lambda f: rewrite(f, nan_start), "holds NaN or infinite values"),
    "wrong_head_shape": (lambda f: rewrite(f, wrong_head), "the model's"),
    "deleted_manifest": (lambda f: (f / "manifest.json").unlink(), "its manifest.json is missing"),
    "ahead_of_metrics_jsonl": (
        lambda f: (f.parent.parent / "metrics.jsonl").write_text(
            (f.parent.parent / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
        ),
        "it is of round 2 but metrics.jsonl records 1 rounds",
    ),
}


@pytest.mark.parametrize("name", list(MEANINGLESS))
def test_a_checkpoint_that_means_nothing_falls_back_like_a_corrupt_one(tmp_path, caplog, name):
    change, reason = MEANINGLESS[name]
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3}))
    first = run_federation(config, stop_after=2)
    change(tmp_path / "r" / "checkpoints" / "round_0002")
    with caplog.at_level(logging.WARNING):
        export_run(tmp_path / "r", tmp_path / "export")
        metrics = run_federation(config, resume=True)
    assert "round_0002 is unusable: " in caplog.text and reason in caplog.text
    assert "falling back to checkpoint" in caplog.text and "round_0001 (skipped round_0002)" in caplog.text
    assert [m["round"] for m in metrics] == [1, 2, 3]  # not "done" after a round of 10**9
    assert without_time(read_metrics(tmp_path / "r")[:2]) == without_time(first)


def test_a_checkpoint_numbered_past_the_run_is_skipped(tmp_path, caplog):
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3}))
    run_federation(config, stop_after=2)
    checkpoints = tmp_path / "r" / "checkpoints"
    rewrite(checkpoints / "round_0002", far_round)
    (checkpoints / "round_0002").rename(checkpoints / "round_1000000000")
    with caplog.at_level(logging.WARNING):
        metrics = run_federation(config, resume=True)
    assert "round_1000000000 is unusable: state.json says round 1000000000 but holds the metrics of 2" in caplog.text
    assert [m["round"] for m in metrics] == [1, 2, 3]
