"""Results live on the device the updates came from (CUDA when available, always the CPU)."""

import pytest
import torch

from raflora import AGGREGATORS, ClientUpdate, LoRAFactors, aggregate

from .reference import assert_close, dense_global, random_updates, ref_delta

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on(device, updates):
    return [
        ClientUpdate(
            u.client_id,
            {m: LoRAFactors(A=f.A.to(device), B=f.B.to(device), scale=f.scale) for m, f in u.factors.items()},
            u.num_examples,
        )
        for u in updates
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", sorted(AGGREGATORS))
def test_every_method_runs_on_the_update_device(method, device):
    ranks = [4, 4, 4] if method == "fedit" else [2, 4, 3]
    updates = random_updates(6, ranks, dtype=torch.float32, frozen_a_seed=0)
    options = {"tau": 0.95} if method == "florist" else {}
    res = aggregate(method, on(device, updates), **options)
    for module in res.modules:
        delta = dense_global(res, module)
        assert delta.device.type == device
        assert res.singular_values(module).device.type == device
        f = res.client_factors(module, 3, scale=1.0)
        assert f.A.device.type == device and f.B.device.type == device
        if method != "florist":  # florist's truncation point is exercised in test_florist
            assert_close(delta.cpu(), ref_delta(method, updates, module), torch.float32)
