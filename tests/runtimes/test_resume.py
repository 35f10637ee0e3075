"""Interrupting a run and resuming it gives the same numbers as running it straight through."""

from __future__ import annotations

import pytest

from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.runtimes.embedded import run_federation

from .conftest import read_metrics, small_config, without_time


@pytest.mark.parametrize("method", ["raflora", "flora", "fedsa", "ffa"])
def test_resume_equals_uninterrupted(tmp_path, method):
    sections = {"run": {"rounds": 4}, "federation": {"method": method, "sample_fraction": 0.75}}
    straight = config_from_dict(small_config(tmp_path / "straight", **sections))
    run_federation(straight)
    cut = config_from_dict(small_config(tmp_path / "cut", **sections))
    first = run_federation(cut, stop_after=2)
    assert [m["round"] for m in first] == [1, 2]
    assert not (tmp_path / "cut" / "adapter").exists()
    run_federation(cut, resume=True)
    assert without_time(read_metrics(tmp_path / "cut")) == without_time(read_metrics(tmp_path / "straight"))
    # fedsa keeps each client's B on the client: no global adapter, the clients' own models are evaluated
    assert (tmp_path / "cut" / "adapter" / "adapter_config.json").is_file() == (method != "fedsa")


def test_resume_after_partial_metrics_line(tmp_path):
    """A crash after logging round 3 but before its checkpoint resumes from round 2's checkpoint."""
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 3}))
    run_federation(config, stop_after=2)
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:
        f.write('{"round": 3, "half": true}\n')
    run_federation(config, resume=True)
    assert [m["round"] for m in read_metrics(tmp_path / "r")] == [1, 2, 3]


def test_resume_refuses_a_different_config(tmp_path):
    run_federation(config_from_dict(small_config(tmp_path / "r")), stop_after=1)
    other = config_from_dict(small_config(tmp_path / "r", federation={"method": "flexlora"}))
    with pytest.raises(ConfigError, match="federation.method"):
        run_federation(other, resume=True)


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    config = config_from_dict(small_config(tmp_path / "r", run={"rounds": 1}))
    run_federation(config)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_federation(config)
    assert len(run_federation(config, overwrite=True)) == 1


def test_same_config_same_numbers(tmp_path):
    a = run_federation(config_from_dict(small_config(tmp_path / "a", partition={"scheme": "iid"})))
    b = run_federation(config_from_dict(small_config(tmp_path / "b", partition={"scheme": "iid"})))
    assert without_time(a) == without_time(b)
    c = run_federation(config_from_dict(small_config(tmp_path / "c", run={"seed": 4}, partition={"scheme": "iid"})))
    assert without_time(a) != without_time(c)


def test_a_run_folder_of_the_flat_format_resumes_and_reports(tmp_path):
    """Run folders written before [federation.method] (method, tau, rank_levels, sfed_alpha flat in
    [federation]) still resume and report."""
    import tomllib

    from raflora.report.load import load_run

    sections = {"run": {"rounds": 2}, "federation": {"method": {"name": "florist", "tau": 0.8}}}
    config = config_from_dict(small_config(tmp_path / "old", **sections))
    run_federation(config, stop_after=1)
    saved = tmp_path / "old" / "config.toml"
    text = saved.read_text()
    data = tomllib.loads(text)
    flat = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in data["federation"].items() if k != "method")
    head, _, _ = text.partition("[federation]")
    tail = text[text.index("[ranks]") :]
    saved.write_text(
        f'{head}[federation]\n{flat}method = "florist"\ntau = 0.8\nrank_levels = []\nsfed_alpha = 0.0\n\n{tail}'
    )
    metrics = run_federation(config, resume=True)
    assert [m["round"] for m in metrics] == [1, 2]
    assert load_run(tmp_path / "old").config["federation"]["method"] == "florist (tau=0.8)"
