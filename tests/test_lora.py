"""raflora.lora: factor algebra, scales, stacked SVD, energy metrics, seeded inits and padding."""

import math

import pytest
import torch

from raflora import LoRAFactors, energy_by_partition, energy_ratio, fresh_factors, init_a, lora_scale, product_svd
from raflora.lora import (
    LowRank,
    numerical_rank,
    pad_factors,
    product_frobenius_norm,
    product_singular_values,
    product_top_svd,
)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def test_factors_shape_rank_and_delta():
    A, B = rand(3, 7), rand(5, 3, seed=1)
    f = LoRAFactors(A=A, B=B, scale=0.25)
    assert f.rank == 3 and f.shape == (5, 7) and f.num_values() == 3 * (5 + 7)
    assert torch.allclose(f.delta(), 0.25 * torch.einsum("ij,jk->ik", B, A))


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_lora_scale(rank):
    assert lora_scale("lora", 16.0, rank) == pytest.approx(16.0 / rank)
    assert lora_scale("rslora", 16.0, rank) == pytest.approx(16.0 / math.sqrt(rank))
    assert lora_scale("sfed", 2.0, rank, num_clients=9) == pytest.approx(2.0 * math.sqrt(9 / rank))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: lora_scale("lora", 8.0, 0), "rank"),
        (lambda: lora_scale("dora", 8.0, 4), "unknown scaling"),
        (lambda: lora_scale("sfed", 8.0, 4), "num_clients"),
        (lambda: lora_scale("sfed", 8.0, 4, num_clients=0), "num_clients"),
    ],
)
def test_lora_scale_refuses_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# Stacks wider than m or n (k > min(m, n)) are the usual case for flora's sum of ranks.
SVD_SHAPES = [(9, 7, 3), (6, 11, 4), (5, 4, 9), (12, 12, 12), (8, 3, 1)]


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("m, n, k", SVD_SHAPES)
def test_product_svd_matches_dense_svd(m, n, k, dtype, tol):
    B, A = rand(m, k, seed=m, dtype=dtype), rand(k, n, seed=n + 100, dtype=dtype)
    dense = B.to(F64) @ A.to(F64)
    U, S, V = product_svd(B, A)
    s = min(m, n, k)
    assert U.shape == (m, s) and S.shape == (s,) and V.shape == (n, s)
    expected = torch.linalg.svdvals(dense)
    assert torch.allclose(S.to(F64), expected[:s], rtol=0, atol=tol * float(expected[0]))
    assert float(expected[s:].abs().sum()) <= tol * float(expected[0])
    recon = (U.to(F64) * S.to(F64)) @ V.to(F64).T
    assert torch.linalg.norm(recon - dense) <= tol * torch.linalg.norm(dense)
    eye = torch.eye(s, dtype=F64)
    assert torch.allclose(U.to(F64).T @ U.to(F64), eye, atol=tol)
    assert torch.allclose(V.to(F64).T @ V.to(F64), eye, atol=tol)
    assert torch.allclose(product_singular_values(B, A).to(F64), S.to(F64), rtol=0, atol=tol * float(S[0]))


def test_product_svd_top_keeps_leading_vectors():
    B, A = rand(10, 6, seed=3), rand(6, 8, seed=4)
    U, S, V = product_svd(B, A)
    Ut, St, Vt = product_svd(B, A, top=2)
    assert Ut.shape == (10, 2) and Vt.shape == (8, 2) and torch.equal(St, S)
    # Columns are determined up to sign; compare the rank-2 reconstruction instead.
    assert torch.allclose((Ut * St[:2]) @ Vt.T, (U[:, :2] * S[:2]) @ V[:, :2].T, atol=1e-12)


def best_rank(dense, r):
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("m, n, k", SVD_SHAPES + [(40, 30, 12)])
@pytest.mark.parametrize("top", [1, 2, 5, 50])
def test_product_top_svd_is_the_best_rank_top_approximation(m, n, k, top, dtype, tol):
    B, A = rand(m, k, seed=m, dtype=dtype), rand(k, n, seed=n + 100, dtype=dtype)
    dense = B.to(F64) @ A.to(F64)
    BAV, S, V = product_top_svd(B, A, top)
    s = min(m, n, k)
    t = min(top, s)
    assert BAV.shape == (m, t) and S.shape == (s,) and V.shape == (n, t)
    assert BAV.dtype == V.dtype == S.dtype == dtype
    assert torch.allclose(S.to(F64), torch.linalg.svdvals(dense)[:s], rtol=0, atol=tol * float(S[0]))
    assert torch.allclose(V.to(F64).T @ V.to(F64), torch.eye(t, dtype=F64), atol=tol)
    # BAV holds U_t S_t: B @ A @ V, and the product is the Eckart-Young truncation.
    assert torch.linalg.norm(BAV.to(F64) - dense @ V.to(F64)) <= tol * torch.linalg.norm(dense)
    ref = best_rank(dense, t)
    assert torch.linalg.norm(BAV.to(F64) @ V.to(F64).T - ref) <= tol * torch.linalg.norm(ref)
    # Same R factors and core as product_svd: the same singular values.
    assert torch.allclose(S, product_svd(B, A)[1], rtol=0, atol=tol * float(S[0]))


def test_product_top_svd_of_rank_deficient_and_zero_stacks():
    # Identical A rows and zero B columns (a fresh client's B = 0) leave delta of rank 2 in a stack of 6.
    a, b = rand(2, 9, seed=1), rand(11, 2, seed=2)
    B = torch.cat([b, b, torch.zeros(11, 2, dtype=F64)], 1)
    A = torch.cat([a, a, rand(2, 9, seed=3)])
    BAV, S, V = product_top_svd(B, A, 4)
    dense = B @ A
    assert float(S[2:].abs().max()) <= 1e-12 * float(S[0])
    # Only the 2 numerically non-zero directions come back: the others have no defined vectors.
    assert BAV.shape == (11, 2) and V.shape == (9, 2) and numerical_rank(S, 11, 9) == 2
    assert torch.allclose(BAV @ V.T, dense, atol=1e-12)
    assert torch.allclose(V.T @ V, torch.eye(2, dtype=F64), atol=1e-12)
    BAV, S, V = product_top_svd(torch.zeros(11, 3, dtype=F64), A[:3], 2)
    assert torch.count_nonzero(S) == 0 and BAV.shape == (11, 0) and V.shape == (9, 0)


def test_numerical_rank_uses_matrix_rank_tolerance():
    M = rand(12, 5, seed=4) @ rand(5, 8, seed=5)  # rank 5
    S = torch.linalg.svdvals(M)
    assert numerical_rank(S, 12, 8) == int(torch.linalg.matrix_rank(M)) == 5
    assert numerical_rank(torch.zeros(3, dtype=F64), 4, 4) == 0
    assert numerical_rank(torch.zeros(0, dtype=F64), 4, 4) == 0


@pytest.mark.parametrize("m, n, k", SVD_SHAPES)
def test_product_frobenius_norm(m, n, k):
    B, A = rand(m, k, seed=1), rand(k, n, seed=2)
    assert float(product_frobenius_norm(B, A)) == pytest.approx(float(torch.linalg.norm(B @ A)), rel=1e-12)


def test_energy_ratio_known_values():
    s = [3.0, 1.0, 2.0]  # unsorted on purpose: energy is taken from the largest values first
    assert energy_ratio(s, 1) == pytest.approx(9 / 14)
    assert energy_ratio(torch.tensor(s), 2) == pytest.approx(13 / 14)
    assert energy_ratio(s, 0) == 0.0
    assert energy_ratio(s, 10) == pytest.approx(1.0)
    assert math.isnan(energy_ratio([0.0, 0.0], 1))
    with pytest.raises(ValueError, match="r must be"):
        energy_ratio(s, -1)


def test_energy_by_partition_known_values():
    s = [4.0, 3.0, 2.0, 1.0, 1.0]  # energies 16, 9, 4, 1, 1 (total 31)
    shares = energy_by_partition(s, [4, 2])
    assert list(shares) == ["1-2", "3-4", "5+"]
    assert shares["1-2"] == pytest.approx(25 / 31)
    assert shares["3-4"] == pytest.approx(5 / 31)
    assert shares["5+"] == pytest.approx(1 / 31)
    assert all(math.isnan(v) for v in energy_by_partition([0.0], [1]).values())
    with pytest.raises(ValueError, match="rank levels"):
        energy_by_partition(s, [0, 2])
    with pytest.raises(ValueError, match="rank levels"):
        energy_by_partition(s, [])


def test_partition_keys_of_runs_with_different_levels_sort_in_one_order():
    from raflora.lora import partition_order

    # the ties of the first direction come in the wrong order: sorting must not depend on it
    keys = ["9-16", "17+", "1-16", "3-4", "1-2", "5-8", "17-32", "33+"]
    assert sorted(keys, key=partition_order) == ["1-2", "1-16", "3-4", "5-8", "9-16", "17-32", "17+", "33+"]


def test_init_a_is_nested_seeded_and_bounded():
    big = init_a("layers.0.q_proj", 16, 50, seed=3)
    for r in (1, 5, 16):
        assert torch.equal(init_a("layers.0.q_proj", r, 50, seed=3), big[:r])
    assert torch.equal(init_a("layers.0.q_proj", 16, 50, seed=3), big), "deterministic"
    assert not torch.equal(init_a("layers.0.v_proj", 16, 50, seed=3), big), "per module"
    assert not torch.equal(init_a("layers.0.q_proj", 16, 50, seed=4), big), "per seed"
    assert big.dtype == torch.float32 and big.shape == (16, 50)
    assert float(big.abs().max()) <= 1 / math.sqrt(50)
    assert torch.linalg.matrix_rank(big) == 16
    # The float64 draw is the same numbers, only more digits.
    assert torch.allclose(init_a("layers.0.q_proj", 16, 50, 3, F64).float(), big)


def test_init_a_nesting_holds_at_model_sizes():
    # FFA's exactness rests on nesting; check it where the draw is large (hidden size 4096).
    big = init_a("model.layers.3.mlp.down_proj", 64, 4096)
    assert torch.equal(init_a("model.layers.3.mlp.down_proj", 8, 4096), big[:8])


def test_fresh_factors_start_at_zero():
    f = fresh_factors("w", 6, 5, 3, scale=2.0, seed=1)
    assert f.scale == 2.0 and f.shape == (6, 5) and f.rank == 3
    assert torch.count_nonzero(f.B) == 0 and torch.equal(f.A, init_a("w", 3, 5, 1))


def test_pad_factors_extends_without_changing_the_product():
    A, B = rand(3, 7), rand(5, 3, seed=1)
    padded = pad_factors("w", LowRank(A=A, B=B), 5, seed=2)
    A5, B5 = padded.A, padded.B
    assert A5.shape == (5, 7) and B5.shape == (5, 5)
    assert torch.equal(A5[:3], A) and torch.equal(B5[:, :3], B)
    assert torch.count_nonzero(B5[:, 3:]) == 0
    assert torch.equal(A5[3:], init_a("w", 5, 7, 2, F64)[3:]), "new rows are trainable seeded rows"
    assert torch.allclose(B5 @ A5, B @ A, rtol=0, atol=0)


def test_pad_factors_truncates_to_leading_components():
    A, B = rand(4, 7), rand(5, 4, seed=1)
    padded = pad_factors("w", LowRank(A=A, B=B), 2)
    A2, B2 = padded.A, padded.B
    assert torch.equal(A2, A[:2]) and torch.equal(B2, B[:, :2])


def test_low_rank_takes_a_then_b_by_keyword_and_is_never_unpacked():
    A, B = rand(2, 5), rand(4, 2, seed=1)
    f = LowRank(A=A, B=B)
    assert f.A is A and f.B is B and f.rank == 2 and f.dtype == F64
    assert torch.equal(f.dense(), B @ A)
    with pytest.raises(TypeError):
        LowRank(A, B)  # positional: the order that LoRAFactors and the old LowRank disagreed on
    with pytest.raises(TypeError):
        _, _ = f  # unpacking would tell the factors apart by position
    copy = f.clone()
    assert type(copy) is LowRank and torch.equal(copy.A, A) and copy.A is not A
