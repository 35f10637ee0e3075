"""ffa: A frozen at init_a(module, r, n, seed); delta = sum_i p_i s_i B_i A0[:r_i]."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, NoValidUpdates, aggregate, init_a

from .checks import DTYPES, check_delta, check_truncation_hand_back, random_ranks
from .reference import F64, assert_close, random_updates, ref_delta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    updates = random_updates(seed, random_ranks(seed), dtype=dtype, frozen_a_seed=0)
    check_delta("ffa", updates, dtype)


def test_delta_is_exact_product_sum():
    # With a shared A, averaging B is exact: delta equals the FedAvg of the clients' products.
    updates = random_updates(3, [2, 5, 3], frozen_a_seed=0)
    res = aggregate("ffa", updates)
    for module in res.modules:
        assert_close(res.delta(module), ref_delta("flexlora", updates, module), F64)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_first_components(seed):
    check_truncation_hand_back("ffa", seed, random_ranks(seed), frozen_a_seed=0)


def test_client_a_is_the_frozen_init():
    updates = random_updates(1, [2, 4], frozen_a_seed=7)
    res = aggregate("ffa", updates, seed=7)
    for module, (m, n) in res.shapes.items():
        for r in (2, 4, 6):  # 6 > r_max: the padded rows must continue the same frozen init
            f = res.client_factors(module, r, scale=1.0)
            assert torch.equal(f.A, init_a(module, r, n, 7, F64))
        assert res.download_values(module, 4) == 4 * m, "only B travels"


def test_client_that_trained_a_is_refused():
    updates = random_updates(2, [2, 4, 4], frozen_a_seed=0)
    moved = updates[1].factors["v_proj"]
    updates[1] = ClientUpdate(
        "c1",
        {**updates[1].factors, "v_proj": LoRAFactors(A=moved.A + 0.5, B=moved.B, scale=moved.scale)},
        updates[1].num_examples,
    )
    res = aggregate("ffa", updates)
    assert [(cid, module) for cid, module, _ in res.rejected] == [("c1", "v_proj")]
    assert "'c1'" in res.rejected[0][2] and "frozen" in res.rejected[0][2]
    kept = [updates[0], updates[2]]
    for module in res.modules:
        assert_close(res.delta(module), ref_delta("ffa", kept, module), F64)


def test_wrong_seed_refuses_everyone():
    updates = random_updates(2, [2, 4], frozen_a_seed=0)
    with pytest.raises(NoValidUpdates, match="frozen"):
        aggregate("ffa", updates, seed=1)
