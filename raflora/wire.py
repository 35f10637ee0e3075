"""What crosses the wire: client updates and server payloads as safetensors bytes.

Counting the bytes of the real serialisation (not ``numel * 4``) is what the runtime logs as
``bytes_up``/``bytes_down``. ``dtype="bfloat16"`` halves the payload (the receiver casts back).

Reading is the trust boundary: a payload (or an upload file) is checked against its own size
before anything is allocated: the header length against the bytes that follow, every tensor's
offsets against the data, its byte span against its shape and dtype. Whatever is wrong raises
:class:`WireError` (a ``ValueError``) naming it, and nothing else; so decoding ``n`` bytes never
holds more than about ``2 n`` bytes of tensors (float16 cast to float32).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import save as st_save

from raflora.lora import LoRAFactors

TRANSPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors dtype names a reader accepts: the transport dtypes, and float64 (upload files)
FACTOR_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
MAX_HEADER = 100_000_000  # bytes of JSON header; safetensors' own limit


class WireError(ValueError):
    """Bytes that are not a raflora.wire payload: what is wrong with them, found before any tensor
    is allocated."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a payload, as its header declares it (checked against the payload's size)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data that follows the header
    end: int


def header_length(first: bytes, size: int) -> int:
    """The JSON header's length from the first 8 bytes of a payload of ``size`` bytes."""
    if len(first) < 8 or size < 8:
        raise WireError(f"{size} bytes are too short for a safetensors header")
    (length,) = struct.unpack("<Q", first[:8])
    if length > min(MAX_HEADER, size - 8):
        raise WireError(f"the header declares {length} bytes, {size - 8} follow")
    return length


def read_header(text: bytes, size: int) -> tuple[dict[str, Entry], dict[str, str]]:
    """``(tensors, metadata)`` of the JSON header ``text`` of a payload of ``size`` bytes."""
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError(f"the header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise WireError(f"the header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise WireError("__metadata__ must map names to strings")
    data = size - 8 - len(text)
    return {name: _entry(name, e, data) for name, e in header.items()}, meta


def _entry(name: str, e: object, data: int) -> Entry:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise WireError(f"tensor {name!r}: needs exactly dtype, shape and data_offsets")
    dtype = FACTOR_DTYPES.get(e["dtype"]) if isinstance(e["dtype"], str) else None
    if dtype is None:
        raise WireError(f"tensor {name!r}: dtype {e['dtype']!r} is not one of {', '.join(FACTOR_DTYPES)}")
    shape, offsets = e["shape"], e["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise WireError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise WireError(f"tensor {name!r}: data_offsets {offsets!r} are not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data:
        raise WireError(f"tensor {name!r}: data_offsets [{begin}, {end}] are outside the {data} bytes of data")
    need = math.prod(shape) * dtype.itemsize
    if end - begin != need:
        raise WireError(
            f"tensor {name!r}: shape {shape} of {e['dtype']} needs {need} bytes, the offsets give {end - begin}"
        )
    return Entry(dtype, tuple(shape), begin, end)


def tensor_of(raw: bytes | bytearray | memoryview, entry: Entry) -> torch.Tensor:
    """The tensor ``entry`` from exactly its bytes ``raw`` (little-endian; a bytearray is used as
    is, other bytes are copied)."""
    if len(raw) != entry.end - entry.begin:
        raise WireError(f"a tensor of {entry.end - entry.begin} bytes got {len(raw)}")
    if not raw:
        return torch.empty(entry.shape, dtype=entry.dtype)
    own = raw if isinstance(raw, bytearray) else bytearray(raw)
    return torch.frombuffer(own, dtype=entry.dtype).reshape(entry.shape)


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
    """Inverse of :func:`encode_factors`: ``{module: (A or None, B or None, scale, rank)}``;
    :class:`WireError` for bytes that are not such a payload."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"a payload is bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    length = header_length(bytes(view[:8]), len(view))
    entries, meta = read_header(bytes(view[8 : 8 + length]), len(view))
    start = 8 + length
    out = {}
    for key in meta:
        if not key.endswith(".scale"):
            continue
        name = key[: -len(".scale")]
        try:
            scale, rank = float(meta[key]), int(meta.get(f"{name}.rank", ""))
        except ValueError:
            raise WireError(f"module {name!r}: scale {meta[key]!r} or rank is not a number") from None
        A, B = (entries.get(f"{name}.lora_{part}") for part in "AB")
        out[name] = (
            None if A is None else tensor_of(view[start + A.begin : start + A.end], A).to(dtype),
            None if B is None else tensor_of(view[start + B.begin : start + B.end], B).to(dtype),
            scale,
            rank,
        )
    return out
