"""Weight quantizers: modules that map latent float weights to their quantized values in the forward pass
(straight-through estimator in the backward pass). All are fitted lazily on the first forward, or by
refit(weight), which returns the fraction of weights whose quantization level changed since the last fit
(Ji et al. 2015's loop uses it as a convergence signal)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from ..weight_format import QuantWeight, codebook_grid, codebook_level_limit, snap_to_grid
from .base import QuantizerModule


def _channel_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _broadcast_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
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
    from .act import FixedPointQuantizer, QuantAct

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
            from ..codebook import cluster_change_fraction
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
        flat = _channel_view(w) if self.per_channel else w.reshape(1, -1)
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
            flat = _channel_view(w) if self.per_channel else w.reshape(1, -1)
            best_err = torch.full_like(best_scale, math.inf)
            for ratio in torch.linspace(0.3, 1.0, self.MSE_CANDIDATES).tolist():
                scale, zp = self._scale_zp(lo * ratio, hi * ratio)
                q = self._fake_quant(w, scale.float(), zp)
                err = ((_channel_view(q) if self.per_channel else q.reshape(1, -1)) - flat).pow(2).sum(dim=1)
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
        return torch.round(_channel_view(q) / scale[:, None]).abs().to(torch.float64).sum(dim=1)

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
            hi = torch.maximum(lo, 2.0 * _channel_view(w).abs().sum(dim=1) / budget * (1.0 + 1e-3))
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
        scale = _broadcast_channel(scale, q) if self.per_channel else scale.reshape(())
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


WARM_START_METHODS = ("kmeans", "kde_kmeans")  # the codebook.fit methods that take init_centroids


class CodebookWeightQuantizer(WeightQuantizer):
    """Non-uniform quantization with a 2^bits-entry codebook fitted by qcnn.codebook.fit (k-means,
    Lloyd-Max, KDE variants), per tensor or per output channel.

    The codebook is deployable as is: every table sits on its integer grid, c = scale * level with
    |level| <= codebook_level_limit(bits) (snap_to_grid; docs/FORMAT.md section 3), after each fit and, for
    trained centroids, in every forward. The exporter stores exactly these levels and scales.

    Latent float weights are kept; the forward uses each weight's nearest centroid and the gradient passes
    straight through the assignment. train_centroids=True makes the codebook a Parameter holding latent
    centroids whose gradient is the sum of the weight gradients of its cluster (Deep Compression, Han et al.
    2016): the backward of the gather below is a scatter-add over the indices; the snapping onto the grid
    is straight-through.

    warm_start=True (k-means methods): every refit after the first starts Lloyd's iterations from the current
    codebook, so the retraining loop's refits move the clusters the last round trained instead of re-drawing them.

    Incremental mode (INQ, Zhou et al. 2017): freeze(weight, fraction) fixes the largest-magnitude weights
    at their centroids; frozen weights use their stored centroid, the others stay float and keep training.

    Tables with no more weights than entries (tracks_weights: a 1-channel 3x3 stem or a depthwise 3x3 conv at
    4 bits) hold their own weights: k-means would put a centroid on every weight, so instead of staying fixed
    between refits the table follows the latent weights, each weight snapped to its table's integer grid
    (entry i of a table is its i-th weight, the rest 0). A fixed table would leave the straight-through
    gradient piling up in latents that never change level, applied all at once by the next refit
    (training/refit_probe.py). Not in incremental mode, whose frozen weights keep their stored values, nor with
    track_weights=False.
    """

    def __init__(self, weight_shape, bits: int, *, method: str = "kmeans", per_channel: bool = True,
                 train_centroids: bool = False, seed: int = 0, fit_options: dict | None = None,
                 warm_start: bool = False, track_weights: bool = True):
        super().__init__(weight_shape)
        if not 1 <= bits <= 8:
            raise ValueError(f"CodebookWeightQuantizer: bits must be in [1, 8], got {bits}")
        self.bits, self.method, self.per_channel = bits, method, per_channel
        self.warm_start = warm_start and method in WARM_START_METHODS
        self.level_limit = codebook_level_limit(bits)
        self.train_centroids, self.seed = train_centroids, seed
        self.fit_options = dict(fit_options or {})
        k = 2 ** bits
        shape = (self.weight_shape[0], k) if per_channel else (k,)
        if train_centroids:
            self.codebook = nn.Parameter(torch.zeros(shape))
        else:
            self.register_buffer("codebook", torch.zeros(shape))
        self.register_buffer("incremental", torch.tensor(False))
        self.register_buffer("frozen", torch.zeros(self.weight_shape, dtype=torch.bool))
        self.register_buffer("frozen_indices", torch.zeros(self.weight_shape, dtype=torch.int64))
        self.table_size = math.prod(self.weight_shape[1:] if per_channel else self.weight_shape)
        self.tracks_weights = track_weights and self.table_size <= k

    def _snapped_tables(self, weight: torch.Tensor) -> torch.Tensor:
        """For tracks_weights: each table's weights in order ([M, n] per channel, [n] per tensor), on its integer
        grid (the zero entries that pad a table to 2^bits do not change its grid)."""
        w = weight.detach().to(self.codebook.dtype)
        return snap_to_grid(_channel_view(w) if self.per_channel else w.reshape(-1), self.level_limit)

    def _sync_tables(self, weight: torch.Tensor) -> None:
        """For tracks_weights: the codebook becomes the snapped weights, zero-padded to 2^bits entries."""
        tables = self._snapped_tables(weight)
        self.codebook.data.copy_(nn.functional.pad(tables, (0, self.codebook.shape[-1] - self.table_size)))

    def _own_entries(self, weight: torch.Tensor) -> torch.Tensor:
        """For tracks_weights: every weight's index, its position in its table."""
        return torch.arange(self.table_size, device=weight.device).expand(
            weight.shape[0] if self.per_channel else 1, -1).reshape(weight.shape)

    def _fit(self, weight: torch.Tensor) -> None:
        if self.tracks_weights and not bool(self.incremental):
            self._sync_tables(weight)
            return
        from .. import codebook
        start = self.codebook.detach() if self.warm_start and bool(self.fitted) else None
        result = codebook.fit(weight, self.bits, method=self.method,
                              granularity="channel" if self.per_channel else "tensor", seed=self.seed,
                              init_centroids=start, **self.fit_options)
        centroids = result.codebook.to(self.codebook.dtype)
        if centroids.shape != self.codebook.shape:
            raise ValueError(f"CodebookWeightQuantizer: codebook.fit returned a codebook of shape "
                             f"{tuple(centroids.shape)}, expected {tuple(self.codebook.shape)}")
        frozen_values = self._frozen_values() if bool(self.incremental) else None
        self.codebook.data.copy_(snap_to_grid(centroids, self.level_limit))
        if frozen_values is not None:
            # Frozen weights follow the refitted codebook: their centroid becomes the nearest new one.
            self.frozen_indices.copy_(torch.where(self.frozen, self.nearest(frozen_values), self.frozen_indices))

    def effective_codebook(self) -> torch.Tensor:
        """The codebook the layer computes with: self.codebook on its integer grid. Trained centroids stay
        latent floats and are snapped here, with a straight-through gradient; a fitted codebook is already
        on the grid (snapping it again is exact)."""
        snapped = snap_to_grid(self.codebook.detach(), self.level_limit)
        if self.train_centroids:
            return snapped + (self.codebook - self.codebook.detach())
        return snapped

    def integer_codebook(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, levels) of the effective codebook: effective_codebook() == scale[..., None] * levels,
        scale float32 [M] per channel or [] per tensor, levels int64 like the codebook."""
        return codebook_grid(self.codebook.detach(), self.level_limit)

    def nearest(self, weight: torch.Tensor) -> torch.Tensor:
        return self._nearest(weight, self.effective_codebook().detach())

    def _nearest(self, weight: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
        from ..codebook import quantize_to_codebook
        # Centroids trained by gradient (train_centroids) can pass each other: search a sorted copy and
        # map its indices back to the entries of the codebook. Equal entries (after snapping) are allowed.
        book, order = torch.sort(book, dim=-1, stable=True)
        indices, _ = quantize_to_codebook(weight.detach(), book)
        return self._lookup(order, indices.to(torch.int64))

    def _lookup(self, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """table[channel, index] per output channel (table[index] per tensor), shaped like indices."""
        if self.per_channel:
            return table.gather(1, _channel_view(indices)).reshape(indices.shape)
        return table[indices]

    def _frozen_values(self) -> torch.Tensor:
        return self._lookup(self.effective_codebook().detach(), self.frozen_indices)

    def quantize(self, weight: torch.Tensor) -> torch.Tensor:
        compiling = torch.compiler.is_compiling()
        if not compiling and bool(self.incremental):
            return torch.where(self.frozen, self._lookup(self.effective_codebook(), self.frozen_indices), weight)
        if self.tracks_weights:  # no codebook to read: the table is the weights
            q = self._snapped_tables(weight).reshape(weight.shape).to(weight.dtype) + (weight - weight.detach())
        elif self.train_centroids:
            book = self.effective_codebook()
            q = self._lookup(book, self._nearest(weight, book.detach())) + (weight - weight.detach())
        else:
            from ..codebook import quantize_to_codebook
            _, dequantized = quantize_to_codebook(weight.detach(), self.effective_codebook())
            # Straight-through: the value is exactly `dequantized` (w - w.detach() is exactly zero), the
            # gradient flows to the latent weight.
            q = dequantized + (weight - weight.detach())
        if compiling:  # the incremental (INQ) select above, without a branch on the flag
            frozen_values = self._lookup(self.effective_codebook(), self.frozen_indices)
            q = torch.where(self.incremental & self.frozen, frozen_values, torch.where(self.incremental, weight, q))
        return q

    @torch.no_grad()
    def assignment(self, weight: torch.Tensor) -> torch.Tensor:
        if self.tracks_weights and not bool(self.incremental):
            return self._own_entries(weight)
        return self.nearest(weight)

    @torch.no_grad()
    def deployed(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, codebook) such that codebook[table, index] is each weight's value in the forward: the
        exporter's weights. A table that tracks its weights is brought up to date with them first."""
        if bool(self.incremental):
            return self.frozen_indices, self.effective_codebook().detach()
        if self.tracks_weights:
            self._sync_tables(weight)
        return self.assignment(weight), self.effective_codebook().detach()

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor, fraction: float) -> float:
        """INQ step: switches to incremental mode and freezes the largest-magnitude unfrozen weights until
        `fraction` of the layer is frozen. Returns the frozen fraction."""
        self._check(weight)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"CodebookWeightQuantizer.freeze: fraction must be in (0, 1], got {fraction}")
        if not bool(self.fitted):
            self.refit(weight)
        self.incremental.fill_(True)
        target = min(weight.numel(), round(fraction * weight.numel()))
        extra = target - int(self.frozen.sum())
        if extra > 0:
            magnitude = weight.detach().abs().flatten().masked_fill(self.frozen.flatten(), -1.0)
            chosen = torch.topk(magnitude, extra, sorted=False).indices
            newly = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            newly[chosen] = True
            newly = newly.reshape(weight.shape)
            self.frozen_indices.copy_(torch.where(newly, self.nearest(weight), self.frozen_indices))
            self.frozen |= newly
        return float(self.frozen.float().mean())

    def levels(self, channel: int = 0) -> torch.Tensor:
        book = self.effective_codebook().detach()
        return book[channel] if self.per_channel else book

    def describe(self) -> dict:
        return {"type": "codebook", "bits": self.bits, "method": self.method,
                "codebook": self.effective_codebook().detach().tolist(),
                "frozen_fraction": float(self.frozen.float().mean())}

    def deployed_weight(self, weight: torch.Tensor, layer: str = "") -> QuantWeight:
        if bool(self.incremental) and not bool(self.frozen.all()):
            raise ValueError(f"layer {layer!r}: incremental quantization has frozen only "
                             f"{float(self.frozen.float().mean()):.0%} of the weights; export needs all of them frozen")
        return QuantWeight.from_codebook(*self.deployed(weight))


def build_weight_quantizer(cfg, weight_shape) -> WeightQuantizer:
    """The weight quantizer for a qcnn.config.WeightQuantConfig. With cfg.accumulator_bits the quantizer
    still needs its input range (bind_accumulator_input) before the first forward."""
    per_channel = cfg.granularity == "channel"
    if cfg.kind == "uniform":
        return UniformWeightQuantizer(weight_shape, cfg.bits, per_channel=per_channel, symmetric=cfg.symmetric,
                                      calibration=cfg.calibration, learn_scale=cfg.learn_scale,
                                      accumulator_bits=getattr(cfg, "accumulator_bits", None))
    if cfg.kind == "binary":
        return BinaryWeightQuantizer(weight_shape, per_channel=per_channel)
    if cfg.kind == "fixed":
        return FixedPointWeightQuantizer(weight_shape, cfg.bits, cfg.frac_bits)
    if cfg.kind == "codebook":
        return CodebookWeightQuantizer(weight_shape, cfg.bits, method=cfg.method, per_channel=per_channel,
                                       train_centroids=cfg.train_centroids, fit_options=cfg.fit_options,
                                       warm_start=cfg.warm_start, track_weights=cfg.track_weights)
    raise ValueError(f"build_weight_quantizer: unknown kind {cfg.kind!r}")
