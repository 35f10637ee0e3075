"""florist: FedAvg product sum, thin SVD, keep the smallest rank whose energy reaches tau."""

import pytest
import torch

from raflora import aggregate

from .checks import DTYPES, check_delta, check_merge_hand_back, random_ranks
from .reference import F64, assert_close, p, product_sum, random_shapes, random_updates


def safe_tau(updates, module, cut: int) -> float:
    """A tau halfway between the cumulative energies at ranks cut and cut + 1, so that the
    reference and the library cannot disagree by rounding at the threshold."""
    S = torch.linalg.svdvals(product_sum(updates, module, p(updates)))
    share = torch.cumsum(S.square(), 0) / S.square().sum()
    return float((share[cut - 1] + share[cut]) / 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_delta_matches_dense_reference(seed, dtype):
    # One module: a tau kept away from one module's energy steps could sit on another's.
    updates = random_updates(seed, random_ranks(seed), shapes=random_shapes(seed, ("w",)), dtype=dtype)
    res = check_delta("florist", updates, dtype, tau=safe_tau(updates, "w", 1))
    assert res.global_rank("w") == 2


@pytest.mark.parametrize("seed", range(3))
def test_kept_rank_is_the_smallest_reaching_tau(seed):
    updates = random_updates(seed, [3, 4, 6], shapes={"w": (12, 10)})
    for cut in (1, 2, 5):
        tau = safe_tau(updates, "w", cut)
        res = aggregate("florist", updates, tau=tau)
        # tau lies strictly between shares at cut and cut + 1, so cut + 1 directions are kept.
        assert res.global_rank("w") == cut + 1
        assert res.download_values("w", 3) == (cut + 1) * (12 + 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_tau_one_equals_flora(seed, dtype):
    updates = random_updates(seed, random_ranks(seed), dtype=dtype)
    florist = aggregate("florist", updates, tau=1.0)
    flora = aggregate("flora", updates)
    for module in florist.modules:
        assert_close(florist.delta(module), flora.delta(module).to(F64), dtype, "tau=1 vs flora")


@pytest.mark.parametrize("seed", range(2))
def test_client_restarts_from_fresh_adapter(seed):
    check_merge_hand_back("florist", seed, random_ranks(seed), tau=0.8)


@pytest.mark.parametrize("tau", [0.0, -0.5, 1.5])
def test_tau_outside_unit_interval_is_refused(tau):
    with pytest.raises(ValueError, match="tau"):
        aggregate("florist", random_updates(0, [2, 4]), tau=tau)
