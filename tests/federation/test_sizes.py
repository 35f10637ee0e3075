"""Impossible sizes fail before work, with one line: a rank above min(m, n) of an adapted module,
examples longer than the model's positions, a memory estimate above the machine's RAM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from runtimes.conftest import small_config  # tests/ is on sys.path (it has no __init__.py)
from torch import nn

from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.federation import sizes
from raflora.federation.setup import build_setup, check_inputs
from raflora.tasks import build_task

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, **sections):
    return config_from_dict(small_config(tmp_path / "run", **sections))


@pytest.mark.parametrize("prepare", [build_setup, check_inputs])
def test_r_max_above_a_modules_smaller_side_is_refused(tmp_path, prepare):
    # the synthetic MLP: fc1 is 32 x 16 (dim 16 -> hidden 32), fc2 32 x 32
    with pytest.raises(ConfigError) as err:
        prepare(config(tmp_path, ranks={"r_max": 17}))
    assert str(err.value) == (
        "ranks.r_max = 17 is above min(m, n) = 16 of module 'fc1' (32 x 16); "
        "a LoRA rank cannot exceed the smaller side of the matrix it adapts"
    )
    build_setup(config(tmp_path, ranks={"r_max": 16}))  # a rank of the full smaller side is one


def test_the_cli_refuses_r_max_100000_before_any_round_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "raflora.cli", "run", str(ROOT / "configs" / "synthetic.toml")]
        + ["--out", str(tmp_path / "run"), "--set", "ranks.r_max=100000", "--set", "run.threads=1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: ranks.r_max = 100000 is above min(m, n) = 16 of module 'fc1' (32 x 16); "
        "a LoRA rank cannot exceed the smaller side of the matrix it adapts"
    ]
    # before any work: no round ran and no run folder was made (timings are for benchmarks, not tests)
    assert "round 1" not in done.stdout + done.stderr and not (tmp_path / "run").exists()


def test_max_length_above_the_tiny_encoders_positions_is_refused_when_the_config_is_read(tmp_path):
    task = {"name": "user_text", "train_file": str(ROOT / "configs/examples/reviews.csv"), "model": "tiny"}
    with pytest.raises(ConfigError, match=r"^\[task\]: max_length = 1000000000 is above the 512 positions"):
        config(tmp_path, task={**task, "max_length": 10**9}, partition={"scheme": "iid"})
    config(tmp_path, task={**task, "max_length": 512}, partition={"scheme": "iid"})


def encoder_of(positions: int):
    """A stand-in model whose config says ``positions`` (the MeanPool wrapper keeps the encoder's)."""
    return SimpleNamespace(config=SimpleNamespace(encoder=SimpleNamespace(max_position_embeddings=positions)))


def test_max_length_above_a_loaded_encoders_positions_is_refused(tmp_path):
    task = build_task("user_text", train_file=str(ROOT / "configs/examples/reviews.csv"), max_length=600)
    with pytest.raises(ValueError, match="max_length = 600 is above the 512 positions of encoder 'minilm'"):
        task.check_positions(encoder_of(512))
    task.check_positions(encoder_of(600))


def test_a_reasoning_example_must_fit_the_models_positions():
    task = build_task("reasoning", model="tiny", max_length=200, max_new_tokens=64)
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=256))
    with pytest.raises(ValueError, match=r"max_length \+ max_new_tokens = 200 \+ 64 is above the 256 positions"):
        task.check_positions(model)
    task.check_positions(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=264)))


def test_the_memory_estimate_counts_the_documented_parts(tmp_path):
    c = config(tmp_path)  # 4 clients of ranks 2, 4, 8 (cycle), r_max 8, batches 8 and 64
    task = build_task(c.task.name, **c.task.options)
    model = task.load_model()
    shapes = sizes.adapted_shapes(model, task.target_modules)
    assert shapes == {"fc1": (32, 16), "fc2": (32, 32)}
    est = sizes.memory_estimate(c, task, model, shapes, [2, 4, 8, 2])
    params = (16 * 32 + 32) + (32 * 32 + 32) + (32 * 4 + 4)  # fc1, fc2, head: weights and biases
    assert est["model"] == 4 * params
    assert est["factors"] == 4 * (48 + 64) * (3 * (2 + 4 + 8) + 8 * 4)  # 4 clients a round
    assert est["activations"] == 4 * 64 * 1 * (32 + 32 + 4) * 2
    assert est["total"] == est["model"] + est["factors"] + est["activations"]


def test_a_run_above_the_machines_ram_is_refused_with_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "machine_ram", lambda: 2**20)  # a 1 MiB machine
    with pytest.raises(ConfigError) as err:
        build_setup(config(tmp_path, train={"batch_size": 4096}, eval={"batch_size": 4096}))
    line = str(err.value)
    assert line.startswith("the run needs about ") and line.endswith("more than this machine's 0.000977 GiB of RAM")
    assert "model " in line and "factors " in line and "activations " in line and "\n" not in line
    assert sizes.machine_ram() > 0


def test_a_conv_weight_counts_its_output_by_the_rest():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(5, 7))
    assert sizes.adapted_shapes(model, ["0", "1"]) == {"0": (8, 27), "1": (7, 5)}
