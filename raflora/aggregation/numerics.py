"""Safety nets for the server's arithmetic on finite but extreme factors.

Every value of an accepted update is finite, yet ``1e20`` factors in float32 (or ``1e160`` in
float64) overflow inside a Gram product or a Householder QR, and LAPACK then raises
``torch.linalg.LinAlgError`` or returns NaN. Scaling a matrix by a power of two is exact, and the
singular values, norms and ``B A V`` products used here are homogeneous in each factor, so each
helper first tries the plain computation and, when it fails, repeats it on the factors rescaled to
``max |x| = 1`` in float64 and scales the homogeneous outputs back. Magnitudes are compared as
base-2 logarithms (:func:`log2_product_norm`), which never overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from raflora.lora import numerical_rank, product_frobenius_norm, product_singular_values, product_svd, product_top_svd


class NumericalFailure(ArithmeticError):
    """A result that no rescaling makes representable in its dtype (its values exceed the range)."""


def all_finite(t: Tensor) -> bool:
    # One fused pass: min and max propagate NaN and are +-Inf when any value is (isfinite(t).all()
    # makes three elementwise passes and a bool tensor).
    if t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _exponent(t: Tensor) -> int:
    """``e`` with ``max |t| * 2**-e`` in ``[0.5, 1)`` (0 for an all-zero tensor)."""
    peak = float(t.abs().max()) if t.numel() else 0.0
    return math.frexp(peak)[1] if peak > 0.0 else 0


def _unit(t: Tensor) -> tuple[Tensor, int]:
    """``t`` in float64 scaled by an exact power of two to ``max |t| < 1``, and that power."""
    e = _exponent(t)
    return torch.ldexp(t.to(torch.float64), torch.tensor(-e, dtype=torch.float64, device=t.device)), e


def _back(t: Tensor, e: int, dtype: torch.dtype) -> Tensor:
    """``t * 2**e`` in ``dtype``; NumericalFailure when it does not fit."""
    out = torch.ldexp(t, torch.tensor(e, dtype=torch.float64, device=t.device)).to(dtype)
    if not all_finite(out):
        raise NumericalFailure(f"values of about 2^{e} do not fit in {dtype}")
    return out


def _fails(*outputs: Tensor) -> bool:
    return not all(all_finite(t) for t in outputs)


def _usable(value: float) -> bool:
    # The plain computation's answer, unless it overflowed (inf, NaN) or underflowed (0): only then
    # are the float64 copy and the rescaling worth their passes over the factors.
    return math.isfinite(value) and value > 0.0


def log2_norm(t: Tensor) -> float:
    """``log2 ||t||_F`` (``-inf`` for zeros), without overflow or underflow."""
    plain = float(torch.linalg.norm(t))
    if _usable(plain):
        return math.log2(plain)
    unit, e = _unit(t)
    norm = float(torch.linalg.norm(unit))
    return math.log2(norm) + e if norm > 0.0 else -math.inf


def log2_product_norm(B: Tensor, A: Tensor, scale: float = 1.0) -> float:
    """``log2 ||scale B A||_F`` from the factors (:func:`raflora.lora.product_frobenius_norm` on the
    rescaled factors), ``-inf`` when the product is zero."""
    plain = float(product_frobenius_norm(B, A)) * abs(scale)
    if _usable(plain):
        return math.log2(plain)
    Bu, eb = _unit(B)
    Au, ea = _unit(A)
    norm = float(product_frobenius_norm(Bu, Au)) * abs(scale)
    return math.log2(norm) + eb + ea if norm > 0.0 else -math.inf


def fits(log2_value: float, dtype: torch.dtype) -> bool:
    """Whether a norm of ``2**log2_value`` (and so every value below it) is finite in ``dtype``."""
    return log2_value < math.log2(torch.finfo(dtype).max)


def _plain_or_rescaled(compute, *factors: Tensor) -> tuple[tuple, int | None]:
    """``(compute(*factors), None)``; when that raises a LinAlgError or gives a non-finite value,
    ``(compute(*unit copies), e)``: the factors rescaled to unit scale in float64, ``2**e`` the
    scale the outputs that carry it must be multiplied back by (:func:`_back`)."""
    try:
        out = compute(*factors)
        out = out if isinstance(out, tuple) else (out,)
        if not _fails(*out):
            return out, None
    except torch.linalg.LinAlgError:
        pass
    units = [_unit(t) for t in factors]
    out = compute(*(u for u, _ in units))
    return (out if isinstance(out, tuple) else (out,)), sum(e for _, e in units)


def stable_svd(B: Tensor, A: Tensor, top: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`raflora.lora.product_svd`, with the rescaled float64 fallback (``S`` scales back)."""
    (U, S, V), e = _plain_or_rescaled(lambda b, a: product_svd(b, a, top), B, A)
    if e is None:
        return U, S, V
    return U.to(B.dtype), _back(S, e, B.dtype), V.to(B.dtype)


def stable_top_svd(B: Tensor, A: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`raflora.lora.product_top_svd`, with the rescaled float64 fallback (``B A V`` and ``S``
    scale back, ``V`` does not)."""
    (BAV, S, V), e = _plain_or_rescaled(lambda b, a: product_top_svd(b, a, top), B, A)
    if e is None:
        return BAV, S, V
    return _back(BAV, e, B.dtype), _back(S, e, B.dtype), V.to(B.dtype)


def dense_top_svd(D: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`raflora.lora.product_top_svd`'s ``(B A V, S, V)`` for a dense ``D`` (one SVD of
    ``D``; ``V.T`` comes out row-major)."""
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    t = min(top, numerical_rank(S, *D.shape))
    # A copy of the t rows: a view would keep the whole n x n Vh alive in the result's cache.
    return U[:, :t] * S[:t], S, Vh[:t].clone().T


def stable_dense_top_svd(D: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`dense_top_svd`, with the rescaled float64 fallback."""
    (BAV, S, V), e = _plain_or_rescaled(lambda d: dense_top_svd(d, top), D)
    if e is None:
        return BAV, S, V
    return _back(BAV, e, D.dtype), _back(S, e, D.dtype), V.to(D.dtype)


def stable_singular_values(B: Tensor, A: Tensor) -> Tensor:
    """:func:`raflora.lora.product_singular_values`, with the rescaled float64 fallback."""
    (S,), e = _plain_or_rescaled(product_singular_values, B, A)
    return S if e is None else _back(S, e, B.dtype)


def stable_svdvals(A: Tensor) -> Tensor:
    """``torch.linalg.svdvals(A)``, with the rescaled float64 fallback."""
    (S,), e = _plain_or_rescaled(torch.linalg.svdvals, A)
    return S if e is None else _back(S, e, A.dtype)


__all__ = [
    "NumericalFailure",
    "all_finite",
    "fits",
    "log2_norm",
    "log2_product_norm",
    "stable_dense_top_svd",
    "stable_singular_values",
    "stable_svd",
    "stable_svdvals",
    "stable_top_svd",
]
