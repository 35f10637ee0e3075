"""zero_pad: zero-padded FedAvg of (s_i B_i, A_i), delta = B_avg @ A_avg."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate

from .checks import DTYPES, check_delta, check_truncation_hand_back, random_ranks
from .reference import random_updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("zero_pad", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_first_components(seed):
    check_truncation_hand_back("zero_pad", seed, random_ranks(seed))


def test_high_components_are_diluted_by_low_rank_clients():
    # Two equal-weight clients, ranks 1 and 2, identical leading component: component 2 is
    # averaged with a zero, so it shrinks by q_2 = 1/2 in B and in A (1/4 in the product).
    A = torch.eye(2, 3, dtype=torch.float64)
    B = torch.eye(3, 2, dtype=torch.float64)
    ups = [
        ClientUpdate("low", {"w": LoRAFactors(A=A[:1], B=B[:, :1], scale=1.0)}, 5),
        ClientUpdate("high", {"w": LoRAFactors(A=A, B=B, scale=1.0)}, 5),
    ]
    delta = aggregate("zero_pad", ups).delta("w")
    assert delta[0, 0].item() == pytest.approx(1.0)
    assert delta[1, 1].item() == pytest.approx(0.25)
