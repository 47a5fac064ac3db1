"""The fake-quant ops of csrc/ops/fake_quant.cpp (torch.ops.qcnn.fake_quant*), each with its fake (meta) kernel; their
autograd is registered in C++ (csrc/ops/fake_quant_autograd.cpp)."""
from __future__ import annotations

import math

import torch

from . import check_one_device

_lib = torch.ops.qcnn

__all__ = ["fake_quant", "fake_quant_binary", "fake_quant_fixed", "fixed_point_grid"]


def _as_param(value, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)):
        return torch.tensor([value], dtype=dtype, device=device)
    raise TypeError(f"qcnn.ops: {name} must be a tensor or a number, got {type(value).__name__}")


def fake_quant(x: torch.Tensor, scale, zero_point, qmin: int, qmax: int, axis: int | None = None,
               grad_factor: float = 1.0) -> torch.Tensor:
    """Uniform affine fake quantization: ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``.

    Values equal ``torch.fake_quantize_per_tensor_affine`` (axis None) and
    ``torch.fake_quantize_per_channel_affine`` (axis given) bit for bit on finite inputs (same
    half-to-even rounding, multiplication by ``1/scale``). NaN stays NaN (torch maps it to qmin);
    +-inf goes to the ends of the grid.

    ``scale`` is a float32 tensor with one element (per tensor) or one per channel along ``axis``;
    ``zero_point`` is an int32 tensor (must lie in [qmin, qmax]) or a float32 tensor (rounded half to
    even and clamped, as for a learned zero point). qmin < qmax cover 1 to 16 bits, signed or unsigned.

    Gradients: straight-through for ``x`` (zero where the input was clipped). If ``scale`` or a float
    ``zero_point`` requires grad they get the LSQ gradients (Esser et al. 2020), multiplied by
    ``grad_factor``; torch's default is 1.0 and LSQ recommends ``1 / sqrt(numel * qmax)``. They equal
    ``torch._fake_quantize_learnable_per_{tensor,channel}_affine``'s.
    """
    scale = _as_param(scale, "scale", torch.float32, x.device)
    zero_point = _as_param(zero_point, "zero_point", torch.int32, x.device)
    if not isinstance(grad_factor, (int, float)) or not math.isfinite(grad_factor):
        raise ValueError(f"qcnn.ops.fake_quant: grad_factor must be a finite number, got {grad_factor!r}")
    for name, value in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"qcnn.ops.fake_quant: {name} must be an int, got {value!r}")
    return _FakeQuant.apply_op(x, scale, zero_point, qmin, qmax, axis, float(grad_factor))


class _FakeQuant:
    """fake_quant with grad_factor carried to the backward (it is not an argument of the op)."""

    @staticmethod
    def apply_op(x, scale, zero_point, qmin, qmax, axis, grad_factor):
        if grad_factor == 1.0:
            return _lib.fake_quant.default(x, scale, zero_point, qmin, qmax, axis)
        # Scale the qparam gradients by grad_factor without touching the value: s' = s + (s - s) * g with the
        # first s detached is exactly s (s*g + s*(1-g) is not, in float32: one ulp off) and d s'/d s = g.
        scale = scale.detach() + (scale - scale.detach()) * grad_factor
        if zero_point.is_floating_point():
            zero_point = zero_point.detach() + (zero_point - zero_point.detach()) * grad_factor
        return _lib.fake_quant.default(x, scale, zero_point, qmin, qmax, axis)


@torch.library.register_fake("qcnn::fake_quant")
def _fake_quant_fake(x, scale, zero_point, qmin, qmax, axis):
    check_one_device("fake_quant", x, scale, zero_point)
    torch._check(x.dtype in (torch.float32, torch.float16, torch.bfloat16),
                 lambda: f"qcnn: x must be float32, float16 or bfloat16, got {x.dtype}")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("qcnn::fake_quant_backward")
def _fake_quant_backward_fake(grad, x, scale, zero_point, qmin, qmax, axis, grad_factor, need_qparam_grads):
    check_one_device("fake_quant_backward", grad, x, scale, zero_point)
    qshape = scale.shape if need_qparam_grads else (0,)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            scale.new_empty(qshape), scale.new_empty(qshape))


def fake_quant_binary(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """Binary weights ``alpha * sign(w)`` with ``alpha = mean(|w|)`` per channel along ``axis``
    (per tensor when ``axis`` is None); ``sign(0) = +1``.

    Backward: the exact XNOR-Net gradient (Rastegari et al. 2016, eq. 7) with the straight-through
    estimator for sign clipped to ``|w| <= 1`` (BinaryConnect):
    ``dL/dw_k = g_k * alpha * 1{|w_k| <= 1} + sign(w_k) * mean(g * sign(w))`` over the channel.
    """
    return _lib.fake_quant_binary.default(w, axis)


@torch.library.register_fake("qcnn::fake_quant_binary")
def _fake_quant_binary_fake(w, axis):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("qcnn::fake_quant_binary_backward")
def _fake_quant_binary_backward_fake(grad, w, axis):
    check_one_device("fake_quant_binary_backward", grad, w)
    return torch.empty_like(w, memory_format=torch.contiguous_format)


def fixed_point_grid(bits: int, frac_bits: int) -> tuple[float, int, int]:
    """(scale, qmin, qmax) of the signed Qm.n grid of Goyal et al. 2021: one sign bit, symmetric narrow
    range ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``, step ``2^-frac_bits``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"qcnn: bits must be an integer in [2, 16], got {bits!r}")
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not -64 <= frac_bits <= 64:
        raise ValueError(f"qcnn: frac_bits must be an integer in [-64, 64], got {frac_bits!r}")
    qmax = 2 ** (bits - 1) - 1
    return 2.0 ** -frac_bits, -qmax, qmax


def fake_quant_fixed(x: torch.Tensor, bits: int, frac_bits: int) -> torch.Tensor:
    """Signed fixed-point fake quantization (Goyal et al. 2021):
    ``clip(round(x * 2^F), -(2^(BW-1) - 1), 2^(BW-1) - 1) / 2^F`` with BW = ``bits``, F = ``frac_bits``
    (F may be negative or larger than BW). Straight-through gradient inside the range."""
    scale, qmin, qmax = fixed_point_grid(bits, frac_bits)
    s = torch.tensor([scale], dtype=torch.float32, device=x.device)
    z = torch.zeros(1, dtype=torch.int32, device=x.device)
    return _lib.fake_quant.default(x, s, z, qmin, qmax, None)
