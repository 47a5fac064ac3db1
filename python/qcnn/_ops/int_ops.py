"""The exporter's weight-index coding ops of csrc/ops/int_ops.cpp (pack_bits, huffman_*, and their inverses
unpack_bits / huffman_decode) with their fake (meta) kernels. CPU kernels: csrc/ops/cpu/int_ops_kernel.cpp."""
from __future__ import annotations

import torch

_ops = torch.ops.qcnn


@torch.library.register_fake("qcnn::pack_bits")
def _pack_bits_fake(values, bits):
    return values.new_empty(((values.numel() * bits + 7) // 8,), dtype=torch.uint8)


@torch.library.register_fake("qcnn::unpack_bits")
def _unpack_bits_fake(packed, bits, count):
    return packed.new_empty((count,), dtype=torch.uint8 if bits <= 8 else torch.int32)


@torch.library.register_fake("qcnn::huffman_code_lengths")
def _huffman_code_lengths_fake(counts, max_length):
    return counts.new_empty(counts.shape, dtype=torch.uint8)


@torch.library.register_fake("qcnn::huffman_encode")
def _huffman_encode_fake(values, code_lengths):
    n = torch.library.get_ctx().new_dynamic_size()
    return values.new_empty((n,))


@torch.library.register_fake("qcnn::huffman_decode")
def _huffman_decode_fake(data, code_lengths, count):
    return data.new_empty((count,))


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs values (< 2**bits; uint8 for bits <= 8, int32 for bits <= 16) LSB-first into a 1-D uint8 tensor
    (docs/FORMAT.md)."""
    return _ops.pack_bits.default(values.reshape(-1), bits)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of pack_bits: uint8 values for bits <= 8, int32 for wider ones."""
    return _ops.unpack_bits.default(packed, bits, count)


def huffman_code_lengths(counts: torch.Tensor, max_length: int = 16) -> torch.Tensor:
    return _ops.huffman_code_lengths.default(counts.to(torch.int64), max_length)


def huffman_encode(values: torch.Tensor, code_lengths: torch.Tensor) -> torch.Tensor:
    return _ops.huffman_encode.default(values.reshape(-1), code_lengths)


def huffman_decode(data: torch.Tensor, code_lengths: torch.Tensor, count: int) -> torch.Tensor:
    return _ops.huffman_decode.default(data, code_lengths, count)
