"""rb_lora: rank-balanced factor average (each component over the clients that have it), SVD start."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate

from .checks import DTYPES, check_delta, check_svd_hand_back, check_svd_hand_back_stays_trainable, random_ranks
from .reference import F64, assert_close, random_updates


@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype, balanced):
    updates = random_updates(seed, random_ranks(seed), dtype=dtype)
    check_delta("rb_lora", updates, dtype, rank_balanced=balanced)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_client_gets_best_rank_r_approximation(seed, dtype):
    check_svd_hand_back("rb_lora", seed, random_ranks(seed), dtype)


def test_dead_directions_stay_trainable():
    check_svd_hand_back_stays_trainable("rb_lora")


def test_column_weights_undo_the_dilution_on_both_factors():
    # Component 2 is held by the rank-2 client only (p = 1/4): zero padding keeps 1/16 of it
    # (1/4 on each factor), the code's column weight 1 / (1/4) on both factors keeps it whole.
    A = torch.eye(2, 3, dtype=F64)
    B = torch.eye(3, 2, dtype=F64)
    ups = [
        ClientUpdate("low", {"w": LoRAFactors(A=A[:1], B=B[:, :1], scale=1.0)}, 30),
        ClientUpdate("high", {"w": LoRAFactors(A=A, B=B, scale=1.0)}, 10),
    ]
    assert aggregate("rb_lora", ups).delta("w")[1, 1].item() == pytest.approx(1.0)
    assert aggregate("rb_lora", ups, rank_balanced=False).delta("w")[1, 1].item() == pytest.approx(1 / 16)


@pytest.mark.parametrize("seed", range(3))
def test_homogeneous_ranks_give_fedit_with_an_svd_start(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    rb, fedit = aggregate("rb_lora", updates), aggregate("fedit", updates)
    for m in rb.modules:
        assert_close(rb.delta(m), fedit.delta(m), F64, m)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_rank_balanced_must_be_a_bool(value):
    with pytest.raises(ValueError, match="rb_lora: rank_balanced"):
        aggregate("rb_lora", random_updates(0, [2, 4]), rank_balanced=value)
