"""What travels between server and clients, and how many bytes it takes.

Factors are really serialised with :func:`raflora.wire.encode_factors` in the configured dtype and
decoded back, so a bfloat16 transport also rounds the values the receiver uses. Only the parts a
method sends travel; the receiver fills the others itself (``fill(module, part, rank, shape)``):
FFA-LoRA's frozen ``A`` is regenerated from the seed on both sides, FedSA-LoRA's server has no
client ``B`` (zeros) and its client puts its own back. Nothing crosses uncounted.

:func:`pack` and :func:`unpack` are the two halves of :func:`transmit`, for runtimes where sender
and receiver are different processes (the Flower runtime ships the packet's ``wire`` bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from raflora.lora import LoRAFactors
from raflora.wire import decode_factors, encode_factors

Fill = Callable[[str, str, int, "tuple[int, int]"], Tensor]  # (module, part, rank, (m, n)) -> tensor


@dataclass
class Packet:
    wire: bytes  # the serialised factors: these bytes are counted
    shapes: dict[str, tuple[int, int]]  # module -> (m, n), so the receiver can fill what did not travel


def pack(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> Packet:
    return Packet(encode_factors(factors, dtype=dtype, parts=parts), {m: f.shape for m, f in factors.items()})


def unpack(packet: Packet, fill: Fill, factor_dtype: torch.dtype = torch.float32) -> dict[str, LoRAFactors]:
    """The factors as the receiver sees them: wire parts decoded (and cast to ``factor_dtype``, the
    sender's dtype), the other parts from ``fill``."""
    received = {}
    for module, (A, B, scale, rank) in decode_factors(packet.wire).items():
        shape = packet.shapes[module]
        A = fill(module, "A", rank, shape).to(factor_dtype) if A is None else A.to(factor_dtype)
        B = fill(module, "B", rank, shape).to(factor_dtype) if B is None else B.to(factor_dtype)
        received[module] = LoRAFactors(A=A, B=B, scale=scale)
    return received


def receive(
    packet: Packet, sent: Mapping[str, LoRAFactors], dtype: str, parts: str, fill: Fill
) -> dict[str, LoRAFactors]:
    """The factors ``sent`` as the receiver of ``packet`` sees them: the float32 round trip of the
    sent parts is exact, so those are ``sent``'s own; otherwise :func:`unpack` (cast back to the
    sender's dtype). Parts not sent come from ``fill``."""
    if dtype != "float32":
        return unpack(packet, fill, next(iter(sent.values())).A.dtype)
    out = {}
    for module, f in sent.items():
        A = f.A if "A" in parts else fill(module, "A", f.rank, f.shape).to(f.A.dtype)
        B = f.B if "B" in parts else fill(module, "B", f.rank, f.shape).to(f.B.dtype)
        out[module] = LoRAFactors(A=A, B=B, scale=f.scale)
    return out


def transmit(
    factors: Mapping[str, LoRAFactors], dtype: str, parts: str, fill: Fill
) -> tuple[dict[str, LoRAFactors], int]:
    """``(factors as received, bytes on the wire)``."""
    packet = pack(factors, dtype, parts)
    return receive(packet, factors, dtype, parts, fill), len(packet.wire)


def wire_size(factors: Mapping[str, LoRAFactors], dtype: str, parts: str) -> int:
    return len(encode_factors(factors, dtype=dtype, parts=parts))
