"""raflora.wire: safetensors round trip of client factors and the bf16 transport."""

import pytest
import torch

from raflora import LoRAFactors
from raflora.wire import decode_factors, encode_factors


def factors():
    g = torch.Generator().manual_seed(0)
    return {
        "model.layers.0.self_attn.q_proj": LoRAFactors(
            A=torch.randn(4, 32, generator=g), B=torch.randn(24, 4, generator=g), scale=0.5
        ),
        "model.layers.0.self_attn.v_proj": LoRAFactors(
            A=torch.randn(2, 32, generator=g), B=torch.randn(24, 2, generator=g), scale=8 / 3
        ),
    }


def test_float32_round_trip_is_exact():
    sent = factors()
    got = decode_factors(encode_factors(sent))
    assert set(got) == set(sent)
    for name, f in sent.items():
        A, B, scale, rank = got[name]
        assert torch.equal(A, f.A) and torch.equal(B, f.B)
        assert scale == f.scale and rank == f.rank


def test_bfloat16_halves_the_tensor_bytes_and_stays_close():
    sent = factors()
    full = encode_factors(sent, "float32")
    half = encode_factors(sent, "bfloat16")
    tensor_bytes = sum(f.A.numel() + f.B.numel() for f in sent.values()) * 4
    # Both payloads carry the same header-sized overhead; the tensors take half the bytes.
    assert len(full) - len(half) == pytest.approx(tensor_bytes / 2, abs=64)
    got = decode_factors(half, dtype=torch.float32)
    for name, f in sent.items():
        A, B, scale, _ = got[name]
        assert A.dtype == torch.float32
        assert torch.allclose(A, f.A, rtol=1e-2, atol=1e-2) and torch.allclose(B, f.B, rtol=1e-2, atol=1e-2)
        assert scale == f.scale, "the scale travels as text, never rounded to bf16"


@pytest.mark.parametrize("parts, has_a, has_b", [("A", True, False), ("B", False, True), ("AB", True, True)])
def test_parts_select_what_travels(parts, has_a, has_b):
    sent = factors()
    got = decode_factors(encode_factors(sent, parts=parts))
    for name, f in sent.items():
        A, B, _, rank = got[name]
        assert (A is not None) == has_a and (B is not None) == has_b
        assert rank == f.rank, "rank travels even when the factor carrying it does not"


def test_unknown_transport_dtype():
    with pytest.raises(ValueError, match="transport dtype"):
        encode_factors(factors(), "int8")
