"""What crosses the wire: client updates and server payloads as safetensors bytes.

Counting the bytes of the real serialisation (not ``numel * 4``) is what the runtime logs as
``bytes_up``/``bytes_down``. ``dtype="bfloat16"`` halves the payload (the receiver casts back).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raflora.lora import LoRAFactors

TRANSPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def encode_factors(factors: Mapping[str, LoRAFactors], dtype: str = "float32", parts: str = "AB") -> bytes:
    """Serialise ``{module: LoRAFactors}``; ``parts`` selects which factors travel ("AB", "A", "B")."""
    if dtype not in TRANSPORT_DTYPES:
        raise ValueError(f"transport dtype must be one of {', '.join(TRANSPORT_DTYPES)}, got {dtype!r}")
    tensors, meta = {}, {}
    for name, f in factors.items():
        if "A" in parts:
            tensors[f"{name}.lora_A"] = f.A.detach().to(TRANSPORT_DTYPES[dtype]).contiguous().cpu()
        if "B" in parts:
            tensors[f"{name}.lora_B"] = f.B.detach().to(TRANSPORT_DTYPES[dtype]).contiguous().cpu()
        meta[f"{name}.scale"] = repr(float(f.scale))
        meta[f"{name}.rank"] = str(f.rank)
    return st_save(tensors, metadata=meta)


def decode_factors(data: bytes, dtype: torch.dtype = torch.float32) -> dict[str, tuple]:
    """Inverse of :func:`encode_factors`: ``{module: (A or None, B or None, scale, rank)}``."""
    header_len = struct.unpack("<Q", data[:8])[0]
    meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    tensors = st_load(data)
    out = {}
    for key in meta:
        if not key.endswith(".scale"):
            continue
        name = key[: -len(".scale")]
        A = tensors.get(f"{name}.lora_A")
        B = tensors.get(f"{name}.lora_B")
        out[name] = (
            None if A is None else A.to(dtype),
            None if B is None else B.to(dtype),
            float(meta[key]),
            int(meta[f"{name}.rank"]),
        )
    return out
