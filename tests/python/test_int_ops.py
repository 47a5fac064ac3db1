"""The exporter's weight-index coding ops (bit packing, canonical Huffman) against their inverses and the
bit order of docs/FORMAT.md section 3."""
from __future__ import annotations

import pytest
import torch

import qcnn  # noqa: F401
from qcnn._ops import int_ops as _ops


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_and_huffman_round_trip(bits):
    gen = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2 ** bits, (1001,), generator=gen, dtype=torch.uint8)
    packed = _ops.pack_bits(v, bits)
    assert packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(_ops.unpack_bits(packed, bits, 1001), v)
    # bit order: value i at stream bits [i*bits, (i+1)*bits), LSB first
    stream = ((packed[:, None].long() >> torch.arange(8)) & 1).reshape(-1)[: 1001 * bits].reshape(1001, bits)
    assert torch.equal((stream << torch.arange(bits)).sum(1), v.long())
    lengths = _ops.huffman_code_lengths(torch.bincount(v.long(), minlength=2 ** bits), 16)
    enc = _ops.huffman_encode(v, lengths)
    assert torch.equal(_ops.huffman_decode(enc, lengths, 1001), v)


@pytest.mark.parametrize("bits", [9, 12, 16])
def test_pack_round_trip_of_wide_values(bits):
    """Fixed-point weights of 9 to 16 bits: int32 values, the same LSB-first stream."""
    gen = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2 ** bits, (777,), generator=gen, dtype=torch.int32)
    packed = _ops.pack_bits(v, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (777 * bits + 7) // 8
    stream = ((packed[:, None].long() >> torch.arange(8)) & 1).reshape(-1)[: 777 * bits].reshape(777, bits)
    assert torch.equal((stream << torch.arange(bits)).sum(1), v.long())
    back = _ops.unpack_bits(packed, bits, 777)
    assert back.dtype == torch.int32 and torch.equal(back, v)
    with pytest.raises(RuntimeError, match="does not fit in 12 bits"):
        _ops.pack_bits(torch.tensor([4096], dtype=torch.int32), 12)
    with pytest.raises(RuntimeError, match="does not fit"):
        _ops.pack_bits(torch.tensor([-1], dtype=torch.int32), 12)


def test_op_argument_errors():
    with pytest.raises(RuntimeError, match="bits must be in"):
        _ops.pack_bits(torch.zeros(3, dtype=torch.uint8), 9)
    with pytest.raises(RuntimeError, match="does not fit"):
        _ops.pack_bits(torch.full((3,), 4, dtype=torch.uint8), 2)
    with pytest.raises(RuntimeError, match="packed must be 1-D with 2 bytes"):
        _ops.unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 5)
    with pytest.raises(RuntimeError, match="truncated"):
        _ops.huffman_decode(torch.zeros(1, dtype=torch.uint8), torch.tensor([1, 1], dtype=torch.uint8), 100)


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 4, (3, 18), generator=gen, dtype=torch.uint8)
    lengths = torch.tensor([2, 2, 2, 2], dtype=torch.uint8)
    ops = torch.ops.qcnn
    cases = [
        (ops.pack_bits.default, (idx.reshape(-1), 2)),
        (ops.unpack_bits.default, (_ops.pack_bits(idx, 2), 2, idx.numel())),
        (ops.pack_bits.default, (idx.reshape(-1).to(torch.int32) * 1000, 12)),
        (ops.unpack_bits.default, (_ops.pack_bits(idx.to(torch.int32) * 1000, 12), 12, idx.numel())),
        (ops.huffman_decode.default, (_ops.huffman_encode(idx, lengths), lengths, idx.numel())),
        (ops.huffman_code_lengths.default, (torch.tensor([5, 1, 1, 0]), 16)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
