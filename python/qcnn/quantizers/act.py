"""Activation quantization with a learned clip, initialized by an observer over a few batches."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops

# torch.quantile refuses inputs above 2^24 elements; the observer subsamples to this many.
_OBSERVER_SAMPLES = 1 << 20


class QuantAct(nn.Module):
    """Uniform fake quantization of activations to `bits` (1..8 unsigned, 2..8 signed) with a learned clip.

    method='lsq': the step size s is an nn.Parameter trained through fake_quant's LSQ gradient
    (Esser et al. 2020; gradient scale 1/sqrt(N*Qp), N = features per sample).
    method='pact': the clip alpha is an nn.Parameter, y = clip(x, 0 or -alpha, alpha) with dy/dalpha = 1 above
    the clip (Choi et al. 2018), then quantized with step alpha/Qp and a straight-through estimator.

    The clip is initialized from an observer: between start_calibration() and finish_calibration() the module
    passes x through unchanged and records max|x| (observer='max') or the mean over batches of the
    `percentile` of |x|. Used uncalibrated, it calibrates on its first batch.
    """

    def __init__(self, bits: int = 8, signed: bool = False, method: str = "lsq", observer: str = "percentile",
                 percentile: float = 99.99):
        super().__init__()
        low = 2 if signed else 1
        if not isinstance(bits, int) or not low <= bits <= 8:
            raise ValueError(f"QuantAct: bits must be an int in [{low}, 8] for signed={signed}, got {bits!r}")
        if method not in ("lsq", "pact"):
            raise ValueError(f"QuantAct: method must be 'lsq' or 'pact', got {method!r}")
        if observer not in ("max", "percentile"):
            raise ValueError(f"QuantAct: observer must be 'max' or 'percentile', got {observer!r}")
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"QuantAct: percentile must be in [50, 100], got {percentile}")
        self.bits, self.signed, self.method = bits, signed, method
        self.observer, self.percentile = observer, percentile
        if signed:
            self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** bits - 1
        if method == "lsq":
            self.scale = nn.Parameter(torch.tensor(1.0))
        else:
            self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("calibrated", torch.tensor(False))
        self.register_buffer("observed", torch.tensor(0.0))
        self.register_buffer("observed_batches", torch.tensor(0))
        self.calibrating = False

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, method={self.method}"

    # ------------------------------------------------------------------------------- calibration
    def start_calibration(self) -> None:
        self.calibrating = True
        self.observed.zero_()
        self.observed_batches.zero_()

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        mag = x.detach().abs().flatten().float()
        if self.observer == "max":
            self.observed.copy_(torch.maximum(self.observed, mag.max()))
        else:
            if mag.numel() > _OBSERVER_SAMPLES:
                mag = mag[:: math.ceil(mag.numel() / _OBSERVER_SAMPLES)]
            self.observed.add_(torch.quantile(mag, self.percentile / 100.0))
        self.observed_batches.add_(1)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if int(self.observed_batches) == 0:
            raise RuntimeError("QuantAct.finish_calibration: no batch was observed since start_calibration()")
        clip = self.observed if self.observer == "max" else self.observed / self.observed_batches
        clip = float(clip) if float(clip) > 0 else 1.0
        self.calibrating = False
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
        if not bool(self.calibrated):
            self.start_calibration()
            self._observe(x)
            self.finish_calibration()
        zero = torch.zeros((), dtype=torch.int32, device=x.device)
        if self.method == "lsq":
            grad_factor = 1.0 / math.sqrt(max(x[0].numel(), 1) * self.qmax)
            scale = self.scale.abs().clamp(min=torch.finfo(torch.float32).tiny)
            return ops.fake_quant(x, scale, zero, self.qmin, self.qmax, grad_factor=grad_factor)
        alpha = self.alpha
        low = -alpha if self.signed else torch.zeros_like(alpha)
        clipped = torch.where(x > alpha, alpha, torch.where(x < low, low, x))
        scale = (alpha.detach() / self.qmax).clamp(min=torch.finfo(torch.float32).tiny)
        return ops.fake_quant(clipped, scale, zero, self.qmin, self.qmax)

    def describe(self) -> dict:
        return {"type": "act", "bits": self.bits, "signed": self.signed, "method": self.method,
                "step": float(self.step)}


def build_act_quantizer(cfg, signed: bool | None = None) -> QuantAct:
    """The activation quantizer for a qcnn.config.ActQuantConfig (`signed` overrides cfg.signed)."""
    return QuantAct(cfg.bits, cfg.signed if signed is None else signed, cfg.method, cfg.observer, cfg.percentile)
