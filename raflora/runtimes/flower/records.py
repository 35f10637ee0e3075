"""What a Flower message carries, both ways, and how it is read back.

Server -> client (``train_request``): ``task`` (round, client, rank, factor dtype), ``down`` (the
start factors as :mod:`raflora.wire` bytes in ``transport_dtype``, the counted part), ``held`` (the
parts a method does not send, in full precision: in the embedded runtime the receiver already holds
them), ``head`` and, for methods that merge into the base (flora, florist), ``base``.

Client -> server (``train_reply``): ``up`` (wire bytes, loss, diverged, examples), ``held``,
``head``. :func:`read_train_reply` turns a reply into the :class:`ClientTurn` the embedded runtime
builds in-process, or raises :class:`ReplyError` with the reason it is refused.
:func:`run_config_toml` reads the raflora config named in a ``flwr run``'s run config (both apps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import Tensor

from raflora.config import ConfigError
from raflora.federation.round import ClientTurn
from raflora.federation.transport import Packet, unpack
from raflora.lora import ClientUpdate, LoRAFactors

DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


def run_config_toml(run_config: Mapping[str, Any]) -> str:
    """The raflora config that a ``flwr run`` names in its run config: the TOML text in
    ``config-toml``, else the file at the path in ``config`` (read by this process)."""
    if str(run_config.get("config-toml", "")):
        return str(run_config["config-toml"])
    path = str(run_config.get("config", ""))
    if not path:
        raise ConfigError("set the run config key `config` to the path of a raflora TOML config")
    return Path(path).read_text(encoding="utf-8")


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


def _held_record(held: Mapping[str, Mapping[str, Tensor]]) -> ArrayRecord:
    return tensors_record({f"{module}/{part}": t for module, parts in held.items() for part, t in parts.items()})


def _record_held(record: ArrayRecord) -> dict[str, dict[str, Tensor]]:
    held: dict[str, dict[str, Tensor]] = {}
    for key, t in record_tensors(record).items():
        module, part = key.rsplit("/", 1)
        held.setdefault(module, {})[part] = t
    return held


def train_request(
    round_: int, client: int, rank: int, packet: Packet, factor_dtype: torch.dtype, head: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
) -> RecordDict:
    content = RecordDict({
        "task": ConfigRecord({"round": round_, "client": client, "rank": rank,
                              "factor-dtype": str(factor_dtype).removeprefix("torch.")}),
        "down": ConfigRecord({"wire": packet.wire}),
        "held": _held_record(packet.held),
        "head": tensors_record(head),
    })
    if base:
        content["base"] = tensors_record(base)
    return content


def read_train_request(content: RecordDict) -> dict:
    """``{round, client, rank, start, head, base}`` as the client uses them."""
    task = content["task"]
    packet = Packet(bytes(content["down"]["wire"]), _record_held(content["held"]))
    return {
        "round": int(task["round"]), "client": int(task["client"]), "rank": int(task["rank"]),
        "start": unpack(packet, DTYPES[str(task["factor-dtype"])]),
        "head": record_tensors(content["head"]),
        "base": record_tensors(content["base"]) if "base" in content else {},
    }


def train_reply(packet: Packet, factor_dtype: torch.dtype, head: Mapping[str, Tensor], loss: float, diverged: bool,
                num_examples: int) -> RecordDict:
    return RecordDict({
        "up": ConfigRecord({"wire": packet.wire, "factor-dtype": str(factor_dtype).removeprefix("torch.")}),
        "held": _held_record(packet.held),
        "head": tensors_record(head),
        "metrics": MetricRecord({"loss": float(loss), "diverged": int(diverged), "num-examples": int(num_examples)}),
    })


def read_train_reply(content: RecordDict, client: int, head_like: Mapping[str, Tensor], bytes_down: int) -> ClientTurn:
    """The reply of ``client`` as the turn the embedded runtime would have built; ``head_like`` (the
    head the client was sent) fixes the head's keys and shapes."""
    try:
        up, metrics = content["up"], content["metrics"]
        wire = bytes(up["wire"])
        factors = unpack(Packet(wire, _record_held(content["held"])), DTYPES[str(up["factor-dtype"])])
        head = record_tensors(content["head"])
        loss, diverged, n = float(metrics["loss"]), bool(metrics["diverged"]), int(metrics["num-examples"])
    except Exception as err:  # anything unreadable: the reply is refused, the round goes on
        raise ReplyError(f"unreadable reply ({type(err).__name__}: {err})") from None
    for key, t in head_like.items():
        if key not in head or head[key].shape != t.shape:
            raise ReplyError(f"head parameter {key!r} is missing or has the wrong shape")
    return ClientTurn(ClientUpdate(client, factors, n), {k: head[k] for k in head_like}, loss, diverged,
                      bytes_down=bytes_down, bytes_up=len(wire))
