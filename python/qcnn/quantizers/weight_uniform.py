"""The uniform weight kind: affine or symmetric integer grids per tensor or channel, with LSQ scales and the
accumulator constraint (A2Q-style, de Bruin et al.'s bit widths)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..config_errors import ConfigError, check_range, join_key
from ..weight_format import QuantWeight
from .weight import (WeightQuantizer, accumulator_l1_budget, broadcast_channel, channel_view,
                     check_accumulator_bits)
from .weight_kinds import WeightKind, register_weight_kind


class UniformWeightQuantizer(WeightQuantizer):
    """Uniform affine or symmetric quantization, per tensor or per output channel (axis 0).
    Scale from max|w| or from a clip search minimizing the squared error (calibration='mse'); with
    learn_scale=True the scale is an nn.Parameter trained through fake_quant's LSQ gradient
    (Esser et al. 2020, gradient scale 1/sqrt(N*Qp))."""

    MSE_CANDIDATES = 48

    def __init__(self, weight_shape, bits: int, *, per_channel: bool = True, symmetric: bool = True,
                 calibration: str = "mse", learn_scale: bool = False, accumulator_bits: int | None = None):
        super().__init__(weight_shape)
        if not 2 <= bits <= 8:
            raise ValueError(f"UniformWeightQuantizer: bits must be in [2, 8], got {bits}")
        if calibration not in ("max", "mse"):
            raise ValueError(f"UniformWeightQuantizer: calibration must be 'max' or 'mse', got {calibration!r}")
        if accumulator_bits is not None:
            check_accumulator_bits("UniformWeightQuantizer", accumulator_bits)
            if not symmetric:
                raise ValueError("UniformWeightQuantizer: accumulator_bits needs symmetric=True (the L1 bound is on "
                                 "the integer weights, which an asymmetric zero point shifts)")
        self.bits, self.per_channel, self.symmetric = bits, per_channel, symmetric
        self.calibration, self.learn_scale = calibration, learn_scale
        # The accumulator constraint (A2Q-style, see constrained_scale); plain attributes, not state, so the
        # state dict is the same with or without it. input_code_range is set by bind_input_range.
        self.accumulator_bits = accumulator_bits
        self.input_code_range: int | None = None
        self._last_scale: torch.Tensor | None = None
        if symmetric:
            self.qmin, self.qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** bits - 1
        n = self.weight_shape[0] if per_channel else 1
        scale = torch.ones(n)
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))

    @property
    def axis(self) -> int | None:
        return 0 if self.per_channel else None

    def _scale_arg(self, scale: torch.Tensor) -> torch.Tensor:
        return scale if self.per_channel else scale.reshape(())

    def _zp_arg(self, zp: torch.Tensor) -> torch.Tensor:
        return zp if self.per_channel else zp.reshape(())

    def _ranges(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = channel_view(w) if self.per_channel else w.reshape(1, -1)
        return flat.min(dim=1).values.clamp(max=0), flat.max(dim=1).values.clamp(min=0)

    def _scale_zp(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tiny = torch.finfo(torch.float32).tiny
        if self.symmetric:
            scale = (torch.maximum(-lo, hi) / self.qmax).clamp(min=tiny)
            return scale, torch.zeros_like(scale, dtype=torch.int32)
        scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=tiny)
        zp = (self.qmin - torch.round(lo / scale)).clamp(self.qmin, self.qmax).to(torch.int32)
        return scale, zp

    def _fake_quant(self, w, scale, zp, grad_factor: float = 1.0):
        return ops.fake_quant(w, self._scale_arg(scale), self._zp_arg(zp), self.qmin, self.qmax, axis=self.axis,
                              grad_factor=grad_factor)

    def _fit(self, w: torch.Tensor) -> None:
        if self.learn_scale and bool(self.fitted):
            return  # a learned scale is initialized once, then trained
        lo, hi = self._ranges(w)
        best_scale, best_zp = self._scale_zp(lo, hi)
        if self.calibration == "mse":
            flat = channel_view(w) if self.per_channel else w.reshape(1, -1)
            best_err = torch.full_like(best_scale, math.inf)
            for ratio in torch.linspace(0.3, 1.0, self.MSE_CANDIDATES).tolist():
                scale, zp = self._scale_zp(lo * ratio, hi * ratio)
                q = self._fake_quant(w, scale.float(), zp)
                err = ((channel_view(q) if self.per_channel else q.reshape(1, -1)) - flat).pow(2).sum(dim=1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_scale = torch.where(better, scale, best_scale)
                best_zp = torch.where(better, zp, best_zp)
        self.scale.data.copy_(best_scale)
        self.zero_point.copy_(best_zp)

    def effective_scale(self) -> torch.Tensor:
        """The scale in use: a learned scale enters as |s| (at least the smallest normal float), so an
        optimizer step across zero cannot make it invalid."""
        if not self.learn_scale:
            return self.scale.detach()
        return self.scale.abs().clamp(min=torch.finfo(torch.float32).tiny)

    # ------------------------------------------------------------------ accumulator constraint
    def bind_input_range(self, code_range: int) -> None:
        """Sets max|x - z_x|, the largest input code magnitude (after the zero point) the layer's integer
        accumulator sees (act_code_range of its input quantizer); needed before the first forward when
        accumulator_bits is set."""
        if self.accumulator_bits is None:
            raise ValueError("UniformWeightQuantizer.bind_input_range: the quantizer has no accumulator_bits")
        if isinstance(code_range, bool) or not isinstance(code_range, int) or not 1 <= code_range <= 32767:
            raise ValueError(f"UniformWeightQuantizer.bind_input_range: code_range must be an int in [1, 32767], "
                             f"got {code_range!r}")
        if accumulator_l1_budget(self.accumulator_bits, code_range) < 1:
            raise ValueError(f"UniformWeightQuantizer.bind_input_range: accumulator_bits {self.accumulator_bits} "
                             f"leaves no nonzero integer weight for inputs up to {code_range} "
                             f"((2^(P-1) - 1) // {code_range} = 0)")
        self.input_code_range = code_range

    @property
    def l1_budget(self) -> int | None:
        """T = floor((2^(P-1) - 1) / max|x - z_x|): the largest per-channel L1 norm of the integer weights
        that keeps the accumulator overflow-free (None without a constraint)."""
        if self.accumulator_bits is None:
            return None
        if self.input_code_range is None:
            raise ValueError("UniformWeightQuantizer: accumulator_bits is set but the input range is not bound; "
                             "call bind_input_range (qcnn.quantize_ does it from the layer's input quantizer)")
        return accumulator_l1_budget(self.accumulator_bits, self.input_code_range)

    def _integer_l1(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Per-channel L1 norm of the integer weights fake_quant produces at per-channel `scale` [M]."""
        q = ops.fake_quant(weight, scale, torch.zeros_like(scale, dtype=torch.int32), self.qmin, self.qmax, axis=0)
        return torch.round(channel_view(q) / scale[:, None]).abs().to(torch.float64).sum(dim=1)

    @torch.no_grad()
    def constrained_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The per-channel (or per-tensor) scale s' >= effective_scale() that satisfies the accumulator
        constraint, detached; effective_scale() itself when the constraint does not bind or is absent.

        The engine computes acc = sum_k (x_k - z_x) * w_int[k] (docs/FORMAT.md section 4). With
        X = max|x - z_x| every partial sum, in any order, obeys |acc| <= X * ||w_int,c||_1, so
        ||w_int,c||_1 <= T = floor((2^(P-1) - 1) / X) makes |acc| <= 2^(P-1) - 1 for every input: a signed
        P-bit accumulator never overflows (A2Q, Colbert et al. 2023, with qcnn's exact code range: X is
        2^b_x - 1 for unsigned b_x-bit codes, 2^(b_x-1) for signed ones, where A2Q bounds it by 2^(b_x - 1[signed])).
        ||round(w / s)||_1 does not increase with s, so the smallest s' >= s meeting it is found by bisection
        (on log s, 24 steps) between s and 2 ||w_c||_1 / T, which is always feasible (|round(v)| <= 2|v|); the
        integers are computed by the same fake_quant as the forward, so the bound holds exactly."""
        scale = self.effective_scale().detach().to(torch.float32).reshape(-1)
        if self.accumulator_bits is None:
            return scale if self.per_channel else scale.reshape(())
        budget = float(self.l1_budget)
        w = weight.detach().to(torch.float32)
        m = w.shape[0]
        lo = scale.expand(m).clone()
        feasible = self._integer_l1(w, lo) <= budget
        compiling = torch.compiler.is_compiling()
        if not compiling and bool(feasible.all()):
            result = lo
        else:
            hi = torch.maximum(lo, 2.0 * channel_view(w).abs().sum(dim=1) / budget * (1.0 + 1e-3))
            # 2 ||w_c||_1 / T is feasible in exact arithmetic; doubling absorbs float rounding. A compiled graph
            # cannot stop early: it takes a few doublings (no-ops once feasible) and checks the result.
            if compiling:
                for _ in range(4):
                    hi = torch.where(self._integer_l1(w, hi) > budget, hi * 2.0, hi)
                torch._assert_async((self._integer_l1(w, hi) <= budget).all(),
                                    "UniformWeightQuantizer.constrained_scale: no feasible scale found")
            else:
                for _ in range(60):
                    bad = self._integer_l1(w, hi) > budget
                    if not bool(bad.any()):
                        break
                    hi = torch.where(bad, hi * 2.0, hi)
                else:
                    raise RuntimeError("UniformWeightQuantizer.constrained_scale: no feasible scale found")
            hi = torch.where(feasible, lo, hi)
            for _ in range(24):
                mid = torch.sqrt(lo) * torch.sqrt(hi)
                ok = self._integer_l1(w, mid) <= budget
                hi = torch.where(ok, mid, hi)
                lo = torch.where(ok, lo, mid)
            result = torch.where(feasible, lo, hi)
        if not self.per_channel:
            result = result.max().reshape(())
        return result

    def quantization_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The scale the forward uses for `weight` (detached): effective_scale(), or constrained_scale(weight)
        under an accumulator constraint. The exporter stores it."""
        if self.accumulator_bits is None:
            return self.effective_scale().detach()
        return self.constrained_scale(weight)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        grad_factor = 1.0
        if self.learn_scale:
            per_scale = weight.numel() // self.scale.numel()
            grad_factor = 1.0 / math.sqrt(per_scale * self.qmax)
        scale = self.effective_scale()
        if self.accumulator_bits is not None:
            constrained = self.constrained_scale(weight).reshape(scale.shape)
            self._last_scale = constrained
            if self.learn_scale:
                # The value must be exactly s' (the bound is proven on these integers), so the LSQ gradient
                # factor is applied here, through s' = s * (s' / s), and fake_quant gets grad_factor 1.
                ratio = (constrained / scale.detach()).clamp(max=1e6)
                scale = constrained + (scale - scale.detach()) * (ratio * grad_factor)
                grad_factor = 1.0
            else:
                scale = constrained
        return self._fake_quant(weight, scale, self.zero_point, grad_factor)

    @torch.no_grad()
    def assignment(self, weight: torch.Tensor) -> torch.Tensor:
        q = self.quantize(weight)
        scale = self.quantization_scale(weight)
        scale = broadcast_channel(scale, q) if self.per_channel else scale.reshape(())
        return torch.round(q / scale).to(torch.int64)

    def levels(self, channel: int = 0) -> torch.Tensor:
        """The grid of `channel`; under an accumulator constraint the grid of the last forward (whose scale
        depends on the weights), before any forward the unconstrained one."""
        i = channel if self.per_channel else 0
        scale = self.effective_scale().detach()
        if self.accumulator_bits is not None and self._last_scale is not None:
            scale = self._last_scale
        scale = scale.reshape(-1)
        return (torch.arange(self.qmin, self.qmax + 1) - self.zero_point[i]).float() * scale[i if self.per_channel else 0]

    def describe(self) -> dict:
        out = {"type": "uniform", "bits": self.bits, "scale": self.effective_scale().detach().tolist(),
               "zero_point": self.zero_point.tolist()}
        if self.accumulator_bits is not None:
            out.update(accumulator_bits=self.accumulator_bits, input_code_range=self.input_code_range)
            if self._last_scale is not None:
                out["constrained_scale"] = self._last_scale.tolist()
        return out

    @torch.no_grad()
    def deployed_weight(self, weight: torch.Tensor, layer: str = "") -> QuantWeight:
        # value = scale * (code - zero_point), code in [qmin, qmax]: index = code - qmin, level = index + qmin - zp.
        m = weight.shape[0]
        q = self.quantize(weight).detach().to(torch.float32)
        scale = self.quantization_scale(weight).to(torch.float32).reshape(-1).expand(m)
        zp = self.zero_point.reshape(-1).to(torch.int32)
        ints = torch.round(q / scale.reshape((m,) + (1,) * (q.dim() - 1))).to(torch.int64)
        zp_m = zp.expand(m).reshape((m,) + (1,) * (q.dim() - 1)).to(torch.int64)
        indices = (ints + zp_m - self.qmin).to(torch.uint8)
        levels = (torch.arange(self.qmin, self.qmax + 1, dtype=torch.int32)[None] - zp[:, None]).contiguous()
        bits = max(1, math.ceil(math.log2(self.qmax - self.qmin + 1)))
        return QuantWeight("uniform", indices, bits, levels=levels, scale=scale.clone())


def _validate(cfg, path: str) -> None:
    if cfg.accumulator_bits is not None:
        key = join_key(path, "accumulator_bits")
        check_range(key, cfg.accumulator_bits, 2, 32)
        if not cfg.symmetric:
            raise ConfigError(key, "needs symmetric: true (the L1 bound is on integer weights without a zero point)")


register_weight_kind(WeightKind(
    name="uniform", quantizer=UniformWeightQuantizer, bits=(2, 8),
    build=lambda cfg, shape: UniformWeightQuantizer(
        shape, cfg.bits, per_channel=cfg.granularity == "channel", symmetric=cfg.symmetric,
        calibration=cfg.calibration, learn_scale=cfg.learn_scale,
        accumulator_bits=getattr(cfg, "accumulator_bits", None)),
    label=lambda w: f"{w['bits']}-bit uniform ({w['granularity']}{', LSQ' if w.get('learn_scale') else ''})",
    options={"accumulator_bits": lambda cfg: cfg.accumulator_bits is not None,
             "learn_scale": lambda cfg: cfg.learn_scale},
    validate=_validate))
