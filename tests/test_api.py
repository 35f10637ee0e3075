"""raflora.api: a federation from Python runs the CLI's code (same records, same folder), round by
round, resumed and exported."""

from __future__ import annotations

import pytest
from runtimes.conftest import read_metrics, small_config, without_time  # tests/ is on sys.path

import raflora
from raflora.cli import main
from raflora.config import ConfigError
from raflora.config_io import config_from_dict, config_to_toml


def test_run_calls_on_round_with_each_record_and_matches_the_cli(tmp_path):
    seen = []
    result = raflora.run(small_config(tmp_path / "api"), on_round=seen.append)
    assert [r["round"] for r in seen] == [1, 2]
    assert seen == read_metrics(tmp_path / "api") == result.metrics
    assert result.folder == tmp_path / "api" and result.finished and result.aggregated
    assert result.adapter == tmp_path / "api" / "adapter"

    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config_from_dict(small_config(tmp_path / "cli"))))
    assert main(["run", str(path), "--quiet"]) == 0
    assert without_time(read_metrics(tmp_path / "cli")) == without_time(seen)


def test_config_sources_and_overrides_agree(tmp_path):
    data = small_config(tmp_path / "unused", run={"rounds": 1})
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(config_from_dict(data)))
    runs = [
        raflora.run(source, out=tmp_path / name, overrides={"federation.method": "flexlora"})
        for name, source in (("dict", data), ("file", path), ("config", config_from_dict(data)))
    ]
    assert all(r.config.federation.method.name == "flexlora" for r in runs)
    assert without_time(runs[0].metrics) == without_time(runs[1].metrics) == without_time(runs[2].metrics)


def test_bad_config_fails_before_any_folder_is_written(tmp_path):
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        raflora.run(small_config(tmp_path / "bad"), overrides={"train.lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        raflora.rounds(small_config(tmp_path / "bad"), overrides={"train.lrr": 0.1})  # before the first round
    with pytest.raises(ConfigError, match="holds no config.toml"):
        raflora.resume(tmp_path / "bad")
    with pytest.raises(ConfigError, match="a Config, a TOML file path or a dict"):
        raflora.run(42)
    assert not (tmp_path / "bad").exists()


def test_rounds_stopped_early_then_resumed_equals_an_uninterrupted_run(tmp_path):
    whole = raflora.run(small_config(tmp_path / "whole", run={"rounds": 3}))
    records = raflora.rounds(small_config(tmp_path / "cut", run={"rounds": 3}))
    first = next(records)
    first["round"] = "changed by the caller"  # the run keeps its own record
    records.close()  # stop after round 1, its checkpoint kept
    assert [r["round"] for r in read_metrics(tmp_path / "cut")] == [1]
    rest = []
    resumed = raflora.resume(tmp_path / "cut", on_round=rest.append)
    assert [r["round"] for r in rest] == [2, 3]
    assert without_time(resumed.metrics) == without_time(whole.metrics)


def test_resume_runs_on_to_more_rounds_and_export_writes_the_adapter(tmp_path):
    first = raflora.run(small_config(tmp_path / "run", run={"rounds": 1}))
    assert first.finished
    more = raflora.resume(first.folder, overrides={"run.rounds": 2})
    assert [r["round"] for r in more.metrics] == [1, 2]
    adapter = raflora.export(first.folder)
    assert adapter == first.folder / "export" and (adapter / "adapter_model.safetensors").is_file()
    merged = more.export(tmp_path / "merged", merged=True)
    assert (merged / "model.safetensors").is_file()


def test_stop_after_leaves_an_unfinished_run_without_adapter(tmp_path):
    result = raflora.run(small_config(tmp_path / "run"), stop_after=1)
    assert not result.finished and result.adapter is None
    assert raflora.resume(result.folder).finished


def test_flower_runtime_has_no_per_round_callback(tmp_path):
    pytest.importorskip("flwr")
    with pytest.raises(ConfigError, match="needs the embedded runtime"):
        raflora.run(small_config(tmp_path / "f", run={"runtime": "flower"}), on_round=print)
    with pytest.raises(ConfigError, match="needs the embedded runtime"):
        raflora.rounds(small_config(tmp_path / "f", run={"runtime": "flower"}))
    assert not (tmp_path / "f").exists()
