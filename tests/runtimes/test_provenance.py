"""run.json: every session of a run records its code, library versions and machine, and the
metrics lines do not change for it."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import raflora
from raflora.runtimes.embedded import run_federation
from raflora.runtimes.provenance import code_version, cpu_name


def _sessions(folder: Path) -> list[dict]:
    return json.loads((folder / "run.json").read_text())["sessions"]


def test_a_run_and_its_resume_each_record_a_session(make_config, tmp_path):
    config = make_config("run", run={"rounds": 2})
    run_federation(config, stop_after=1)
    first = _sessions(tmp_path / "run")
    assert len(first) == 1 and first[0]["after_round"] == 0
    record = first[0]
    for name in ("torch", "transformers", "peft", "safetensors"):
        assert record["versions"][name] == metadata.version(name)
    assert "flwr" in record["versions"]  # None where Flower is not installed
    assert record["code"]["version"] == raflora.__version__
    assert record["machine"]["device"] == "cpu" and record["machine"]["gpu"] is None
    assert record["machine"]["cpu"] == cpu_name() and record["machine"]["torch_threads"] == 1
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "torch" not in metrics and "cpu" not in metrics  # the metrics lines stay as they were

    run_federation(config, resume=True)
    sessions = _sessions(tmp_path / "run")
    assert [s["after_round"] for s in sessions] == [0, 1]
    assert sessions[0] == record  # the first session's record is kept as it was


def test_a_fresh_run_over_an_old_one_starts_the_record_anew(make_config, tmp_path):
    config = make_config("run", run={"rounds": 1})
    run_federation(config)
    run_federation(config, overwrite=True)
    assert len(_sessions(tmp_path / "run")) == 1


def test_the_commit_is_this_checkout_s():
    root = Path(raflora.__file__).resolve().parent.parent
    code = code_version()
    if not (root / ".git").exists():  # an installed wheel: the version alone
        assert code["commit"] is None
        return
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert code["commit"] == head and isinstance(code["dirty"], bool)
