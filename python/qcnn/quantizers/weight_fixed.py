"""The fixed-point weight kind: signed Qm.n weights (Goyal et al.)."""
from __future__ import annotations

import math

import torch

from .. import ops
from ..config_errors import check_range, join_key
from ..weight_format import QuantWeight
from .weight import WeightQuantizer
from .weight_kinds import WeightKind, register_weight_kind


class FixedPointWeightQuantizer(WeightQuantizer):
    """Signed fixed point Qm.n with `bits` total bits and `frac_bits` fractional bits (Goyal et al. 2021);
    frac_bits=None picks BW - 1 - ceil(log2 max|w|) at each fit (no clipping)."""

    def __init__(self, weight_shape, bits: int, frac_bits: int | None = None):
        super().__init__(weight_shape)
        if not 2 <= bits <= 16:
            raise ValueError(f"FixedPointWeightQuantizer: bits must be in [2, 16], got {bits}")
        self.bits, self.auto_frac = bits, frac_bits is None
        self.register_buffer("frac_bits", torch.tensor(0 if frac_bits is None else int(frac_bits)))

    def _fit(self, weight: torch.Tensor) -> None:
        if self.auto_frac:
            peak = float(weight.abs().max())
            int_bits = math.ceil(math.log2(peak)) if peak > 0 else 0
            self.frac_bits.fill_(self.bits - 1 - int_bits)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        # ops.fake_quant_fixed's grid with F read as a tensor (no branch on it under torch.compile).
        top = 2 ** (self.bits - 1) - 1
        return ops.fake_quant(weight, torch.exp2(-self.frac_bits.to(torch.float32)).reshape(1), 0, -top, top)

    @torch.no_grad()
    def assignment(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.ldexp(self.quantize(weight), self.frac_bits.to(weight.dtype))).to(torch.int64)

    def levels(self, channel: int = 0) -> torch.Tensor:
        top = 2 ** (self.bits - 1) - 1
        return torch.arange(-top, top + 1).float() * 2.0 ** -int(self.frac_bits)

    def describe(self) -> dict:
        return {"type": "fixed", "bits": self.bits, "frac_bits": int(self.frac_bits)}

    @torch.no_grad()
    def deployed_weight(self, weight: torch.Tensor, layer: str = "") -> QuantWeight:
        q = self.quantize(weight).detach().to(torch.float32)
        top = 2 ** (self.bits - 1) - 1
        step = 2.0 ** -int(self.frac_bits)
        return QuantWeight.from_integers("fixed", torch.round(q / step), torch.full((weight.shape[0],), step), -top,
                                         top)


register_weight_kind(WeightKind(
    name="fixed", quantizer=FixedPointWeightQuantizer, bits=(2, 16),
    build=lambda cfg, shape: FixedPointWeightQuantizer(shape, cfg.bits, cfg.frac_bits),
    label=lambda w: f"Q fixed {w['bits']}-bit",
    validate=lambda cfg, path: check_range(join_key(path, "frac_bits"), cfg.frac_bits, -64, 64)))
