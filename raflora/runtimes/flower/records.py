"""What a Flower message carries, both ways, and how it is read back.

Server -> client (``train_request``): ``task`` (round, client, rank, factor dtype), ``down`` (the
start factors as :mod:`raflora.wire` bytes in ``transport_dtype``, the counted part, with the
modules' shapes), ``head`` and, for methods that merge into the base, ``base``. The parts a method
does not send never travel: the receiver fills them (:mod:`raflora.federation.transport`), and a
client's own kept part stays in its ``context.state``.

Client -> server (``train_reply``): ``up`` (wire bytes, loss, diverged, examples) and ``head``.
:func:`read_train_reply` turns a reply into the :class:`ClientTurn` the embedded runtime builds
in-process, or raises :class:`ReplyError` with the reason it is refused. ``evaluate_request`` /
``evaluate_reply`` carry a client's own evaluation (methods whose clients keep a private part).
Every server message also carries ``run``: the server's config and class names (:func:`with_run`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.lib.format as npy
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from raflora.federation.round import ClientTurn
from raflora.federation.transport import Fill, Packet, unpack
from raflora.lora import ClientUpdate, LoRAFactors
from raflora.wire import decode_factors

DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


def with_run(content: RecordDict, config_toml: str, labels: Sequence[str] | None) -> RecordDict:
    """``content`` with what every node needs to build the run (``run``): the server's raflora config
    as TOML (so a node needs no copy of the config file) and the federation's class names (so a node
    reading its own file numbers the classes as the server does; none for tasks without them)."""
    run = ConfigRecord({"config": config_toml})
    if labels:
        run["labels"] = [str(name) for name in labels]
    content["run"] = run
    return content


def read_run(content: RecordDict) -> tuple[str | None, list[str] | None]:
    """``(config TOML, labels)`` of a message, None for what it does not carry."""
    run = content["run"] if "run" in content else {}
    config = str(run["config"]) if "config" in run else None
    return config, ([str(name) for name in run["labels"]] if "labels" in run else None)


class ReplyError(ValueError):
    """A client's reply that cannot become an update (the client failed, or sent something unreadable)."""


def tensors_record(tensors: Mapping[str, Tensor]) -> ArrayRecord:
    """Tensors as an ArrayRecord, bit for bit (bfloat16 travels as its raw 16-bit pattern)."""
    record = ArrayRecord()
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            key, t = f"{key}#bfloat16", t.view(torch.int16)
        record[key] = Array(t.numpy())
    return record


def record_tensors(record: ArrayRecord, like: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The tensors of ``record`` (:func:`tensors_record`'s inverse); with ``like``, only its keys, each
    checked against its shape and dtype before it is read (a missing or different one: ValueError)."""
    if like is None:
        return {key.removesuffix("#bfloat16"): array_tensor(array, key) for key, array in record.items()}
    out = {}
    for key, t in like.items():
        sent = f"{key}#bfloat16" if t.dtype == torch.bfloat16 else key
        if sent not in record:
            raise ValueError(f"head parameter {key!r} is missing")
        out[key] = array_tensor(record[sent], sent, t)
    return out


def array_tensor(array: Array, key: str, like: Tensor | None = None) -> Tensor:
    """One record entry as a tensor, its ``.npy`` header checked against the bytes it came with (and
    against ``like``'s shape and dtype) before anything is allocated: ``np.load`` would first
    allocate whatever shape a header declares."""
    data = array.data
    if not isinstance(data, bytes):
        raise ValueError(f"{key!r}: array data is {type(data).__name__}, not bytes")
    fp = io.BytesIO(data)
    version = npy.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{key!r}: .npy version {version} is not 1.0 or 2.0")
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read(fp)
    if dtype.hasobject or not dtype.isnative or dtype.kind not in "fiu":
        raise ValueError(f"{key!r}: dtype {dtype} is not a number type of this machine")
    count = math.prod(shape)
    if len(data) - fp.tell() != count * dtype.itemsize:
        raise ValueError(
            f"{key!r}: shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, {len(data) - fp.tell()} came"
        )
    bf16 = key.endswith("#bfloat16")
    if like is not None:
        want = (tuple(like.shape), np.dtype(np.int16) if bf16 else torch.empty(0, dtype=like.dtype).numpy().dtype)
        if (tuple(shape), dtype) != want:
            raise ValueError(f"head parameter {key.removesuffix('#bfloat16')!r} has the wrong shape or dtype")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=fp.tell())
    t = torch.from_numpy(flat.reshape(shape, order="F" if fortran else "C").copy())
    return t.view(torch.bfloat16) if bf16 else t


def _shapes_record(packet: Packet) -> ConfigRecord:
    return ConfigRecord({"wire": packet.wire, **{f"shape:{m}": list(shape) for m, shape in packet.shapes.items()}})


def _record_packet(record: ConfigRecord) -> Packet:
    shapes = {k.removeprefix("shape:"): (int(v[0]), int(v[1])) for k, v in record.items() if k.startswith("shape:")}
    return Packet(bytes(record["wire"]), shapes)


def train_request(
    round_: int,
    client: int,
    rank: int,
    packet: Packet,
    factor_dtype: torch.dtype,
    head: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
) -> RecordDict:
    content = RecordDict(
        {
            "task": ConfigRecord(
                {
                    "round": round_,
                    "client": client,
                    "rank": rank,
                    "factor-dtype": _dtype_name(factor_dtype),
                }
            ),
            "down": _shapes_record(packet),
            "head": tensors_record(head),
        }
    )
    if base:
        content["base"] = tensors_record(base)
    return content


def read_train_request(content: RecordDict, fill: Fill) -> dict:
    """``{round, client, rank, start, head, base}`` as the client uses them (``fill``: the parts
    that did not travel)."""
    task = content["task"]
    return {
        "round": int(task["round"]),
        "client": int(task["client"]),
        "rank": int(task["rank"]),
        "start": unpack(_record_packet(content["down"]), fill, DTYPES[str(task["factor-dtype"])]),
        "head": record_tensors(content["head"]),
        "base": record_tensors(content["base"]) if "base" in content else {},
    }


def train_reply(
    packet: Packet,
    factor_dtype: torch.dtype,
    head: Mapping[str, Tensor],
    loss: float,
    diverged: bool,
    num_examples: int,
) -> RecordDict:
    up = _shapes_record(packet)
    up["factor-dtype"] = _dtype_name(factor_dtype)
    return RecordDict(
        {
            "up": up,
            "head": tensors_record(head),
            "metrics": MetricRecord(
                {"loss": float(loss), "diverged": int(diverged), "num-examples": int(num_examples)}
            ),
        }
    )


def read_train_reply(
    content: RecordDict,
    client: int,
    sent: Mapping[str, LoRAFactors],
    head_like: Mapping[str, Tensor],
    bytes_down: int,
    fill: Fill,
) -> ClientTurn:
    """The reply of ``client`` as the turn the embedded runtime would have built. What the server
    sent fixes what it reads: ``sent`` (the start factors) the modules, their shapes, the client's
    rank and the factor dtype; ``head_like`` (the head) the head's keys, shapes and dtypes. A reply
    changes none of them; ``fill``: the parts not uploaded."""
    try:
        up, metrics = content["up"], content["metrics"]
        wire = up["wire"]
        if not isinstance(wire, bytes):  # bytes(n) of an integer n would allocate n bytes
            raise ValueError(f"wire is {type(wire).__name__}, not bytes")
        dtype = next(iter(sent.values())).A.dtype
        said = str(up.get("factor-dtype", ""))
        if said and DTYPES.get(said) != dtype:
            raise ReplyError(f"factor dtype {said!r} is not the server's {_dtype_name(dtype)!r}")
        factors = _received(wire, sent, fill, dtype)
        head = record_tensors(content["head"], head_like)
        loss, diverged, n = float(metrics["loss"]), bool(metrics["diverged"]), int(metrics["num-examples"])
    except ReplyError:
        raise
    except Exception as err:  # anything unreadable: the reply is refused, the round goes on
        raise ReplyError(f"unreadable reply ({type(err).__name__}: {err})") from None
    return ClientTurn(
        ClientUpdate(client, factors, n),
        head,
        loss,
        diverged,
        bytes_down=bytes_down,
        bytes_up=len(wire),
    )


def _received(wire: bytes, sent: Mapping[str, LoRAFactors], fill: Fill, dtype: torch.dtype) -> dict[str, LoRAFactors]:
    """The uploaded factors in the server's ``dtype``; a part that did not travel is filled at the
    shape and rank the server knows (never at sizes the reply declares)."""
    received = {}
    for module, (A, B, scale, rank) in decode_factors(wire).items():
        if module not in sent:
            raise ReplyError(f"module {module!r} was not sent to this client")
        want = sent[module]
        if rank != want.rank:
            raise ReplyError(f"module {module!r}: rank {rank}, this client's rank is {want.rank}")
        A = fill(module, "A", rank, want.shape).to(dtype) if A is None else A.to(dtype)
        B = fill(module, "B", rank, want.shape).to(dtype) if B is None else B.to(dtype)
        received[module] = LoRAFactors(A=A, B=B, scale=scale)
    return received


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def evaluate_request(
    round_: int,
    client: int,
    rank: int,
    packet: Packet,
    factor_dtype: torch.dtype,
    head: Mapping[str, Tensor],
    split: str = "test",
) -> RecordDict:
    """Ask ``client`` to evaluate its own model: the new global part (``packet``) with its kept
    part, on ``split`` (``"test"`` or ``"validation"``)."""
    return RecordDict(
        {
            "task": ConfigRecord(
                {
                    "round": round_,
                    "client": client,
                    "rank": rank,
                    "factor-dtype": _dtype_name(factor_dtype),
                    "split": split,
                }
            ),
            "down": _shapes_record(packet),
            "head": tensors_record(head),
        }
    )


def evaluate_split(content: RecordDict) -> str:
    """The split an evaluate request asks for (``"test"`` from servers before the key)."""
    split = str(content["task"].get("split", "test"))
    if split not in ("test", "validation"):
        raise ReplyError(f"unknown evaluation split {split!r}")
    return split


def evaluate_reply(metrics: Mapping[str, float]) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})


def read_evaluate_reply(content: RecordDict) -> dict[str, float]:
    try:
        return {k: float(v) for k, v in content["metrics"].items()}
    except Exception as err:
        raise ReplyError(f"unreadable evaluation ({type(err).__name__}: {err})") from None
