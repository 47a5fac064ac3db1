"""The binary weight kind: alpha * sign(w) (XNOR-Net / BWN; O'Keeffe & Villing)."""
from __future__ import annotations

import torch

from .. import ops
from ..weight_format import QuantWeight
from .weight import WeightQuantizer
from .weight_kinds import WeightKind, register_weight_kind


class BinaryWeightQuantizer(WeightQuantizer):
    """alpha * sign(w), alpha = mean|w| per output channel or per tensor (XNOR-Net/BWN); gradient passed
    straight through where |w| <= 1."""

    def __init__(self, weight_shape, *, per_channel: bool = True):
        super().__init__(weight_shape)
        self.per_channel = per_channel
        self.bits = 1

    def _fit(self, weight: torch.Tensor) -> None:
        pass  # alpha is recomputed from the weights in every forward

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        return ops.fake_quant_binary(weight, axis=0 if self.per_channel else None)

    @torch.no_grad()
    def assignment(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.quantize(weight) > 0).to(torch.int64)

    @torch.no_grad()
    def levels(self, channel: int = 0) -> torch.Tensor:
        return torch.tensor([])

    def describe(self) -> dict:
        return {"type": "binary"}

    @torch.no_grad()
    def deployed_weight(self, weight: torch.Tensor, layer: str = "") -> QuantWeight:
        q = self.quantize(weight).detach().to(torch.float32)
        return QuantWeight.binary(q, q.abs().reshape(weight.shape[0], -1).amax(dim=1))


register_weight_kind(WeightKind(
    name="binary", quantizer=BinaryWeightQuantizer, bits=(1, 1),
    build=lambda cfg, shape: BinaryWeightQuantizer(shape, per_channel=cfg.granularity == "channel"),
    label=lambda w: "binary"))
