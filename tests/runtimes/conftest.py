"""A small synthetic federation config for runtime tests (seconds per run, no download)."""

from __future__ import annotations

import json

import pytest

from raflora.config_io import config_from_dict


def small_config(out, **sections) -> dict:
    data = {
        "run": {"name": "t", "seed": 3, "rounds": 2, "out": str(out), "threads": 1},
        "federation": {"num_clients": 4, "method": "raflora"},
        "ranks": {"policy": "cycle", "ranks": [2, 4, 8], "r_max": 8},
        "lora": {"alpha": 8.0},
        "train": {"local_steps": 3, "lr": 0.02, "batch_size": 8},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "task": {"name": "synthetic", "train_size": 160, "test_size": 64},
        "eval": {"batch_size": 64},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def read_metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture
def make_config(tmp_path):
    def make(name="run", **sections):
        return config_from_dict(small_config(tmp_path / name, **sections))

    return make
