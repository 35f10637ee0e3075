"""What travels between server and clients, and how many bytes it takes.

Factors are really serialised with :func:`raflora.wire.encode_factors` in the configured dtype and
decoded back, so a bfloat16 transport also rounds the values the receiver uses. Parts that a method
does not send (FFA's frozen ``A``, FedSA's private ``B``) are kept from the sender's copy: the
receiver already holds them (regenerated from the seed, or kept locally).
"""

from __future__ import annotations

from typing import Mapping

from raflora.lora import LoRAFactors
from raflora.wire import decode_factors, encode_factors


def transmit(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> tuple[dict[str, LoRAFactors], int]:
    """``(factors as received, bytes on the wire)``."""
    data = encode_factors(factors, dtype=dtype, parts=parts)
    if dtype == "float32":
        return dict(factors), len(data)
    received = {}
    for module, (A, B, scale, _rank) in decode_factors(data).items():
        sent = factors[module]
        received[module] = LoRAFactors(
            sent.A if A is None else A.to(sent.A.dtype), sent.B if B is None else B.to(sent.B.dtype), sent.scale
        )
    return received, len(data)


def wire_size(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> int:
    return len(encode_factors(factors, dtype=dtype, parts=parts))
