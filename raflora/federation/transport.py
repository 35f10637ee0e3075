"""What travels between server and clients, and how many bytes it takes.

Factors are really serialised with :func:`raflora.wire.encode_factors` in the configured dtype and
decoded back, so a bfloat16 transport also rounds the values the receiver uses. Parts that a method
does not send (FFA's frozen ``A``, FedSA's private ``B``) are kept from the sender's copy: the
receiver already holds them (regenerated from the seed, or kept locally).

:func:`pack` and :func:`receive` (or :func:`unpack`) are the two halves of :func:`transmit`, for
runtimes where sender and receiver are different processes (the Flower runtime ships the packet's ``wire`` bytes and,
untouched and uncounted, the ``held`` parts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from raflora.lora import LoRAFactors
from raflora.wire import decode_factors, encode_factors


@dataclass
class Packet:
    wire: bytes                          # the serialised factors: these bytes are counted
    held: dict[str, dict[str, Tensor]]   # module -> {"A"/"B": the part the receiver already holds}


def pack(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> Packet:
    held = {m: {p: getattr(f, p) for p in "AB" if p not in parts} for m, f in factors.items()}
    return Packet(encode_factors(factors, dtype=dtype, parts=parts), held)


def unpack(packet: Packet, factor_dtype: torch.dtype = torch.float32) -> dict[str, LoRAFactors]:
    """The factors as the receiver sees them: wire parts decoded (and cast to ``factor_dtype``, the
    sender's dtype), the other parts as held."""
    received = {}
    for module, (A, B, scale, _rank) in decode_factors(packet.wire).items():
        held = packet.held.get(module, {})
        A = held["A"] if A is None else A.to(factor_dtype)
        B = held["B"] if B is None else B.to(factor_dtype)
        received[module] = LoRAFactors(A, B, scale)
    return received


def receive(packet: Packet, sent: Mapping[str, LoRAFactors], dtype: str) -> dict[str, LoRAFactors]:
    """The factors ``sent`` as the receiver of ``packet`` sees them: the float32 round trip is exact,
    so ``sent`` itself; otherwise :func:`unpack` (cast back to the sender's dtype)."""
    if dtype == "float32":
        return dict(sent)
    return unpack(packet, next(iter(sent.values())).A.dtype)


def transmit(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> tuple[dict[str, LoRAFactors], int]:
    """``(factors as received, bytes on the wire)``."""
    packet = pack(factors, dtype, parts)
    return receive(packet, factors, dtype), len(packet.wire)


def wire_size(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> int:
    return len(encode_factors(factors, dtype=dtype, parts=parts))
