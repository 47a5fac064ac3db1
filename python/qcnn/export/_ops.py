"""Python entry points and fake (meta) kernels of the integer-inference ops (torch.ops.qcnn.int_*,
pack_bits, huffman_*). The CPU kernels live in csrc/ops/cpu/int_ops_kernel.cpp over csrc/core."""
from __future__ import annotations

import torch

_ops = torch.ops.qcnn


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@torch.library.register_fake("qcnn::pack_bits")
def _pack_bits_fake(values, bits):
    return values.new_empty(((values.numel() * bits + 7) // 8,))


@torch.library.register_fake("qcnn::unpack_bits")
def _unpack_bits_fake(packed, bits, count):
    return packed.new_empty((count,))


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


@torch.library.register_fake("qcnn::int_conv2d")
def _int_conv2d_fake(x, x_zero_point, weight, stride, padding):
    n, _, h, w = x.shape
    m, _, kh, kw = weight.shape
    return x.new_empty((n, m, _out_size(h, kh, stride[0], padding[0]), _out_size(w, kw, stride[1], padding[1])))


@torch.library.register_fake("qcnn::int_conv2d_shared")
def _int_conv2d_shared_fake(x, x_zero_point, indices, codebook, kernel_size, stride, padding):
    n, _, h, w = x.shape
    return x.new_empty((n, indices.shape[0], _out_size(h, kernel_size[0], stride[0], padding[0]),
                        _out_size(w, kernel_size[1], stride[1], padding[1])))


@torch.library.register_fake("qcnn::int_requantize")
def _int_requantize_fake(x, x_zero_point, bias, multiplier, shift, zero_point, qmin, qmax):
    return torch.empty_like(x)


@torch.library.register_fake("qcnn::int_add")
def _int_add_fake(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, zero_point, qmin, qmax):
    return torch.empty_like(a)


@torch.library.register_fake("qcnn::int_max_pool2d")
def _int_max_pool2d_fake(x, kernel_size, stride, padding):
    n, c, h, w = x.shape
    return x.new_empty((n, c, _out_size(h, kernel_size[0], stride[0], padding[0]),
                        _out_size(w, kernel_size[1], stride[1], padding[1])))


@torch.library.register_fake("qcnn::int_avg_pool2d")
def _int_avg_pool2d_fake(x, kernel_size, stride):
    n, c, h, w = x.shape
    return x.new_empty((n, c, _out_size(h, kernel_size[0], stride[0], 0), _out_size(w, kernel_size[1], stride[1], 0)))


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs uint8 values (< 2**bits) LSB-first into a 1-D uint8 tensor (docs/FORMAT.md)."""
    return _ops.pack_bits.default(values.reshape(-1), bits)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    return _ops.unpack_bits.default(packed, bits, count)


def huffman_code_lengths(counts: torch.Tensor, max_length: int = 16) -> torch.Tensor:
    return _ops.huffman_code_lengths.default(counts.to(torch.int64), max_length)


def huffman_encode(values: torch.Tensor, code_lengths: torch.Tensor) -> torch.Tensor:
    return _ops.huffman_encode.default(values.reshape(-1), code_lengths)


def huffman_decode(data: torch.Tensor, code_lengths: torch.Tensor, count: int) -> torch.Tensor:
    return _ops.huffman_decode.default(data, code_lengths, count)


def int_conv2d(x, x_zero_point: int, weight, stride=(1, 1), padding=(0, 0)) -> torch.Tensor:
    """int32 accumulators of a convolution of int32 codes (minus their zero point) with int16 weights."""
    return _ops.int_conv2d.default(x, x_zero_point, weight, list(stride), list(padding))


def int_conv2d_shared(x, x_zero_point: int, indices, codebook, kernel_size, stride=(1, 1), padding=(0, 0)):
    """Same accumulators as int_conv2d, computed by weight sharing (sum inputs per centroid, then k products)."""
    return _ops.int_conv2d_shared.default(x, x_zero_point, indices, codebook, list(kernel_size), list(stride),
                                          list(padding))


def int_requantize(x, x_zero_point: int, bias, multiplier, shift, zero_point: int, qmin: int, qmax: int):
    return _ops.int_requantize.default(x, x_zero_point, bias, multiplier, shift, zero_point, qmin, qmax)


def int_add(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, zero_point, qmin, qmax):
    return _ops.int_add.default(a, a_zero_point, a_multiplier, b, b_zero_point, b_multiplier, shift, zero_point,
                                qmin, qmax)


def int_max_pool2d(x, kernel_size, stride, padding=(0, 0)):
    return _ops.int_max_pool2d.default(x, list(kernel_size), list(stride), list(padding))


def int_avg_pool2d(x, kernel_size, stride):
    return _ops.int_avg_pool2d.default(x, list(kernel_size), list(stride))
