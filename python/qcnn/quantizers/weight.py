"""Weight quantizers: modules that map latent float weights to their quantized values in the forward pass
(straight-through estimator in the backward pass). All are fitted lazily on the first forward, or by
refit(weight), which returns the fraction of weights whose quantization level changed since the last fit
(Ji et al. 2015's loop uses it as a convergence signal). Here: their base class, the accumulator-constraint
helpers and build_weight_quantizer; each kind's quantizer is in its module (weight_uniform, weight_binary,
weight_fixed, weight_codebook), registered in weight_kinds."""
from __future__ import annotations

import torch

from ..codebook import cluster_change_fraction
from ..weight_format import QuantWeight
from .act import FixedPointQuantizer, QuantAct
from .base import QuantizerModule
from .weight_kinds import weight_kind


def channel_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def broadcast_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


ACCUMULATOR_BITS = (2, 32)


def check_accumulator_bits(owner: str, accumulator_bits) -> None:
    """Raises TypeError/ValueError naming `accumulator_bits` unless it is an int P in [2, 32]."""
    if isinstance(accumulator_bits, bool) or not isinstance(accumulator_bits, int):
        raise TypeError(f"{owner}: accumulator_bits must be an int, got {type(accumulator_bits).__name__} "
                        f"{accumulator_bits!r}")
    if not ACCUMULATOR_BITS[0] <= accumulator_bits <= ACCUMULATOR_BITS[1]:
        raise ValueError(f"{owner}: accumulator_bits must be in {list(ACCUMULATOR_BITS)}, got {accumulator_bits}")


def accumulator_l1_budget(accumulator_bits: int, code_range: int) -> int:
    """T = floor((2^(P-1) - 1) / X): with every |x - z_x| <= X and ||w_int,c||_1 <= T, every partial sum of
    a channel's accumulator is within +-(2^(P-1) - 1), the range of a signed P-bit integer."""
    check_accumulator_bits("accumulator_l1_budget", accumulator_bits)
    if isinstance(code_range, bool) or not isinstance(code_range, int) or code_range < 1:
        raise ValueError(f"accumulator_l1_budget: code_range must be a positive int, got {code_range!r}")
    return (2 ** (accumulator_bits - 1) - 1) // code_range


def act_code_range(act) -> int:
    """max|x - z_x| of the integer codes an input quantizer feeds the accumulator, as the exporter writes its
    QParams (zero point 0): unsigned QuantAct 2^b - 1; signed LSQ -qmin = 2^(b-1); signed PACT and fixed point
    (symmetric) 2^(b-1) - 1."""
    if isinstance(act, QuantAct):
        if act.signed and act.method == "pact":
            return act.qmax
        return max(abs(act.qmin), abs(act.qmax))
    if isinstance(act, FixedPointQuantizer):
        return act.qmax
    raise TypeError(f"act_code_range: act must be a QuantAct or a FixedPointQuantizer, got {type(act).__name__}")


def bind_accumulator_input(weight_quant, act_quant, layer: str = "") -> None:
    """Gives a weight quantizer with an accumulator constraint the code range of its layer's input
    quantizer; does nothing for quantizers without one. A constrained layer without an input quantizer is a
    ValueError naming the layer."""
    if getattr(weight_quant, "accumulator_bits", None) is None:
        return
    if act_quant is None:
        raise ValueError(f"layer {layer!r}: accumulator_bits needs an input (activation) quantizer, whose code "
                         "range bounds the accumulator; the layer has none")
    weight_quant.bind_input_range(act_code_range(act_quant))


class WeightQuantizer(QuantizerModule):
    """Base class. Subclasses implement _fit(weight) and quantize(weight), and assignment(weight) giving
    an integer level per weight."""

    def __init__(self, weight_shape: tuple[int, ...] | torch.Size):
        super().__init__()
        self.weight_shape = tuple(weight_shape)
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("fit_assignment", torch.zeros(self.weight_shape, dtype=torch.int64))

    def _check(self, weight: torch.Tensor) -> None:
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"{type(self).__name__}: weight shape {tuple(weight.shape)} does not match the "
                             f"quantizer's {self.weight_shape}")

    @torch.no_grad()
    def refit(self, weight: torch.Tensor, fit: bool = True) -> float | None:
        """Fits on the current latent weights (fit=False only recomputes the assignment). Returns the
        fraction of weights whose level changed since the previous fit, None on the first fit."""
        self._check(weight)
        w = weight.detach()
        if fit or not bool(self.fitted):
            self._fit(w)
        new = self.assignment(w)
        change = None
        if bool(self.fitted):
            change = float(cluster_change_fraction(self.fit_assignment, new))
        self.fit_assignment.copy_(new)
        self.fitted.fill_(True)
        return change

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._needs_init(self.fitted, "fitted"):
            self.refit(weight)
        return self.quantize(weight)

    def _fit(self, weight: torch.Tensor) -> None:  # pragma: no cover - every subclass overrides
        raise TypeError(f"{type(self).__name__} must implement _fit")

    def levels(self, channel: int = 0) -> torch.Tensor:
        """The quantization levels (of `channel` for per-channel quantizers), for plots."""
        raise TypeError(f"{type(self).__name__} must implement levels")

    def describe(self) -> dict:
        return {"type": type(self).__name__}

    def deployed_weight(self, weight: torch.Tensor, layer: str = "") -> QuantWeight:
        """The weights the forward computes, as the exporter writes them (qcnn.weight_format.QuantWeight): indices
        into per-channel or per-tensor level (or codebook) tables. `layer` names the layer in errors."""
        raise TypeError(f"layer {layer!r}: no export for weight quantizer {type(self).__name__}")


def build_weight_quantizer(cfg, weight_shape) -> WeightQuantizer:
    """The weight quantizer for a qcnn.config.WeightQuantConfig, built by its kind (weight_kinds). With
    cfg.accumulator_bits the quantizer still needs its input range (bind_accumulator_input) before the first
    forward."""
    try:
        kind = weight_kind(cfg.kind)
    except KeyError:
        raise ValueError(f"build_weight_quantizer: unknown kind {cfg.kind!r}") from None
    return kind.build(cfg, weight_shape)
