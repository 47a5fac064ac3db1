"""The integer ops against independent references (torch float64 conv, Python integer arithmetic)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qcnn  # noqa: F401
from qcnn.export import _ops


def _conv_case(gen, n=2, c=3, h=9, w=8, m=5, k=3, codes=16, groups=1):
    x = torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.int32)
    idx = torch.randint(0, codes, (m, c * k * k), generator=gen, dtype=torch.uint8)
    cb = torch.randint(-3000, 3000, (groups, codes), generator=gen, dtype=torch.int32)
    wint = torch.gather(cb.expand(m, -1), 1, idx.long()).reshape(m, c, k, k)
    return x, idx, cb, wint


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 1), (3, 2)])
@pytest.mark.parametrize("groups", [1, 5])
def test_int_conv2d_matches_float64_conv(stride, pad, groups):
    gen = torch.Generator().manual_seed(stride * 10 + pad + groups)
    x, idx, cb, wint = _conv_case(gen, groups=groups)
    zp = 117
    ref = F.conv2d((x - zp).double(), wint.double(), stride=stride, padding=pad).round().to(torch.int32)
    dense = _ops.int_conv2d(x, zp, wint.to(torch.int16), (stride, stride), (pad, pad))
    shared = _ops.int_conv2d_shared(x, zp, idx, cb, (3, 3), (stride, stride), (pad, pad))
    assert torch.equal(dense, ref)
    assert torch.equal(shared, ref)


def test_requantize_matches_integer_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-10 ** 6, 10 ** 6, (3, 4, 5), generator=gen, dtype=torch.int32)
    mult = torch.tensor([1 << 30, -(1 << 29), 1234567891, 7], dtype=torch.int32)
    shift = torch.tensor([40, 35, 44, 3], dtype=torch.int32)
    bias = torch.tensor([1 << 39, -(1 << 33), 99, 5], dtype=torch.int64)
    out = _ops.int_requantize(x, 3, bias, mult, shift, 10, -20, 200)
    for i in range(3):
        for c in range(4):
            for j in range(5):
                v = (int(x[i, c, j]) - 3) * int(mult[c]) + int(bias[c])
                q = math.floor(v / 2 ** int(shift[c]) + 0.5) if shift[c] else v  # exact for these sizes
                q = (v + (1 << (int(shift[c]) - 1))) >> int(shift[c])  # floor((v + half) / 2^s), exact ints
                assert int(out[i, c, j]) == min(max(q + 10, -20), 200)


def test_int_add_and_pools():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (2, 3, 6, 6), generator=gen, dtype=torch.int32)
    b = torch.randint(-500, 500, (2, 3, 6, 6), generator=gen, dtype=torch.int32)
    out = _ops.int_add(a, 128, 600000000, b, 0, -200000000, 34, 5, 0, 255)
    v = (a.long() - 128) * 600000000 + b.long() * -200000000
    ref = ((v + (1 << 33)) >> 34) + 5
    assert torch.equal(out, ref.clamp(0, 255).to(torch.int32))
    mp = _ops.int_max_pool2d(b, (3, 3), (2, 2), (1, 1))
    assert torch.equal(mp, F.max_pool2d(b.double(), 3, 2, 1).to(torch.int32))
    ap = _ops.int_avg_pool2d(b, (2, 3), (2, 3))
    ref_ap = torch.floor(F.avg_pool2d(b.double(), (2, 3), (2, 3)) + 0.5).to(torch.int32)
    assert torch.equal(ap, ref_ap)


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


def test_op_argument_errors():
    x = torch.zeros(1, 2, 4, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="weight must have dtype Short"):
        _ops.int_conv2d(x, 0, torch.zeros(1, 2, 3, 3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="weight input channels"):
        _ops.int_conv2d(x, 0, torch.zeros(1, 3, 3, 3, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="larger than padded input"):
        _ops.int_conv2d(x, 0, torch.zeros(1, 2, 5, 5, dtype=torch.int16))
    with pytest.raises(RuntimeError, match="exceeds codebook size"):
        _ops.int_conv2d_shared(x, 0, torch.full((1, 18), 9, dtype=torch.uint8), torch.zeros(1, 4, dtype=torch.int32),
                               (3, 3))
    with pytest.raises(RuntimeError, match="bits must be in"):
        _ops.pack_bits(torch.zeros(3, dtype=torch.uint8), 9)
    with pytest.raises(RuntimeError, match="does not fit"):
        _ops.pack_bits(torch.full((3,), 4, dtype=torch.uint8), 2)
    with pytest.raises(RuntimeError, match="truncated"):
        _ops.huffman_decode(torch.zeros(1, dtype=torch.uint8), torch.tensor([1, 1], dtype=torch.uint8), 100)
    with pytest.raises(RuntimeError, match="shift entries"):
        _ops.int_requantize(x, 0, None, torch.ones(1, dtype=torch.int32), torch.full((1,), 70, dtype=torch.int32),
                            0, 0, 255)


def test_opcheck():
    gen = torch.Generator().manual_seed(2)
    x, idx, cb, wint = _conv_case(gen, n=1, c=2, h=5, w=5, m=3, codes=4)
    ops = torch.ops.qcnn
    cases = [
        (ops.int_conv2d.default, (x, 3, wint.to(torch.int16), [1, 1], [1, 1])),
        (ops.int_conv2d_shared.default, (x, 3, idx, cb, [3, 3], [1, 1], [0, 0])),
        (ops.int_requantize.default, (x, 1, torch.zeros(2, dtype=torch.int64), torch.full((2,), 1 << 30, dtype=torch.int32),
                                      torch.full((2,), 33, dtype=torch.int32), 0, 0, 255)),
        (ops.int_add.default, (x, 1, 1 << 20, x, 2, 1 << 21, 22, 0, 0, 255)),
        (ops.int_max_pool2d.default, (x, [2, 2], [2, 2], [0, 0])),
        (ops.int_avg_pool2d.default, (x, [2, 2], [1, 1])),
        (ops.pack_bits.default, (idx.reshape(-1), 2)),
        (ops.unpack_bits.default, (_ops.pack_bits(idx, 2), 2, idx.numel())),
        (ops.huffman_decode.default, (_ops.huffman_encode(idx, torch.tensor([2, 2, 2, 2], dtype=torch.uint8)),
                                      torch.tensor([2, 2, 2, 2], dtype=torch.uint8), idx.numel())),
        (ops.huffman_code_lengths.default, (torch.tensor([5, 1, 1, 0]), 16)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)
