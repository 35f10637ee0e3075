"""The rescaled float64 fallbacks give the dense float64 answer where the plain computation fails
(finite factors near the top of float32, whose column norms overflow inside the QR)."""

from __future__ import annotations

import math

import pytest
import torch

from raflora.aggregation.numerics import (
    NumericalFailure,
    log2_norm,
    log2_product_norm,
    stable_singular_values,
    stable_svd,
    stable_svdvals,
    stable_top_svd,
)
from raflora.lora import product_svd

F64 = torch.float64


def near_the_top():
    """float32 factors: B's entries up to 2e38 (finite), A's about 1e-36: the product is ordinary."""
    g = torch.Generator().manual_seed(0)
    B = torch.rand(40, 4, generator=g, dtype=F64) * 2e38
    A = torch.randn(4, 30, generator=g, dtype=F64) * 1e-36
    return B.float(), A.float()


def test_plain_svd_fails_there():
    B, A = near_the_top()
    with pytest.raises(torch.linalg.LinAlgError):
        product_svd(B, A)


def test_stable_svd_matches_the_dense_float64_svd():
    B, A = near_the_top()
    dense = B.to(F64) @ A.to(F64)
    expected = torch.linalg.svdvals(dense)
    U, S, V = stable_svd(B, A)
    assert S.dtype == torch.float32 and U.dtype == torch.float32
    assert torch.allclose(S.to(F64), expected[: S.shape[0]], rtol=1e-5)
    rebuilt = (U.to(F64) * S.to(F64)) @ V.to(F64).T
    assert float(torch.linalg.norm(rebuilt - dense)) <= 1e-5 * float(torch.linalg.norm(dense))
    assert torch.allclose(stable_singular_values(B, A).to(F64), expected[:4], rtol=1e-5)


def test_stable_top_svd_gives_the_best_rank_2_approximation():
    B, A = near_the_top()
    dense = B.to(F64) @ A.to(F64)
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    best = (U[:, :2] * S[:2]) @ Vh[:2]
    BAV, S_got, V = stable_top_svd(B, A, top=2)
    approx = BAV.to(F64) @ V.to(F64).T
    assert float(torch.linalg.norm(approx - best)) <= 1e-5 * float(torch.linalg.norm(best))


def test_stable_svdvals_refuses_what_float32_cannot_hold_instead_of_returning_inf():
    B, _ = near_the_top()
    assert not torch.isfinite(torch.linalg.svdvals(B)).all()  # sigma_1 = 1.3e39 > float32's 3.4e38
    with pytest.raises(NumericalFailure):
        stable_svdvals(B)
    smaller = B / 10
    assert torch.allclose(stable_svdvals(smaller).to(F64), torch.linalg.svdvals(smaller.to(F64)), rtol=1e-5)


def test_a_result_beyond_the_range_is_a_numerical_failure():
    B = torch.full((5, 2), 1e30, dtype=torch.float32)
    A = torch.full((2, 5), 1e30, dtype=torch.float32)
    with pytest.raises(NumericalFailure):
        stable_singular_values(B, A)


def test_log_norms_never_overflow():
    B = torch.full((3, 2), 1e300, dtype=F64)
    A = torch.full((2, 4), 1e300, dtype=F64)
    # ||B A||_F = 1e600 * 2 * sqrt(12): far beyond float64, exact as a logarithm.
    assert math.isclose(log2_product_norm(B, A, 0.5), 600 * math.log2(10) + math.log2(math.sqrt(12)), rel_tol=1e-12)
    assert math.isclose(log2_norm(B), 300 * math.log2(10) + math.log2(math.sqrt(6)), rel_tol=1e-12)
    assert log2_product_norm(torch.zeros(3, 2), A) == -math.inf
