"""What travels: factors really encoded in the transport dtype, bytes counted from the wire, and the
parts a method does not send filled by the receiver, never taken from the sender."""

from __future__ import annotations

import torch

from raflora.federation.transport import pack, receive, transmit, unpack, wire_size
from raflora.lora import LoRAFactors
from raflora.wire import encode_factors


def factors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "q": LoRAFactors(A=torch.randn(3, 7, generator=g), B=torch.randn(5, 3, generator=g), scale=2.0),
        "v": LoRAFactors(A=torch.randn(2, 7, generator=g), B=torch.randn(4, 2, generator=g), scale=0.5),
    }


def fill_with(value):
    def fill(module, part, rank, shape):
        m, n = shape
        return torch.full((rank, n) if part == "A" else (m, rank), float(value))

    return fill


def test_float32_round_trip_is_exact_and_counts_the_wire():
    sent = factors()
    got, nbytes = transmit(sent, "float32", "AB", fill_with(7))
    assert nbytes == len(encode_factors(sent, dtype="float32", parts="AB")) == wire_size(sent, "float32", "AB")
    for m, f in sent.items():
        assert torch.equal(got[m].A, f.A) and torch.equal(got[m].B, f.B) and got[m].scale == f.scale


def test_bfloat16_rounds_what_the_receiver_uses():
    sent = factors(1)
    got, nbytes = transmit(sent, "bfloat16", "AB", fill_with(7))
    assert nbytes < wire_size(sent, "float32", "AB")
    for m, f in sent.items():
        assert got[m].A.dtype == torch.float32
        assert torch.equal(got[m].A, f.A.to(torch.bfloat16).to(torch.float32))
        assert torch.equal(got[m].B, f.B.to(torch.bfloat16).to(torch.float32))
        assert not torch.equal(got[m].A, f.A), "bfloat16 must really round"


def test_parts_not_sent_come_from_the_receiver():
    sent = factors(2)
    for dtype in ("float32", "bfloat16"):
        got, nbytes = transmit(sent, dtype, "B", fill_with(7))
        assert nbytes == wire_size(sent, dtype, "B") < wire_size(sent, dtype, "AB")
        for m, f in sent.items():
            assert torch.equal(got[m].A, torch.full_like(f.A, 7.0)), "A never travels: the receiver's own"
            assert got[m].B.shape == f.B.shape


def test_pack_and_unpack_are_the_two_halves():
    sent = factors(3)
    packet = pack(sent, "float16", "A")
    assert packet.shapes == {m: f.shape for m, f in sent.items()}
    apart = unpack(packet, fill_with(0), torch.float32)
    together = receive(packet, sent, "float16", "A", fill_with(0))
    for m in sent:
        assert torch.equal(apart[m].A, together[m].A) and torch.equal(apart[m].B, together[m].B)
        assert torch.count_nonzero(apart[m].B) == 0
