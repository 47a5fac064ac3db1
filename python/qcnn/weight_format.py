"""The deployed weight formats, shared by the quantizers (which train on them) and the exporter (which writes them):
QuantWeight, a layer's weights as indices into per-channel or per-tensor tables of integer levels or codebook
entries, and the integer grid a codebook is deployed on (docs/FORMAT.md section 3)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

WEIGHT_KINDS = ("codebook", "uniform", "fixed", "binary")
MAX_WEIGHT_BITS = 16  # fixed-point weights of mixed-precision plans (docs/FORMAT.md section 3); the other kinds <= 8


def require(condition: torch.Tensor, message: str) -> None:
    """Raises ValueError(message) unless the one-element bool tensor `condition` holds; inside a compiled
    graph (which cannot branch on it) the graph checks it and raises a RuntimeError with the message."""
    if torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message)


def codebook_level_limit(bits: int) -> int:
    """Largest |integer level| of a codebook with `bits` index bits (docs/FORMAT.md section 3): 127 (int8)
    from 7 bits on, 64 up to 6 bits, so that the u8 x s8 pair sums of AVX2's vpmaddubsw stay within int16
    (2 * 255 * 64 < 2**15)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"codebook_level_limit: bits must be an int in [1, 8], got {bits!r}")
    return 64 if bits <= 6 else 127


def codebook_grid(codebook: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, levels) of the integer grid of each table (the last dimension) of `codebook`:
    scale = max|c| / limit (1 for an all-zero table), levels = round(c / scale) in [-limit, limit].
    scale is float32 [codebook.shape[:-1]], levels int64 like codebook."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 127:
        raise ValueError(f"codebook_grid: limit must be an int in [1, 127], got {limit!r}")
    if codebook.dim() not in (1, 2) or codebook.numel() == 0:
        raise ValueError(f"codebook_grid: codebook must be a non-empty [k] or [groups, k], got shape "
                         f"{tuple(codebook.shape)}")
    c = codebook.detach().to(torch.float64)
    require(torch.isfinite(c).all(), "codebook_grid: codebook contains NaN or infinite values")
    peak = c.abs().amax(dim=-1)
    # The scale keeps 17 significant bits, so scale * level (|level| <= 127, 7 bits) is exact in float32:
    # the snapped codebook is exactly scale * level and yields this same scale again (snapping is idempotent).
    mantissa, exponent = torch.frexp(peak / limit)
    scale = torch.ldexp(torch.round(mantissa * 2.0 ** 17), exponent - 17).clamp(min=2.0 ** -126)
    scale = torch.where(peak > 0, scale, torch.ones_like(scale))
    levels = torch.round(c / scale.unsqueeze(-1)).clamp(-limit, limit).to(torch.int64)
    return scale.to(torch.float32), levels


def snap_to_grid(codebook: torch.Tensor, limit: int) -> torch.Tensor:
    """The codebook moved onto its integer grid: scale * round(c / scale) per table (codebook_grid), in the
    codebook's dtype. Monotone, so a sorted table stays sorted (entries may become equal)."""
    scale, levels = codebook_grid(codebook, limit)
    return (scale.to(torch.float64).unsqueeze(-1) * levels).to(codebook.dtype)


@dataclass
class QuantWeight:
    """Quantized weights: w[m, ...] = value(g(m), indices[m, ...]) with g(m) = 0 (one codebook) or m.

    kind "codebook": value = codebook[g, idx] (float centroids).
    kind "uniform" / "fixed" / "binary": value = scale[m] * levels[g, idx] (integer levels).
    """
    kind: str
    indices: torch.Tensor                   # [M, C, kh, kw] or [M, F]: uint8 up to 8 bits, int32 above
    bits: int
    codebook: torch.Tensor | None = None    # float32 [G, k] (kind "codebook")
    levels: torch.Tensor | None = None      # int32 [G, k] (other kinds)
    scale: torch.Tensor | None = None       # float32 [M] (other kinds)

    def __post_init__(self):
        if self.kind not in WEIGHT_KINDS:
            raise ValueError(f"QuantWeight.kind must be one of {WEIGHT_KINDS}, got {self.kind!r}")
        if not 1 <= self.bits <= MAX_WEIGHT_BITS:
            raise ValueError(f"QuantWeight.bits must be in [1, {MAX_WEIGHT_BITS}], got {self.bits}")
        want = torch.uint8 if self.bits <= 8 else torch.int32
        if self.indices.dtype != want:
            raise TypeError(f"QuantWeight.indices must be {want} for {self.bits}-bit weights, got {self.indices.dtype}")
        table = self.codebook if self.kind == "codebook" else self.levels
        if table is None or table.dim() != 2:
            raise ValueError(f"QuantWeight of kind {self.kind!r} needs a 2-D "
                             f"{'codebook' if self.kind == 'codebook' else 'levels'} [G, k]")
        m = self.indices.shape[0]
        if table.shape[0] not in (1, m):
            raise ValueError(f"QuantWeight table has {table.shape[0]} groups; expected 1 or {m}")
        if table.shape[1] > 2 ** self.bits:
            raise ValueError(f"QuantWeight has {table.shape[1]} entries, more than 2**bits = {2 ** self.bits}")
        if self.indices.numel() and int(self.indices.max()) >= table.shape[1]:
            raise ValueError("QuantWeight.indices reference entries beyond the table")
        if self.kind != "codebook" and (self.scale is None or self.scale.shape != (m,)):
            raise ValueError(f"QuantWeight of kind {self.kind!r} needs scale of shape [{m}]")

    @property
    def out_channels(self) -> int:
        return self.indices.shape[0]

    @property
    def groups(self) -> int:
        return (self.codebook if self.kind == "codebook" else self.levels).shape[0]

    @property
    def codes(self) -> int:
        return (self.codebook if self.kind == "codebook" else self.levels).shape[1]

    def integer_table(self, level_limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The deployed integer form (docs/FORMAT.md section 3): (scale float64 [M], levels int64 [G, k]) with
        real weight = scale[m] * levels[g(m), index]. A codebook is read onto its integer grid, |level| <=
        level_limit (default: the grid CodebookWeightQuantizer trains on, where this is exact)."""
        m = self.out_channels
        if self.kind == "codebook":
            limit = codebook_level_limit(self.bits) if level_limit is None else level_limit
            group_scale, levels = codebook_grid(self.codebook, limit)
            return group_scale.to(torch.float64).expand(m), levels
        return self.scale.to(torch.float64), self.levels.to(torch.int64)

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        """Each weight's entry of a per-group table [G, k] (levels or codebook), shaped [M, Kin]."""
        m = self.out_channels
        return torch.gather(table.expand(m, -1), 1, self.indices.reshape(m, -1).long())

    def dequantize(self) -> torch.Tensor:
        if self.kind == "codebook":
            w = self.gather(self.codebook.to(torch.float32))
        else:
            w = self.gather(self.levels.to(torch.float32)) * self.scale.to(torch.float32)[:, None]
        return w.reshape(self.indices.shape)

    # Constructors from the usual quantizer outputs -------------------------------------------
    @staticmethod
    def from_codebook(indices: torch.Tensor, codebook: torch.Tensor) -> "QuantWeight":
        cb = codebook.detach().to(torch.float32)
        cb = cb[None] if cb.dim() == 1 else cb
        bits = max(1, int(np.ceil(np.log2(cb.shape[1]))))
        return QuantWeight("codebook", indices.to(torch.uint8), bits, codebook=cb)

    @staticmethod
    def from_integers(kind: str, w_int: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> "QuantWeight":
        """Integer weights w_int in [qmin, qmax] with per-channel (or scalar) scale."""
        if qmax < qmin:
            raise ValueError(f"qmax {qmax} < qmin {qmin}")
        w_int = w_int.detach().round().to(torch.int64)
        if w_int.numel() and (int(w_int.min()) < qmin or int(w_int.max()) > qmax):
            raise ValueError(f"integer weights outside [{qmin}, {qmax}]")
        k = qmax - qmin + 1
        bits = max(1, int(np.ceil(np.log2(k))))
        m = w_int.shape[0]
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(m).clone()
        levels = torch.arange(qmin, qmax + 1, dtype=torch.int32)[None]
        return QuantWeight(kind, (w_int - qmin).to(torch.uint8 if bits <= 8 else torch.int32), bits, levels=levels,
                           scale=scale)

    @staticmethod
    def binary(signs: torch.Tensor, alpha: torch.Tensor) -> "QuantWeight":
        """Binary weights alpha[m] * sign, sign in {-1, +1} (index 0 = -1, 1 = +1)."""
        idx = (signs.detach() > 0).to(torch.uint8)
        m = signs.shape[0]
        levels = torch.tensor([[-1, 1]], dtype=torch.int32)
        return QuantWeight("binary", idx, 1, levels=levels,
                           scale=torch.as_tensor(alpha, dtype=torch.float32).reshape(-1).expand(m).clone())
