"""Every aggregation method runs two rounds end to end and logs the required metrics."""

from __future__ import annotations

import math

import pytest

from raflora.aggregation import AGGREGATORS
from raflora.runtimes.embedded import run_federation

REQUIRED = (
    "round",
    "method",
    "accuracy",
    "loss",
    "rho_rmin",
    "energy_by_partition",
    "bytes_up",
    "bytes_down",
    "seconds",
)


@pytest.mark.parametrize("method", list(AGGREGATORS))
def test_method_runs_two_rounds(make_config, method):
    ranks = {"policy": "homogeneous", "rank": 4} if method == "fedit" else {}
    config = make_config(method, federation={"method": method}, ranks=ranks)
    metrics = run_federation(config)
    assert [m["round"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in REQUIRED:
            assert key in m, key
        assert m["method"] == method and m["rejected"] == [] and m["accepted"] == 4
        assert 0.0 <= m["accuracy"] <= 1.0 and math.isfinite(m["loss"])
        assert 0.0 < m["rho_rmin"] <= 1.0 + 1e-9
        assert abs(sum(m["energy_by_partition"].values()) - 1.0) < 1e-6
        assert m["bytes_up"] > 0 and m["bytes_down"] > 0


def test_bytes_follow_what_each_method_sends(make_config):
    up = {}
    for method in ("fedit", "ffa", "fedsa", "flora"):
        ranks = {"policy": "homogeneous", "rank": 4} if method == "fedit" else {}
        config = make_config(method, federation={"method": method}, ranks=ranks)
        up[method] = run_federation(config)
    # fc1 is 32x16 and fc2 32x32: B is m x r, A is r x n, so B-only uploads exceed A-only ones.
    assert up["ffa"][0]["bytes_up"] < up["fedit"][0]["bytes_up"]
    assert up["fedsa"][0]["bytes_up"] < up["ffa"][0]["bytes_up"]
    # flora sends the whole stack (sum of ranks) back to every client from round 2 on.
    assert up["flora"][1]["bytes_down"] > up["fedit"][1]["bytes_down"]


def test_bfloat16_transport_halves_the_payload(make_config):
    f32 = run_federation(make_config("f32"))[0]
    bf16 = run_federation(make_config("bf16", federation={"transport_dtype": "bfloat16"}))[0]
    assert bf16["bytes_up"] < 0.6 * f32["bytes_up"]
    assert bf16["accuracy"] > 0.3


def test_eval_every_keeps_the_fields_and_always_evaluates_the_last_round(make_config):
    metrics = run_federation(make_config(run={"rounds": 3}, eval={"every": 2, "max_examples": 20}))
    assert [m["accuracy"] is None for m in metrics] == [True, False, False]
    assert all("loss" in m for m in metrics)


def test_sgd_cosine_epochs_sampling_and_policies(make_config):
    config = make_config(
        federation={"num_clients": 6, "sample_count": 3, "method": "flexlora"},
        ranks={"policy": "heavy_tail", "r_min": 2, "r_max": 8},
        train={"optimizer": "sgd", "lr_schedule": "cosine", "local_epochs": 1, "local_steps": 0, "lr": 0.05},
        partition={"scheme": "iid"},
        lora={"scaling": "rslora", "dropout": 0.1},
    )
    metrics = run_federation(config)
    assert all(len(m["clients"]) == 3 for m in metrics)
    assert metrics[0]["clients"] != metrics[1]["clients"]
    assert math.isfinite(metrics[-1]["loss"])
