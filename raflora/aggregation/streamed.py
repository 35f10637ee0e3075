"""Aggregation with the uploads on disk, read one module at a time.

A server with many clients need not hold every upload at once. Each client's factors are a
:mod:`raflora.wire` file (safetensors: the bytes that crossed the wire, :func:`write_upload`), and
:func:`aggregate_files` reads one module's factors from every file, aggregates that module, keeps its
result in the smaller exact form (the stacked pair, or the dense ``m x n`` matrix when
``R (m + n) > m n``, ``R = sum r_i``) and drops the factors before reading the next module. Peak
memory is one module's uploads and working set plus the result, not all uploads.

The steps are :meth:`Method.aggregate <raflora.aggregation.method.Method.aggregate>`'s, the same
functions: validation, then each of :meth:`~raflora.aggregation.method.Method.refusal_steps` (the
method's own refusals, the norm bound ``max_norm_ratio``), each decided on the clients still in the
round, in that order (one pass over the files when nobody is refused, one per step more otherwise),
then one pass to combine (``combine_safely``), carry (``carried``) and build each module's result
(``build_result``). A client refused in any module is refused in all, and the weights are the
accepted clients' shares of the examples. On the same uploads the numbers are ``aggregate``'s (a
test checks it) except for a module made dense, whose SVD comes from the dense matrix (the same
update; the singular vectors agree to float32 rounding). ``result.rejected`` lists the refusals
pass by pass.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raflora.aggregation.method import MAX_NORM_RATIO, Method, Refusals
from raflora.aggregation.result import AggregationResult
from raflora.aggregation.stacking import compact
from raflora.aggregation.validate import Checked, NoValidUpdates, Rejection, check_updates
from raflora.lora import ClientUpdate, LoRAFactors, LowRank
from raflora.wire import Entry, WireError, encode_factors, header_length, read_header, tensor_of


@dataclass(frozen=True)
class UploadFile:
    """One client's upload kept on disk: its id, the :mod:`raflora.wire` file, its example count."""

    client_id: Hashable
    path: str | Path
    num_examples: int

    def modules(self) -> tuple[str, ...]:
        header, _ = _header(self.path)
        meta = header.get("__metadata__", {})
        return tuple(sorted(k[: -len(".scale")] for k in meta if k.endswith(".scale")))

    def load(self, modules: Sequence[str]) -> ClientUpdate:
        """The client's update for ``modules`` only (float32, as :func:`raflora.wire.decode_factors`
        gives it); a module the file lacks is left out (validation then names it).

        Each tensor is read with one ``seek`` + ``readinto`` at the offsets of the safetensors
        header, into memory of its own. safetensors' ``safe_open`` maps the whole file instead, and
        its pages stayed resident (1.6 GiB of file pages for 1,000 clients, measured), which is
        what reading one module at a time is meant to avoid.
        """
        header, start = _header(self.path)
        meta = header.get("__metadata__", {})
        factors = {}
        with open(self.path, "rb") as fh:
            for m in modules:
                a, b = header.get(f"{m}.lora_A"), header.get(f"{m}.lora_B")
                if a is None or b is None or f"{m}.scale" not in meta:
                    continue
                factors[m] = LoRAFactors(A=_read(fh, start, a), B=_read(fh, start, b), scale=float(meta[f"{m}.scale"]))
        return ClientUpdate(self.client_id, factors, self.num_examples)


def _header(path: str | Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` (8-byte little-endian length, then JSON) and where the
    data starts, every tensor's offsets checked against the file's size first
    (:func:`raflora.wire.read_header`; :class:`~raflora.wire.WireError` otherwise)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        length = header_length(fh.read(8), size)
        entries, meta = read_header(fh.read(length), size)
    header: dict = {**entries, "__metadata__": meta}
    return header, 8 + length


def _read(fh, start: int, entry: Entry) -> torch.Tensor:
    """The tensor ``entry`` (checked by :func:`_header`) from ``fh``, as float32; the file is
    measured again first, so a file cut short since its header was read allocates nothing."""
    size = os.fstat(fh.fileno()).st_size
    if start + entry.end > size:
        raise WireError(f"the file ends at byte {size}, before its tensors do (byte {start + entry.end})")
    fh.seek(start + entry.begin)
    data = bytearray(entry.end - entry.begin)
    if fh.readinto(data) != len(data):
        raise WireError("the file ends before its tensors do")
    return tensor_of(data, entry).to(torch.float32)


def write_upload(path: str | Path, update: ClientUpdate, dtype: str = "float32") -> UploadFile:
    """Write ``update``'s factors as a :mod:`raflora.wire` file; the :class:`UploadFile` that reads it."""
    Path(path).write_bytes(encode_factors(update.factors, dtype))
    return UploadFile(update.client_id, path, update.num_examples)


class ModuleResults:
    """What :func:`aggregate_files` returns: the :class:`AggregationResult` interface, each module
    answered by the result of its own pass. ``modules``, ``rejected``, ``weights``, ``shapes``,
    ``method`` and ``seed`` are the round's; every per-module call (``client_factors``,
    ``singular_values``, ``delta_factors``, ...) goes to that module's result."""

    def __init__(
        self, method: Method, results: Mapping[str, AggregationResult], rejected: Sequence[Rejection], seed: int
    ):
        self.method = method
        self.seed = seed
        self._results = dict(results)
        self.modules = tuple(self._results)
        first = next(iter(self._results.values()))
        self.weights = dict(first.weights)
        self.rejected = list(rejected)
        self.shapes = {m: r.shapes[m] for m, r in self._results.items()}

    def __repr__(self) -> str:
        return (
            f"<ModuleResults of {self.method!r}: {len(self.modules)} modules, {len(self.weights)} clients, "
            f"{len(self.rejected)} rejected>"
        )

    def precompute(self, workers: int = 1) -> ModuleResults:
        return self  # every module's spectrum and top factors were computed in its pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        first = next(iter(self._results.values()))
        if not callable(getattr(first, name, None)):
            raise AttributeError(f"{type(first).__name__} has no method {name!r}")

        def per_module(module: str, *args, **kwargs):
            if module not in self._results:
                raise KeyError(f"module {module!r} is not in this result; modules: {', '.join(self.modules)}")
            return getattr(self._results[module], name)(module, *args, **kwargs)

        return per_module


class _Refused:
    """The round's refusals as they are decided: who is out (for every module) and why, in order."""

    def __init__(self) -> None:
        self.clients: set[Hashable] = set()
        self.rejected: list[Rejection] = []

    def add(self, cid: Hashable, module: str | None, reason: str) -> None:
        if cid not in self.clients:  # the first reason stands
            self.clients.add(cid)
            self.rejected.append((cid, module, reason))


def _load_all(uploads: Sequence[UploadFile], module: str, refused: _Refused) -> list[ClientUpdate]:
    out = []
    for u in uploads:
        if u.client_id in refused.clients:
            continue
        try:
            out.append(u.load([module]))
        except Exception as err:  # an unreadable file refuses its client, the round goes on
            refused.add(
                u.client_id,
                None,
                f"client {u.client_id!r}: upload {str(u.path)!r} cannot be read ({str(err).splitlines()[0]})",
            )
    return out


def _checked(uploads, module, shapes, refused: _Refused, max_weight: float = 1.0) -> Checked | None:
    """The module's updates of the clients still in the round, validated; the ones validation
    refuses are recorded (and refused for every module)."""
    updates = _load_all(uploads, module, refused)
    if not updates:
        return None
    try:
        checked = check_updates(updates, [module], {module: shapes[module]} if module in shapes else None, max_weight)
    except NoValidUpdates as err:  # its message names every client's reason
        for u in updates:
            refused.add(u.client_id, module, f"module {module!r}: {err}")
        return None
    shapes.setdefault(module, checked.shapes[module])
    for cid, mod, reason in checked.rejected:
        refused.add(cid, mod, reason)
    return checked


def _refuse(checked: Checked, found: Refusals, refused: _Refused) -> None:
    for i, (module, reason) in sorted(found.items()):
        refused.add(checked.updates[i].client_id, module, reason)


def aggregate_files(
    method: str | Method,
    uploads: Sequence[UploadFile],
    *,
    modules: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    max_norm_ratio: float = MAX_NORM_RATIO,
    previous: Mapping[str, LowRank] | None = None,
    top_rank: int | None = None,
    max_weight: float = 1.0,
    **options,
) -> ModuleResults:
    """Aggregate one round whose uploads are files (:class:`UploadFile`), one module at a time;
    the arguments are :func:`raflora.aggregate`'s. Raises ``NoValidUpdates`` when no client is left."""
    from raflora.aggregation import method_of  # the registry imports this module's neighbours

    method = method_of(method, options, "aggregate_files()")
    ratio = method.check_round(max_norm_ratio, previous, max_weight)
    uploads = list(uploads)
    if not uploads:
        raise NoValidUpdates("no client uploads given: aggregate_files needs at least one UploadFile")
    refused = _Refused()
    if modules is None:
        listed = []
        for u in uploads:
            try:
                listed.append(u.modules())
            except Exception:
                pass  # refused with its reason when the first module is read
        if not listed:
            raise NoValidUpdates("no upload file could be read")
        modules = Counter(listed).most_common(1)[0][0]
    modules, shapes = tuple(modules), dict(shapes or {})
    steps = method.refusal_steps(seed, ratio)
    # 1: validation, and a look at what the refusal steps would refuse. When nobody is refused (the
    # usual round) that look is aggregate()'s answer and one pass suffices; otherwise each step is
    # decided again on the clients left, in aggregate()'s order (one pass per step).
    anything = False
    for module in modules:
        checked = _checked(uploads, module, shapes, refused, max_weight)
        if checked is None or checked.rejected:
            anything = True
            continue
        anything = anything or any(step(checked) for step in steps)
    if anything or refused.clients:
        for step in steps:
            for module in modules:
                checked = _checked(uploads, module, shapes, refused, max_weight)
                if checked is not None:
                    _refuse(checked, step(checked), refused)
    while True:  # last: combine; a module whose combine refuses a client restarts the pass without it
        results = {}
        for module in modules:
            checked = _checked(uploads, module, shapes, refused, max_weight)
            if checked is None:
                raise NoValidUpdates("no client update is left: " + "; ".join(r for _, _, r in refused.rejected[-5:]))
            checked, factors = method.combine_safely(checked, seed)
            if checked.rejected:
                break
            factors = method.carried(checked, factors, previous, top_rank)
            result = method.build_result(checked, {module: compact(factors[module], shapes[module])}, seed)
            result.precompute()
            results[module] = result
            del checked, factors  # this module's factors go before the next module's are read
        else:
            return ModuleResults(method, results, refused.rejected, seed)
        for cid, mod, reason in checked.rejected:
            refused.add(cid, mod, reason)


__all__ = ["ModuleResults", "UploadFile", "aggregate_files", "write_upload"]
