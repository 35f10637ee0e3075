"""fedsa: A averaged (zero padded) and shared; B stays with each client (the server never holds it)."""

import math

import pytest
import torch

from raflora import aggregate
from raflora.aggregation import AGGREGATORS

from .checks import DTYPES, check_delta, random_ranks
from .reference import F64, assert_close, p, padded, random_updates


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_shared_a_matches_dense_reference(seed, dtype):
    check_delta("fedsa", random_updates(seed, random_ranks(seed), dtype=dtype), dtype)


def test_the_server_has_no_global_update():
    res = aggregate("fedsa", random_updates(0, [2, 4]))
    with pytest.raises(ValueError, match="keeps its own B"):
        res.delta_factors("q_proj")


@pytest.mark.parametrize("seed", range(3))
def test_client_gets_shared_a_and_puts_back_its_own_b(seed):
    ranks = random_ranks(seed)
    updates = random_updates(seed, ranks)
    res = aggregate("fedsa", updates)
    method = res.method
    for module in res.modules:
        _, A_bar = padded(updates, module, p(updates), renormalise=False)
        for u in updates:
            own = u.factors[module]
            received = res.client_factors(module, own.rank, scale=own.scale)
            assert torch.count_nonzero(received.B) == 0, "the server sends no B"
            kept = method.client_keeps({module: own})
            f = method.client_start({module: received}, kept)[module]
            assert_close(f.A, A_bar[: own.rank], F64, "shared A")
            assert torch.equal(f.B, own.B), "a client puts its own B back untouched"
        # A newcomer (nothing kept) starts from the shared A and a zero B.
        f = method.client_start({module: res.client_factors(module, max(ranks), scale=1.0)}, None)[module]
        assert_close(f.A, A_bar, F64)
        assert torch.count_nonzero(f.B) == 0
        assert res.download_values(module, 3) == 3 * res.shapes[module][1], "only A travels"


def test_sfed_scale_is_the_clients_scale():
    method = AGGREGATORS["fedsa"](sfed_alpha=2.0).bind([2, 4, 8], num_sampled=5)
    for r in (2, 4, 8):
        assert method.scale_for(r, 99.0) == pytest.approx(2.0 * math.sqrt(5 / r))
    assert AGGREGATORS["fedsa"]().scale_for(4, 99.0) == 99.0, "without sfed_alpha the config's scale stays"
    with pytest.raises(ValueError, match="sfed_alpha must be in"):
        AGGREGATORS["fedsa"](sfed_alpha=-1.0)
