"""fedsa: A averaged (zero padded), B kept per client; delta = sum_i p_i s_i B_i Abar[:r_i]."""

import math

import pytest
import torch

from raflora import aggregate

from .checks import DTYPES, check_delta, random_ranks
from .reference import F64, assert_close, p, padded, random_updates, ref_fedsa


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    check_delta("fedsa", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_shared_a_and_its_own_b(seed):
    ranks = random_ranks(seed)
    updates = random_updates(seed, ranks)
    res = aggregate("fedsa", updates)
    for module in res.modules:
        _, A_bar = padded(updates, module, p(updates), renormalise=False)
        for u in updates:
            own = u.factors[module]
            f = res.client_factors(module, own.rank, scale=own.scale, client_id=u.client_id)
            assert_close(f.A, A_bar[: own.rank], F64, "shared A")
            assert torch.equal(f.B, own.B), "a client keeps its own B untouched"
        # A newcomer (no client_id) gets the shared A and a zero B.
        f = res.client_factors(module, max(ranks), scale=1.0)
        assert_close(f.A, A_bar, F64)
        assert torch.count_nonzero(f.B) == 0
        assert res.download_values(module, 3) == 3 * res.shapes[module][1], "only A travels"


def test_sfed_scale_replaces_client_scales():
    ranks = [2, 4, 8]
    updates = random_updates(4, ranks)
    res = aggregate("fedsa", updates, sfed_alpha=2.0, num_clients=5)
    scales = [2.0 * math.sqrt(5 / r) for r in ranks]
    for module in res.modules:
        assert_close(res.delta(module), ref_fedsa(updates, module, scales=scales), F64)
    # num_clients defaults to the number of accepted updates.
    res = aggregate("fedsa", updates, sfed_alpha=2.0)
    scales = [2.0 * math.sqrt(3 / r) for r in ranks]
    for module in res.modules:
        assert_close(res.delta(module), ref_fedsa(updates, module, scales=scales), F64)
