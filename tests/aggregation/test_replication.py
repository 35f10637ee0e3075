"""replication: component j averaged over the clients that have it, weights renormalised."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate

from .checks import DTYPES, check_delta, check_truncation_hand_back, random_ranks
from .reference import F64, assert_close, random_updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("replication", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_first_components(seed):
    check_truncation_hand_back("replication", seed, random_ranks(seed))


def test_high_components_are_not_diluted():
    # Same set-up as zero_pad's dilution test: here component 2 comes only from the rank-2
    # client and keeps its full size.
    A = torch.eye(2, 3, dtype=torch.float64)
    B = torch.eye(3, 2, dtype=torch.float64)
    ups = [
        ClientUpdate("low", {"w": LoRAFactors(A=A[:1], B=B[:, :1], scale=1.0)}, 5),
        ClientUpdate("high", {"w": LoRAFactors(A=A, B=B, scale=1.0)}, 5),
    ]
    delta = aggregate("replication", ups).delta("w")
    assert delta[1, 1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_homogeneous_ranks_equal_zero_pad_and_fedit(seed, dtype):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True), dtype=dtype)
    rep = aggregate("replication", updates)
    for other in ("zero_pad", "fedit"):
        res = aggregate(other, updates)
        for module in rep.modules:
            assert_close(rep.delta(module), res.delta(module).to(F64), dtype, f"replication vs {other}")
