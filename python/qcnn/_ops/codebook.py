"""The codebook ops of csrc/ops/codebook.cpp (torch.ops.qcnn.*) with their fake (meta) kernels.

Every fitting op takes values as [n] (one group) or [groups, n] and fits one codebook per row.
"""
from __future__ import annotations

import torch

from . import check_one_device

__all__ = [
    "kmeans_1d",
    "kmeans_1d_optimal",
    "lloyd_max",
    "kde_grid_density",
    "distinct_values",
    "quantize_to_codebook",
]


def kmeans_1d(x: torch.Tensor, k: int, sample_weight: torch.Tensor | None = None, init: str = "kmeans++",
              max_iter: int = 300, tol: float = 1e-6, seed: int = 0,
              init_centroids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's 1-D k-means per row. init: "kmeans++" (greedy, seeded) | "quantile" | "linear" |
    "optimal" (start from the minimum-SSE partition); init_centroids [..., k] (finite, any order) replaces it
    with given starting centroids per row (a warm start, e.g. from the previous codebook).
    Stops when no centroid moves by more than tol * (max - min) or the partition is stable.
    Returns (centroids [..., k] ascending, float64 for float64 x else float32; weighted SSE [...] float64)."""
    return torch.ops.qcnn.kmeans_1d.default(x, k, sample_weight, init, max_iter, tol, seed, init_centroids)


def kmeans_1d_optimal(x: torch.Tensor, k: int,
                      sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Globally optimal (minimum-SSE) 1-D k-means per row, O(k n) over the distinct values."""
    return torch.ops.qcnn.kmeans_1d_optimal.default(x, k, sample_weight)


def lloyd_max(density: torch.Tensor, grid_start: torch.Tensor, grid_step: torch.Tensor, k: int,
              init: str = "optimal", max_iter: int = 1000, tol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd-Max levels per row for a density on the grid grid_start + i * grid_step (linear between
    grid points, zero outside). init: "optimal" (minimum-SSE k-means of the density-weighted grid
    points, then refined) | "quantile" | "linear". Returns (levels [..., k] float64, mean squared error [...] float64)."""
    return torch.ops.qcnn.lloyd_max.default(density, grid_start, grid_step, k, init, max_iter, tol)


def kde_grid_density(x: torch.Tensor, sample_weight: torch.Tensor | None = None, sample_size: int = 100000,
                     bandwidth: str = "scott", bandwidth_factor: float = 1.0, grid_size: int = 2048,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variance-corrected Gaussian KDE per row from a block-stratified sample of sample_size values
    (0 or >= the row length: all), with the tails beyond the sample's 9th smallest / largest taken
    exactly and the sampled values reweighted to the exact mass of 64 strata between them.
    bandwidth "scott" | "silverman" (scipy's rules for m / (1 - m/n) effective samples: h = 0 without
    sampling) | "factor" (h = bandwidth_factor * std) | "none" (linearly binned histogram), on
    grid_size points spanning [min - 3h, max + 3h] of the whole row plus one step each side.
    Returns (density [..., grid_size], grid_start [...], grid_step [...], h [...])."""
    return torch.ops.qcnn.kde_grid_density.default(x, sample_weight, sample_size, bandwidth, bandwidth_factor,
                                                   grid_size, seed)


def distinct_values(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: (the distinct values if at most k, padded with the largest [..., k] float64,
    min(number of distinct values, k + 1) [...] int64). x must be finite, as for the fitting ops."""
    return torch.ops.qcnn.distinct_values.default(x, k)


def quantize_to_codebook(w: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword of every element (ties to the lower index). codebook: [k] or [G, k] with rows
    sorted ascending (used in float32); G must divide w.shape[0] and row g serves the g-th block of
    w.shape[0] // G channels. Returns (indices, uint8 for k <= 256 else int16; dequantized w)."""
    return torch.ops.qcnn.quantize_to_codebook.default(w, codebook)


def _centroid_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("qcnn::kmeans_1d")
def _kmeans_1d_fake(x, k, sample_weight=None, init="kmeans++", max_iter=300, tol=1e-6, seed=0, init_centroids=None):
    check_one_device("kmeans_1d", x, sample_weight, init_centroids)
    return (x.new_empty((*x.shape[:-1], k), dtype=_centroid_dtype(x)),
            x.new_empty(x.shape[:-1], dtype=torch.float64))


@torch.library.register_fake("qcnn::kmeans_1d_optimal")
def _kmeans_1d_optimal_fake(x, k, sample_weight=None):
    check_one_device("kmeans_1d_optimal", x, sample_weight)
    return (x.new_empty((*x.shape[:-1], k), dtype=_centroid_dtype(x)),
            x.new_empty(x.shape[:-1], dtype=torch.float64))


@torch.library.register_fake("qcnn::lloyd_max")
def _lloyd_max_fake(density, grid_start, grid_step, k, init="optimal", max_iter=1000, tol=1e-9):
    check_one_device("lloyd_max", density, grid_start, grid_step)
    return (density.new_empty((*density.shape[:-1], k), dtype=torch.float64),
            density.new_empty(density.shape[:-1], dtype=torch.float64))


@torch.library.register_fake("qcnn::kde_grid_density")
def _kde_grid_density_fake(x, sample_weight=None, sample_size=100000, bandwidth="scott", bandwidth_factor=1.0,
                           grid_size=2048, seed=0):
    check_one_device("kde_grid_density", x, sample_weight)
    lead = x.shape[:-1]
    return (x.new_empty((*lead, grid_size), dtype=torch.float64), x.new_empty(lead, dtype=torch.float64),
            x.new_empty(lead, dtype=torch.float64), x.new_empty(lead, dtype=torch.float64))


@torch.library.register_fake("qcnn::distinct_values")
def _distinct_values_fake(x, k):
    return (x.new_empty((*x.shape[:-1], k), dtype=torch.float64), x.new_empty(x.shape[:-1], dtype=torch.int64))


@torch.library.register_fake("qcnn::quantize_to_codebook")
def _quantize_to_codebook_fake(w, codebook):
    check_one_device("quantize_to_codebook", w, codebook)
    index_dtype = torch.uint8 if codebook.shape[-1] <= 256 else torch.int16
    return torch.empty_like(w, dtype=index_dtype), torch.empty_like(w)
