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

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from raflora.federation.round import ClientTurn
from raflora.federation.transport import Fill, Packet, unpack
from raflora.lora import ClientUpdate

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


def record_tensors(record: ArrayRecord) -> dict[str, Tensor]:
    out = {}
    for key, array in record.items():
        t = torch.from_numpy(np.array(array.numpy(), copy=True))
        if key.endswith("#bfloat16"):
            key, t = key.removesuffix("#bfloat16"), t.view(torch.bfloat16)
        out[key] = t
    return out


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
                    "factor-dtype": str(factor_dtype).removeprefix("torch."),
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
    up["factor-dtype"] = str(factor_dtype).removeprefix("torch.")
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
    content: RecordDict, client: int, head_like: Mapping[str, Tensor], bytes_down: int, fill: Fill
) -> ClientTurn:
    """The reply of ``client`` as the turn the embedded runtime would have built; ``head_like`` (the
    head the client was sent) fixes the head's keys and shapes; ``fill``: the parts not uploaded."""
    try:
        up, metrics = content["up"], content["metrics"]
        packet = _record_packet(up)
        wire = packet.wire
        factors = unpack(packet, fill, DTYPES[str(up["factor-dtype"])])
        head = record_tensors(content["head"])
        loss, diverged, n = float(metrics["loss"]), bool(metrics["diverged"]), int(metrics["num-examples"])
    except Exception as err:  # anything unreadable: the reply is refused, the round goes on
        raise ReplyError(f"unreadable reply ({type(err).__name__}: {err})") from None
    for key, t in head_like.items():
        if key not in head or head[key].shape != t.shape:
            raise ReplyError(f"head parameter {key!r} is missing or has the wrong shape")
    return ClientTurn(
        ClientUpdate(client, factors, n),
        {k: head[k] for k in head_like},
        loss,
        diverged,
        bytes_down=bytes_down,
        bytes_up=len(wire),
    )


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
                    "factor-dtype": str(factor_dtype).removeprefix("torch."),
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
