"""The codebook weight kind: 2^bits-entry codebooks fitted by qcnn.codebook (Ji et al., Seo & Kim), on their
deployable integer grid, with trained centroids and incremental (INQ) freezing."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import codebook
from ..codebook import quantize_to_codebook
from ..config_errors import ConfigError, join_key
from ..weight_format import QuantWeight, codebook_grid, codebook_level_limit, snap_to_grid
from .weight import WeightQuantizer, channel_view
from .weight_kinds import WeightKind, register_weight_kind


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
        return snap_to_grid(channel_view(w) if self.per_channel else w.reshape(-1), self.level_limit)

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
        # Centroids trained by gradient (train_centroids) can pass each other: search a sorted copy and
        # map its indices back to the entries of the codebook. Equal entries (after snapping) are allowed.
        book, order = torch.sort(book, dim=-1, stable=True)
        indices, _ = quantize_to_codebook(weight.detach(), book)
        return self._lookup(order, indices.to(torch.int64))

    def _lookup(self, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """table[channel, index] per output channel (table[index] per tensor), shaped like indices."""
        if self.per_channel:
            return table.gather(1, channel_view(indices)).reshape(indices.shape)
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


def _validate(cfg, path: str) -> None:
    for key, value in cfg.fit_options.items():
        try:  # one option at a time, so that the error names its key
            codebook.check_options(cfg.method, **{key: value})
        except (TypeError, ValueError) as err:
            raise ConfigError(join_key(join_key(path, "fit_options"), key), str(err)) from None


register_weight_kind(WeightKind(
    name="codebook", quantizer=CodebookWeightQuantizer, bits=(1, 8),
    build=lambda cfg, shape: CodebookWeightQuantizer(
        shape, cfg.bits, method=cfg.method, per_channel=cfg.granularity == "channel",
        train_centroids=cfg.train_centroids, fit_options=cfg.fit_options, warm_start=cfg.warm_start,
        track_weights=cfg.track_weights),
    label=lambda w: f"{w['bits']}-bit {w['method']} ({w['granularity']})"
                    + (", trained centroids" if w.get("train_centroids") else ""),
    options={"train_centroids": lambda cfg: cfg.train_centroids, "track_weights": lambda cfg: not cfg.track_weights,
             "fit_options": lambda cfg: bool(cfg.fit_options)},
    validate=_validate))
