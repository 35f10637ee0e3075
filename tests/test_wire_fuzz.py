"""Decoders never allocate beyond what they were sent: 12,000 random and mutated payloads and
files, each decoded or refused with :class:`raflora.wire.WireError` (a ValueError), nothing else;
and a 470-byte file (payload, reply) declaring a 2 GB tensor is refused with < 20 MB of memory."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from raflora import LoRAFactors
from raflora.aggregation.streamed import UploadFile
from raflora.wire import WireError, decode_factors, encode_factors

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["q", "v", "layers.0.k", ""]
ODD = [-1, 0, 1, 2, 3, 2**31, 2**63, 2**64 + 5, -(2**63), 1.5, "7", None, [], {}, True, float("inf")]


def valid_payload(rng: random.Random) -> bytes:
    factors = {}
    for name in rng.sample(NAMES, rng.randint(1, 3)):
        r, m, n = rng.randint(1, 4), rng.randint(1, 6), rng.randint(1, 6)
        factors[name] = LoRAFactors(A=torch.randn(r, n), B=torch.randn(m, r), scale=rng.choice([0.5, 2.0, 8 / 3]))
    return encode_factors(factors, rng.choice(["float32", "bfloat16", "float16"]), rng.choice(["AB", "A", "B"]))


def split(payload: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + length]), payload[8 + length :]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def mutate_header(rng: random.Random, payload: bytes) -> bytes:
    header, data = split(payload)
    meta = header.setdefault("__metadata__", {})
    tensors = [k for k in header if k != "__metadata__"]
    what = rng.randrange(7)
    if what == 0 and meta:  # a metadata value that is not a number, or not a string
        meta[rng.choice(list(meta))] = rng.choice(["nan", "abc", "", "1e999", "9" * 5000, 3, None])
    elif what == 1 and tensors:  # a dtype the reader does not know
        header[rng.choice(tensors)]["dtype"] = rng.choice(["I64", "BOOL", "F8_E4M3", "f32", 4, None])
    elif what == 2 and tensors:  # a shape: huge, negative, not a list
        header[rng.choice(tensors)]["shape"] = rng.choice(
            [[2**20, 2**20], [-1, 4], [3.0], "4", [rng.choice(ODD)], [2**40] * 3, []]
        )
    elif what == 3 and tensors:  # offsets: past the data, reversed, not integers, huge
        t = header[rng.choice(tensors)]
        t["data_offsets"] = [rng.choice(ODD), rng.choice(ODD)] if rng.random() < 0.5 else [0, 2**31]
    elif what == 4 and tensors:  # a key missing or added
        t = header[rng.choice(tensors)]
        t.pop(rng.choice(["dtype", "shape", "data_offsets"])) if rng.random() < 0.5 else t.update(extra=1)
    elif what == 5:  # not an object at all
        header = rng.choice([[], "x", 1, None, {"__metadata__": []}, {"a": 1}])
        return join(header, data) if not isinstance(header, dict) or header else payload
    else:  # data cut or grown, header kept
        data = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data + bytes(rng.randrange(1, 64))
    return join(header, data)


def mutate_bytes(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    what = rng.randrange(5)
    if what == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
    if what == 1:
        return bytes(b[: rng.randrange(len(b) + 1)])
    if what == 2:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        return bytes(b)
    if what == 3:  # the header length field
        length = rng.choice([0, 1, 7, len(b), len(b) - 8, 2**31, 2**63, 2**64 - 1, rng.getrandbits(64)])
        return struct.pack("<Q", length) + bytes(b[8:])
    pos = rng.randrange(len(b) + 1)
    return bytes(b[:pos] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 16))) + b[pos:])


def cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        payload = valid_payload(rng)
        kind = rng.randrange(10)
        if kind == 0:
            yield payload
        elif kind < 6:
            yield mutate_header(rng, payload)
        else:
            yield mutate_bytes(rng, payload)


def test_random_and_mutated_payloads_decode_or_are_refused_with_wire_error():
    decoded = refused = 0
    for payload in cases(seed=20, count=8000):
        try:
            got = decode_factors(payload)
        except WireError:
            refused += 1
            continue
        decoded += 1
        held = sum(t.numel() * t.element_size() for A, B, _, _ in got.values() for t in (A, B) if t is not None)
        assert held <= 2 * len(payload), "float16 cast to float32 at most doubles what was sent"
    assert decoded > 500 and refused > 4000, (decoded, refused)


def test_random_and_mutated_upload_files_load_or_are_refused_with_a_value_error(tmp_path):
    # in memory where the machine has it: 4,000 file writes on a busy disk take seconds each thousand
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as folder:
        loaded, refused = load_files(Path(folder) / "upload.safetensors")
    assert loaded > 300 and refused > 2000, (loaded, refused)


def load_files(path: Path) -> tuple[int, int]:
    loaded = refused = 0
    for payload in cases(seed=21, count=4000):
        path.write_bytes(payload)
        upload = UploadFile("c", path, 10)
        try:
            upload.load(upload.modules())
        except ValueError:  # WireError, or a scale that is not a number
            refused += 1
            continue
        loaded += 1
    return loaded, refused


def test_a_wire_error_names_what_is_wrong():
    good = encode_factors({"q": LoRAFactors(A=torch.ones(2, 3), B=torch.ones(4, 2), scale=1.0)})
    header, data = split(good)
    header["q.lora_A"]["data_offsets"] = [0, 2**31]
    for payload, message in [
        (b"abc", "3 bytes are too short for a safetensors header"),
        (struct.pack("<Q", 2**40) + b"{}", "the header declares 1099511627776 bytes, 2 follow"),
        (join(header, data), "tensor 'q.lora_A': data_offsets [0, 2147483648] are outside the 56 bytes of data"),
    ]:
        try:
            decode_factors(payload)
        except WireError as err:
            assert str(err) == message
        else:
            raise AssertionError(f"{payload[:20]!r} was decoded")


MEMORY = textwrap.dedent(
    """
    import json, resource, struct, sys
    import numpy as np, torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from raflora import LoRAFactors
    from raflora.aggregation.streamed import aggregate_files
    from raflora.aggregation.streamed import UploadFile, write_upload
    from raflora.lora import ClientUpdate
    from raflora.runtimes.flower.records import ReplyError, read_train_reply
    from raflora.wire import WireError, decode_factors, encode_factors

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    g = torch.Generator().manual_seed(0)
    mods = {m: LoRAFactors(torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 1.0) for m in "qv"}
    good = [write_upload(f"{sys.argv[1]}/c{i}.safetensors", ClientUpdate(f"c{i}", mods, 5)) for i in range(2)]
    # a file that declares one 2 GB tensor (16384 x 32768 float32) in a few hundred bytes
    raw = good[0].path.read_bytes() if hasattr(good[0].path, "read_bytes") else open(good[0].path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["q.lora_A"] = {"dtype": "F32", "shape": [16384, 32768], "data_offsets": [0, 2**31]}
    text = json.dumps(header).encode()
    bad = struct.pack("<Q", len(text)) + text + raw[8 + n :]
    open(f"{sys.argv[1]}/big.safetensors", "wb").write(bad)
    aggregate_files("raflora", good)  # warm up: the same work but the bad file
    start = rss_mb()
    result = aggregate_files("raflora", [*good, UploadFile("big", f"{sys.argv[1]}/big.safetensors", 5)])
    try:
        decode_factors(bad)
        raise SystemExit("decoded")
    except WireError:
        pass
    sent = {m: f for m, f in mods.items()}
    head = {"w": torch.zeros(4, 4)}
    huge_npy = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), dtype=np.float32))
    huge_npy["shape"] = (16384, 32768)
    import io
    fp = io.BytesIO()
    np.lib.format.write_array_header_1_0(fp, huge_npy)
    for up, head_data in [
        (ConfigRecord({"wire": bad}), None),
        (ConfigRecord({"wire": 2**31}), None),  # bytes(2**31) would be 2 GB of zeros
        (ConfigRecord({"wire": encode_factors(mods)}), fp.getvalue() + b"0" * 64),
    ]:
        record = ArrayRecord({"w": Array(np.zeros((4, 4), dtype=np.float32))})
        if head_data is not None:
            record["w"] = Array(dtype="float32", shape=(4, 4), stype="numpy.ndarray", data=head_data)
        content = RecordDict(
            {"up": up, "head": record, "metrics": MetricRecord({"loss": 1.0, "diverged": 0, "num-examples": 5})}
        )
        try:
            read_train_reply(content, 0, sent, head, 0, lambda *a: None)
            raise SystemExit("a reply was read")
        except ReplyError as err:
            print("refused:", err)
    print(json.dumps({"extra_mb": rss_mb() - start, "size": len(bad), "rejected": result.rejected}))
    """
)


def test_a_small_file_declaring_2_gb_is_refused_within_20_mb(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MEMORY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    measured = json.loads(lines[-1])
    assert measured["size"] < 1000 and measured["extra_mb"] < 20, measured
    [(client, module, reason)] = measured["rejected"]
    assert client == "big" and module is None
    assert "'q.lora_A': data_offsets [0, 2147483648] are outside the" in reason
    assert "data_offsets [0, 2147483648] are outside" in lines[0]
    assert "wire is int, not bytes" in lines[1]
    assert "head parameter 'w'" not in lines[2] and "needs 2147483648 bytes" in lines[2]
