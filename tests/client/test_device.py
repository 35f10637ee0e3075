"""run.device and train.precision: which device a run asks for, what a machine without it says,
and that bf16 really runs the forward passes in bfloat16 (CPU autocast) while float32 changes
nothing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from raflora.client.adapters import AdapterModel
from raflora.client.device import autocast, check_spelling, resolve_device
from raflora.config import ConfigError
from raflora.config_io import config_from_dict
from raflora.runtimes.embedded import run_federation


def test_auto_is_cuda_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "device, cuda, count, message",
    [
        ("cuda", False, 0, "torch sees no CUDA GPU here"),
        ("cuda:0", False, 0, "torch sees no CUDA GPU here"),
        ("cuda:2", True, 2, "has 2 CUDA devices (cuda:0 to cuda:1)"),
        ("cuda:1", True, 1, "has 1 CUDA device (cuda:0)"),
        ("gpu", True, 1, "run.device = 'gpu' is not known"),
        ("cuda:x", True, 1, "run.device = 'cuda:x' is not known"),
    ],
)
def test_a_missing_device_is_a_config_error(monkeypatch, device, cuda, count, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(device)


def test_mps_needs_an_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no Apple MPS device"):
        resolve_device("mps")


def test_precision_spelling_is_checked_with_the_config():
    with pytest.raises(ConfigError, match="train.precision = 'fp16' is not known"):
        check_spelling("auto", "fp16")
    with pytest.raises(ConfigError, match="train.precision = 'fp16' is not known"):
        config_from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="run.device = 'tpu' is not known"):
        config_from_dict({"run": {"device": "tpu"}})


def _adapter_model(precision: str) -> AdapterModel:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    return AdapterModel(model, ["0", "2"], [], [2], {2: 1.0}, device="cpu", precision=precision)


def test_bf16_autocasts_training_and_evaluation_on_the_cpu():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    bf16, fp32 = _adapter_model("bf16"), _adapter_model("float32")
    with bf16.autocast():
        assert bf16.peft(x).dtype == torch.bfloat16
    with fp32.autocast():
        assert fp32.peft(x).dtype == torch.float32
    with bf16.global_model({}, {}) as model:  # evaluation runs in the training precision
        low = model(x)
    with fp32.global_model({}, {}) as model:
        high = model(x)
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    # the same weights: bfloat16 rounding (8 bits of mantissa) is the whole difference
    assert torch.allclose(low.float(), high, atol=3e-2) and not torch.equal(low.float(), high)


def test_float32_context_is_no_autocast_at_all():
    with autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")


def test_factors_and_heads_come_back_on_the_cpu():
    model = _adapter_model("float32")
    factors = model.get_factors(2)
    assert all(f.A.device.type == "cpu" and f.B.device.type == "cpu" for f in factors.values())
    # copies, not views of the trained parameters
    factors["0"].A.add_(1.0)
    assert not torch.equal(factors["0"].A, model.get_factors(2)["0"].A)
    assert all(w.device.type == "cpu" for w in model.base_weights().values())


SYNTHETIC = {
    "run": {"name": "dev", "rounds": 2, "threads": 1},
    "federation": {"num_clients": 4},
    "ranks": {"ranks": [2, 4], "r_max": 4},
    "train": {"local_steps": 3},
    "task": {"name": "synthetic", "train_size": 120, "test_size": 40},
}


def _run(tmp_path, name: str, run: dict, train: dict | None = None) -> list[str]:
    data = json.loads(json.dumps(SYNTHETIC))
    data["run"].update(run, out=str(tmp_path / name))
    data["train"].update(train or {})
    run_federation(config_from_dict(data))
    lines = []
    for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        record.pop("seconds")
        lines.append(json.dumps(record))
    return lines


def test_cpu_device_and_auto_on_a_cpu_machine_give_the_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = _run(tmp_path, "auto", {"device": "auto"})
    assert auto == _run(tmp_path, "cpu", {"device": "cpu"})
    bf16 = _run(tmp_path, "bf16", {"device": "cpu"}, {"precision": "bf16"})
    assert bf16 != auto  # bf16 really changes the computation
    assert all(json.loads(x)["accuracy"] is not None for x in bf16)


def test_a_run_on_a_missing_gpu_stops_before_it_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="run.device = 'cuda'"):
        _run(tmp_path, "gpu", {"device": "cuda"})
    assert not (tmp_path / "gpu" / "metrics.jsonl").exists()


def test_the_reasoning_task_s_bf16_autocast_is_train_precision_now(tmp_path):
    from raflora.config_io import load_config

    old = {"task": {"name": "reasoning", "model": "tiny", "bf16_autocast": True}}
    with pytest.raises(ConfigError, match=r'bf16_autocast is now \[train\] precision = "bf16"'):
        config_from_dict(old)
    # a run folder written before the change still reads (report, --resume, export), mapped
    path = tmp_path / "config.toml"
    path.write_text('[task]\nname = "reasoning"\nmodel = "tiny"\nbf16_autocast = true\n')
    config = load_config(path, legacy=True)
    assert config.train.precision == "bf16" and "bf16_autocast" not in config.task.options
    assert (
        config_from_dict(
            {"task": {"name": "reasoning", "model": "tiny", "bf16_autocast": False}}, legacy=True
        ).train.precision
        == "float32"
    )
