"""Documented commands print no deprecation warning, even with every warning shown
(``PYTHONWARNINGS=default``), and ``--runtime flower`` no longer goes through flwr's deprecated
``run_simulation`` (which logs ``DEPRECATED FEATURE``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "synthetic.toml"
DEPRECATIONS = ("DeprecationWarning", "FutureWarning", "DEPRECATED")


def run_cli(*args: str) -> str:
    """``raflora ARGS`` in a fresh process with every warning shown; its stdout and stderr."""
    env = {**os.environ, "PYTHONWARNINGS": "default", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "raflora.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_an_embedded_run_and_its_export_warn_of_no_deprecation(tmp_path):
    out = tmp_path / "run"
    printed = run_cli("run", str(SYNTHETIC), "--rounds", "2", "--out", str(out), "--set", "run.threads=1")
    printed += run_cli("export", str(out))
    assert "round 2/2  accuracy" in printed
    assert (out / "export" / "adapter_model.safetensors").is_file()
    assert [word for word in DEPRECATIONS if word in printed] == [], printed


def test_a_flower_run_warns_of_no_deprecation(tmp_path):
    pytest.importorskip("flwr")
    out = tmp_path / "run"
    printed = run_cli("run", str(SYNTHETIC), "--runtime", "flower", "--rounds", "2", "--out", str(out))
    assert "round 2/2  accuracy 0.8650" in printed  # the embedded runtime's number (docs/usage.md)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["round"] == 2
    assert [word for word in DEPRECATIONS if word in printed] == [], printed


def test_typer_deprecations_are_hidden_precisely_here_and_for_child_processes(monkeypatch):
    pytest.importorskip("flwr")
    from raflora.runtimes.flower import TYPER_DEPRECATIONS, hide_typer_deprecations

    monkeypatch.setenv("PYTHONWARNINGS", "default,error::UserWarning")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hide_typer_deprecations()
        hide_typer_deprecations()  # twice: the environment does not grow
        for start in TYPER_DEPRECATIONS:
            warnings.warn_explicit(f"{start} and will be removed", DeprecationWarning, "typer/__init__.py", 24, "typer")
        warnings.warn_explicit("something else is deprecated", DeprecationWarning, "typer/__init__.py", 30, "typer")
        warnings.warn_explicit(f"{TYPER_DEPRECATIONS[0]} here too", DeprecationWarning, "other.py", 1, "other")
    assert [str(w.message) for w in caught] == [
        "something else is deprecated",
        f"{TYPER_DEPRECATIONS[0]} here too",
    ]
    assert os.environ["PYTHONWARNINGS"].split(",") == [
        "default",
        "error::UserWarning",
        "ignore:'click.utils.get_binary_stream' is deprecated:DeprecationWarning:typer",
        "ignore:'click.utils.get_text_stream' is deprecated:DeprecationWarning:typer",
    ]
    child = subprocess.run([sys.executable, "-c", "import typer"], capture_output=True, text=True, env=dict(os.environ))
    assert child.returncode == 0 and child.stderr == ""  # what a Ray worker importing flwr sees
    shown = {**os.environ, "PYTHONWARNINGS": "default"}
    child = subprocess.run([sys.executable, "-c", "import typer"], capture_output=True, text=True, env=shown)
    assert "'click.utils.get_binary_stream' is deprecated" in child.stderr  # so the filter above is needed
