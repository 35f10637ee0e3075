"""lora_fair: FedAvg of the factors, B corrected on the server towards the ideal update."""

import pytest
import torch

from raflora import ClientUpdate, LoRAFactors, aggregate

from .checks import DTYPES, check_delta, random_ranks
from .reference import F64, assert_close, p, padded, product_sum, random_updates


def cosine(x, y):
    return float((x * y).sum() / (torch.linalg.norm(x) * torch.linalg.norm(y)))


@pytest.mark.parametrize("homogeneous", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(3))
def test_delta_matches_dense_reference(seed, dtype, homogeneous):
    updates = random_updates(seed, random_ranks(seed, homogeneous=homogeneous), dtype=dtype)
    check_delta("lora_fair", updates, dtype)


@pytest.mark.parametrize("options", [{"lam": 0.0, "steps": 7}, {"lam": 1.0, "steps": 30, "step_size": 1.0}])
def test_options_match_dense_reference(options):
    check_delta("lora_fair", random_updates(5, [3, 3, 3]), F64, **options)


@pytest.mark.parametrize("seed", range(3))
def test_no_steps_is_fedit(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    fair, fedit = aggregate("lora_fair", updates, steps=0), aggregate("fedit", updates)
    for m in fair.modules:
        assert torch.equal(fair.delta(m), fedit.delta(m))


@pytest.mark.parametrize("seed", range(3))
def test_correction_moves_towards_the_ideal_update_and_keeps_a(seed):
    updates = random_updates(seed, random_ranks(seed, homogeneous=True))
    res = aggregate("lora_fair", updates)
    for m in res.modules:
        B0, A0 = padded(updates, m, p(updates), renormalise=False)
        ideal = product_sum(updates, m, p(updates))
        assert torch.equal(res.delta_factors(m).A, A0.to(res.delta_factors(m).A.dtype))
        assert cosine(res.delta(m), ideal) > cosine(B0 @ A0, ideal)


def test_clients_sharing_a_need_no_correction():
    # Equal A: the product of averages is the average of products (cos = 1), so dB = 0.
    g = torch.Generator().manual_seed(0)
    A = torch.randn((3, 6), generator=g, dtype=F64)
    ups = [
        ClientUpdate(i, {"w": LoRAFactors(A=A, B=torch.randn((5, 3), generator=g, dtype=F64), scale=2.0)}, 1 + i)
        for i in range(3)
    ]
    assert_close(aggregate("lora_fair", ups).delta("w"), product_sum(ups, "w", p(ups)), F64, "shared A")


def test_client_starts_from_the_corrected_pair():
    updates = random_updates(2, [4, 4, 4])
    res = aggregate("lora_fair", updates)
    for m in res.modules:
        global_update = res.delta_factors(m)
        A, B = global_update.A, global_update.B
        f = res.client_factors(m, 4, scale=0.5)
        assert torch.equal(f.A, A) and torch.allclose(f.B * 0.5, B, rtol=1e-15, atol=0)
        assert_close(f.scale * f.B @ f.A, res.delta(m), F64, m)


@pytest.mark.parametrize(
    "options",
    [{"lam": -1.0}, {"lam": float("nan")}, {"steps": -1}, {"steps": 1.5}, {"step_size": 0.0}, {"step_size": 2.0}],
)
def test_bad_options_name_the_option(options):
    (name,) = options
    with pytest.raises(ValueError, match=f"lora_fair: {name}"):
        aggregate("lora_fair", random_updates(0, [2, 2]), **options)
