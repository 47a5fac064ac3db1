"""Activation quantization: QuantAct (uniform, learned clip initialized by an observer over a few batches) and
FixedPointAct (signed fixed point with a given format, Goyal et al. 2021), and FixedPointQuantizer, the fixed-point
quantizer FixedPointAct shares with biases (QuantConv2d/QuantLinear's bias_quant)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from .base import QuantizerModule

# torch.quantile refuses inputs above 2^24 elements; the observer subsamples to this many.
_OBSERVER_SAMPLES = 1 << 20


class QuantAct(QuantizerModule):
    """Uniform fake quantization of activations to `bits` (1..8 unsigned, 2..8 signed) with a learned clip.

    method='lsq': the step size s is an nn.Parameter trained through fake_quant's LSQ gradient
    (Esser et al. 2020; gradient scale 1/sqrt(N*Qp), N = features per sample).
    method='pact': the clip alpha is an nn.Parameter, y = clip(x, 0 or -alpha, alpha) with dy/dalpha = 1 above
    the clip (Choi et al. 2018), then quantized with step alpha/Qp and a straight-through estimator.

    The clip is initialized from an observer: between start_calibration() and finish_calibration() the module
    passes x through unchanged and records max|x| (observer='max') or the mean over batches of the
    `percentile` of |x|. Used uncalibrated, it calibrates on its first batch.

    signed='auto' (the config default) decides the sign at calibration: signed when any observed value is
    negative (after Hardswish, SiLU, LeakyReLU, a linear bottleneck, a BatchNorm after a ReLU, the image),
    unsigned otherwise, so no negative activation is silently clipped to 0. Until then the code range is the
    unsigned one (the wider: a safe accumulator bound). The decision is the buffer `is_signed`, kept in
    checkpoints and broadcast with the rest of the state under DDP.
    """

    def __init__(self, bits: int = 8, signed: bool | str = False, method: str = "lsq", observer: str = "percentile",
                 percentile: float = 99.99):
        super().__init__()
        if signed not in (True, False, "auto") or isinstance(signed, int) and not isinstance(signed, bool):
            raise ValueError(f"QuantAct: signed must be true, false or 'auto', got {signed!r}")
        low = 2 if signed is True else 1
        if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= 8:
            raise ValueError(f"QuantAct: bits must be an int in [{low}, 8] for signed={signed}, got {bits!r}")
        if method not in ("lsq", "pact"):
            raise ValueError(f"QuantAct: method must be 'lsq' or 'pact', got {method!r}")
        if observer not in ("max", "percentile"):
            raise ValueError(f"QuantAct: observer must be 'max' or 'percentile', got {observer!r}")
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"QuantAct: percentile must be in [50, 100], got {percentile}")
        self.bits, self.method = bits, method
        self.auto_sign = signed == "auto"
        self.observer, self.percentile = observer, percentile
        self.register_buffer("is_signed", torch.tensor(signed is True))
        if method == "lsq":
            self.scale = nn.Parameter(torch.tensor(1.0))
        else:
            self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("observed", torch.tensor(0.0))
        self.register_buffer("observed_batches", torch.tensor(0))
        self.calibrating = False
        self._saw_negative = False
        self._nonfinite_batches = 0

    @property
    def signed(self) -> bool:
        return bool(self.is_signed)

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints from before the sign was state carry none: they keep the constructed sign (their config's).
        state_dict.setdefault(prefix + "is_signed", self.is_signed.clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        sign = f"auto ({'signed' if self.signed else 'unsigned'})" if self.auto_sign else self.signed
        return f"bits={self.bits}, signed={sign}, method={self.method}"

    # ------------------------------------------------------------------------------- calibration
    def start_calibration(self) -> None:
        self.calibrating = True
        self._saw_negative = False
        self._nonfinite_batches = 0
        self.observed.zero_()
        self.observed_batches.zero_()

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        if self.auto_sign and not self._saw_negative:
            self._saw_negative = bool((x.detach() < 0).any())
        mag = x.detach().abs().flatten().float()
        if not bool(torch.isfinite(mag).all()):  # a NaN would turn the clip into NaN, then silently into 1.0
            self._nonfinite_batches += 1
            return
        if self.observer == "max":
            self.observed.copy_(torch.maximum(self.observed, mag.max()))
        else:
            if mag.numel() > _OBSERVER_SAMPLES:
                mag = mag[:: math.ceil(mag.numel() / _OBSERVER_SAMPLES)]
            self.observed.add_(torch.quantile(mag, self.percentile / 100.0))
        self.observed_batches.add_(1)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._nonfinite_batches:
            raise ValueError(f"the calibration data reached this quantizer with NaN or infinite values in "
                             f"{self._nonfinite_batches} batch(es)")
        if int(self.observed_batches) == 0:
            raise RuntimeError("QuantAct.finish_calibration: no batch was observed since start_calibration()")
        clip = self.observed if self.observer == "max" else self.observed / self.observed_batches
        clip = float(clip) if float(clip) > 0 else 1.0
        self.calibrating = False
        if self.auto_sign:
            if self._saw_negative and self.bits < 2:
                raise ValueError("QuantAct: the calibration data has negative values, which a 1-bit quantizer "
                                 "cannot represent signed; use bits >= 2, or signed: false to clip them to 0")
            self.is_signed.fill_(self._saw_negative)
        if self.method == "lsq":
            self.scale.fill_(clip / self.qmax)
        else:
            self.alpha.fill_(clip)
        self.calibrated.fill_(True)

    @property
    def step(self) -> torch.Tensor:
        """The quantization step (detached)."""
        return (self.scale if self.method == "lsq" else self.alpha / self.qmax).detach()

    # ----------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return x
        if self._needs_init(self.calibrated, "calibrated"):
            self.start_calibration()
            self._observe(x)
            self.finish_calibration()
        # Without a branch on the sign: the signed b-bit codes [-2^(b-1), 2^(b-1) - 1] are the unsigned ones
        # [0, 2^b - 1] minus a zero point of 2^(b-1), with equal values and gradients.
        half = 2 ** (self.bits - 1)
        zero = self.is_signed.to(torch.int32) * half
        qmax = torch.where(self.is_signed, half - 1, 2 * half - 1).to(torch.float32)  # of the signed or unsigned codes
        if self.method == "lsq":
            # LSQ's gradient scale 1 / sqrt(N * Qp), applied as s' = s + (s - s) g with the first s detached:
            # exactly s in value, d s'/d s = g.
            grad_factor = torch.rsqrt(qmax * max(x[0].numel(), 1))
            scale = self.scale.abs().clamp(min=torch.finfo(torch.float32).tiny)
            scale = scale.detach() + (scale - scale.detach()) * grad_factor
            return ops.fake_quant(x, scale, zero, 0, 2 * half - 1)
        alpha = self.alpha
        low = torch.where(self.is_signed, -alpha, torch.zeros_like(alpha))
        clipped = torch.where(x > alpha, alpha, torch.where(x < low, low, x))
        scale = (alpha.detach() / qmax).clamp(min=torch.finfo(torch.float32).tiny)
        return ops.fake_quant(clipped, scale, zero, 0, 2 * half - 1)

    def describe(self) -> dict:
        return {"type": "act", "bits": self.bits, "signed": self.signed,
                "sign_from": "calibration" if self.auto_sign else "config", "method": self.method,
                "step": float(self.step)}


def build_act_quantizer(cfg, signed: bool | None = None) -> QuantAct:
    """The activation quantizer for a qcnn.config.ActQuantConfig (`signed` overrides cfg.signed)."""
    return QuantAct(cfg.bits, cfg.signed if signed is None else signed, cfg.method, cfg.observer, cfg.percentile)


FIXED_POINT_BITS = (2, 16)
FIXED_POINT_FRAC_BITS = (-32, 32)


def check_fixed_point_format(owner: str, bits, frac_bits) -> None:
    """Raises TypeError/ValueError naming the argument unless bits is an int in [2, 16] and frac_bits an int
    in [-32, 32] (the formats qcnn exports: int16 storage at most, scales 2^-32 .. 2^32)."""
    for name, value, (low, high) in (("bits", bits, FIXED_POINT_BITS), ("frac_bits", frac_bits, FIXED_POINT_FRAC_BITS)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{owner}: {name} must be in [{low}, {high}], got {value}")


class FixedPointQuantizer(QuantizerModule):
    """Signed symmetric fixed point (Goyal et al. 2021): q = clip(round(x * 2^F), -(2^(BW-1) - 1), 2^(BW-1) - 1)
    / 2^F with BW = `bits` in [2, 16] and F = `frac_bits` in [-32, 32] (F may be negative or exceed BW), rounding
    half to even (qcnn.ops.fake_quant). The gradient is straight-through inside the range and zero where clipped.

    The format lives in two int64 buffers, `format_bits` and `format_frac_bits`, so a state dict carries it;
    `bits` and `frac_bits` read them as Python ints (what qcnn.analysis.cost and the exporter expect);
    set_format changes the format in place.
    """

    signed = True

    def __init__(self, bits: int, frac_bits: int):
        super().__init__()
        check_fixed_point_format(type(self).__name__, bits, frac_bits)
        self.register_buffer("format_bits", torch.tensor(bits, dtype=torch.int64))
        self.register_buffer("format_frac_bits", torch.tensor(frac_bits, dtype=torch.int64))

    @property
    def bits(self) -> int:
        return int(self.format_bits)

    @property
    def frac_bits(self) -> int:
        return int(self.format_frac_bits)

    def set_format(self, bits: int, frac_bits: int) -> None:
        check_fixed_point_format(f"{type(self).__name__}.set_format", bits, frac_bits)
        self.format_bits.fill_(bits)
        self.format_frac_bits.fill_(frac_bits)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> float:
        """The quantization step 2^-F (exact in float32 for F in [-32, 32])."""
        return 2.0 ** -self.frac_bits

    def extra_repr(self) -> str:
        return f"bits={self.bits}, frac_bits={self.frac_bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The format is read as tensors (no branch on it; torch.compile keeps one graph for every format):
        # clip to +-qmax * 2^-F, then round on the step. Both are exact for F in [-32, 32], BW <= 16.
        step = torch.exp2(-self.format_frac_bits.to(torch.float32))
        limit = (torch.exp2((self.format_bits - 1).to(torch.float32)) - 1) * step
        clipped = torch.where(x > limit, limit, torch.where(x < -limit, -limit, x))
        return ops.fake_quant(clipped, step.reshape(1), 0, -(2 ** 15 - 1), 2 ** 15 - 1)

    def describe(self) -> dict:
        return {"type": "fixed", "bits": self.bits, "frac_bits": self.frac_bits, "signed": True, "step": self.step}


class FixedPointAct(FixedPointQuantizer):
    """FixedPointQuantizer as a layer's input (activation) quantizer: QuantConv2d/QuantLinear accept it as act_quant.
    It needs no calibration; the format comes from its constructor (e.g. a qcnn.search.FixedPointPlan)."""

    def describe(self) -> dict:
        return {"type": "act", "method": "fixed", "bits": self.bits, "frac_bits": self.frac_bits, "signed": True,
                "step": self.step}
