"""Weight codebooks: fit k-entry (k = 2**bits) scalar codebooks to weight tensors and quantize.

Methods (Ji et al. 2015; Seo & Kim 2019):
  "kmeans"          Lloyd's 1-D k-means on all weights (sorted once, O(k log n) per iteration).
  "kmeans_optimal"  globally optimal 1-D k-means (minimum SSE), dynamic programming with SMAWK.
  "lloyd_max"       Lloyd-Max on the histogram density of all the weights: every weight is linearly
                    binned onto grid_size points spanning [min, max] (plus one step each side) and
                    the density is linear between grid points.
  "kde_kmeans"      KDE-KM: weighted k-means on the grid points of a Gaussian KDE built from a sample.
  "kde_lloyd_max"   KDE-LM: Lloyd-Max on that KDE.

The KDE (defaults: sample_size=100000, bandwidth="scott", grid_size=2048) is built for quantizer
design, so that the sampled fits stay within 1% of the SSE of full k-means:
  - one value drawn from each of sample_size equal blocks of positions (seeded); one O(n) pass then
    takes the tails exactly (every value beyond the sample's 9th smallest / largest) and the exact
    mass of 64 equal-width strata between them, to which the sampled values are reweighted
    (post-stratification: the sampled noise that moves Lloyd-Max levels is mostly mass imbalance);
  - variance-corrected kernel (Jones 1991): the KDE of the sampled values is rescaled about their
    mean by sqrt(s^2 / (s^2 + h^2)), points and kernel alike, so it keeps their variance s^2 instead
    of s^2 + h^2 (a plain KDE pushes the levels outward); the exact tails are not smoothed or moved;
  - Scott / Silverman use m / (1 - m/n) effective samples (finite-population correction), so a group
    of at most sample_size values gets h = 0: the exact linearly binned histogram of its values;
  - the grid spans the true [min - 3h, max + 3h] plus one step each side (end values keep full mass).

A group with u <= k distinct values gets those values followed by k - u copies of the largest one
(SSE 0; ties in quantization go to the lower index, so the copies are never used).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._ops.codebook import (distinct_values, kde_grid_density, kmeans_1d, kmeans_1d_optimal, lloyd_max,
                             quantize_to_codebook)

__all__ = [
    "CodebookFit",
    "METHODS",
    "fit",
    "check_options",
    "cluster_change_fraction",
    "kmeans_1d",
    "kmeans_1d_optimal",
    "lloyd_max",
    "kde_grid_density",
    "distinct_values",
    "quantize_to_codebook",
]

METHODS = ("kmeans", "kmeans_optimal", "lloyd_max", "kde_kmeans", "kde_lloyd_max")

_KMEANS_OPTS = {"init": "kmeans++", "max_iter": 300, "tol": 1e-6}
_LLOYD_MAX_OPTS = {"init": "optimal", "max_iter": 1000, "tol": 1e-9}
_KDE_OPTS = {"sample_size": 100000, "bandwidth": "scott", "grid_size": 2048}
_DEFAULTS: dict[str, dict] = {
    "kmeans": dict(_KMEANS_OPTS),
    "kmeans_optimal": {},
    "lloyd_max": {**_LLOYD_MAX_OPTS, "grid_size": 4096},
    "kde_kmeans": {**_KMEANS_OPTS, **_KDE_OPTS, "init": "optimal"},
    "kde_lloyd_max": {**_LLOYD_MAX_OPTS, **_KDE_OPTS},
}
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class CodebookFit:
    """codebook: float32 [k] (granularity "tensor") or [G, k] (one row per channel or group), rows
    ascending. indices: shape of w, uint8 for k <= 256 else int16. dequantized: shape and dtype of w.
    sse: sum of sample_weight * (w - dequantized)**2 (weight 1 without sample_weight), in float64."""

    codebook: torch.Tensor
    indices: torch.Tensor
    dequantized: torch.Tensor
    sse: float
    method: str
    bits: int


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_float(name: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return value


def _groups(w: torch.Tensor, granularity) -> int:
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        if w.dim() == 0:
            raise ValueError("granularity='channel' needs w with at least one dimension")
        return w.shape[0]
    if isinstance(granularity, (tuple, list)) and len(granularity) == 2 and granularity[0] == "group":
        g = _check_int("granularity group count", granularity[1], 1)
        if w.dim() == 0 or w.shape[0] % g != 0:
            raise ValueError(f"granularity ('group', {g}): {g} must divide w.shape[0] = "
                             f"{w.shape[0] if w.dim() else 'none (0-d w)'}")
        return g
    raise ValueError(f"granularity must be 'tensor', 'channel' or ('group', G), got {granularity!r}")


def _check_method(method) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def check_options(method: str, **opts) -> None:
    """Raises the TypeError / ValueError fit(method=method, **opts) would raise for a bad method or option."""
    _check_method(method)
    _resolve_opts(method, opts, 1)


def _resolve_opts(method: str, opts: dict, group_size: int) -> dict:
    defaults = _DEFAULTS[method]
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method={method!r}; valid: {sorted(defaults)}")
    o = {**defaults, **opts}
    if "init" in o:
        valid = ("optimal", "quantile", "linear")
        if method in ("kmeans", "kde_kmeans"):
            valid = ("kmeans++", *valid)
        if o["init"] not in valid:
            raise ValueError(f"init must be one of {valid} for method={method!r}, got {o['init']!r}")
        o["max_iter"] = _check_int("max_iter", o["max_iter"], 1)
        o["tol"] = _check_float("tol", o["tol"])
    if "grid_size" in o:
        o["grid_size"] = _check_int("grid_size", o["grid_size"], 2)
    if "sample_size" in o:
        s = o["sample_size"]
        if isinstance(s, float):
            if not 0.0 < s <= 1.0:
                raise ValueError(f"sample_size as a fraction must be in (0, 1], got {s}")
            o["sample_size"] = max(1, round(s * group_size))
        else:
            o["sample_size"] = _check_int("sample_size", s, 1)
        bw = o["bandwidth"]
        if isinstance(bw, str):
            if bw not in ("scott", "silverman"):
                raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive float, got {bw!r}")
            o["bandwidth_factor"] = 1.0
        else:
            o["bandwidth_factor"] = _check_float("bandwidth", bw, positive=True)
            o["bandwidth"] = "factor"
    return o


def fit(w: torch.Tensor, bits: int, method: str = "kmeans", granularity="tensor",
        sample_weight: torch.Tensor | None = None, seed: int = 0, init_centroids: torch.Tensor | None = None,
        **opts) -> CodebookFit:
    """Fit a 2**bits-entry codebook per tensor, per output channel (dim 0) or per group of
    consecutive channels, and quantize w with it.

    opts by method (defaults): kmeans: init="kmeans++" (greedy, seeded) | "quantile" | "linear" |
    "optimal" (start from the minimum-SSE partition), max_iter=300, tol=1e-6 (max centroid move /
    value range). lloyd_max: init="optimal" | "quantile" | "linear" (optimal: the
    minimum-SSE k-means of the density-weighted grid points, then Lloyd-Max refinement),
    max_iter=1000, tol=1e-9, grid_size=4096 (at most 2^20). kde_kmeans / kde_lloyd_max: their k-means / Lloyd-Max
    options (kde_kmeans defaults to init="optimal": the DP on grid_size points is cheap) plus
    sample_size=100000 (an int count or a float fraction of each group; a group of at most that many
    values uses all of them), bandwidth="scott" | "silverman" (scipy's rules with the
    finite-population correction: h = 0 without sampling) | float (h = factor times the sample std,
    as scipy.stats.gaussian_kde's bw_method, also without sampling), grid_size=2048; the sampling,
    tails and variance correction are described in the module docstring. Everything is
    deterministic given seed.

    init_centroids (kmeans, kde_kmeans): the starting codebook, shaped like the result ([k] per tensor,
    [groups, k] otherwise), instead of `init`: a warm start, as a refit of drifted weights wants (clusters
    keep their identity, so few weights change level).
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"w must be float32, float64, float16 or bfloat16, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError(f"w is empty (shape {tuple(w.shape)})")
    bits = _check_int("bits", bits, 1, 15)
    _check_method(method)
    seed = _check_int("seed", seed, 0)
    groups = _groups(w, granularity)
    device = w.device
    w_cpu = w.detach().to("cpu")
    if not bool(torch.isfinite(w_cpu).all()):
        raise ValueError("w contains NaN or infinite values")
    sw = None
    if sample_weight is not None:
        if not isinstance(sample_weight, torch.Tensor) or sample_weight.dtype not in _FLOAT_DTYPES:
            raise TypeError("sample_weight must be a floating torch.Tensor")
        if sample_weight.shape != w.shape:
            raise ValueError(f"sample_weight must have the shape of w {tuple(w.shape)}, got {tuple(sample_weight.shape)}")
        sw = sample_weight.detach().to("cpu")
        if not bool(torch.isfinite(sw).all()) or bool((sw < 0).any()):
            raise ValueError("sample_weight must be finite and >= 0")
    k = 1 << bits
    rows = w_cpu.reshape(groups, -1)
    sw_rows = None if sw is None else sw.reshape(groups, -1)
    if sw_rows is not None and bool((sw_rows.sum(dim=1) <= 0).any()):
        raise ValueError("sample_weight must have a positive sum in every group")
    o = _resolve_opts(method, opts, rows.shape[1])
    warm = None
    if init_centroids is not None:
        if method not in ("kmeans", "kde_kmeans"):
            raise ValueError(f"init_centroids applies to the k-means methods (kmeans, kde_kmeans), not {method!r}")
        if not isinstance(init_centroids, torch.Tensor) or not init_centroids.dtype.is_floating_point:
            raise TypeError("init_centroids must be a floating torch.Tensor")
        if init_centroids.numel() != groups * k:
            raise ValueError(f"init_centroids must hold {groups} x {k} centroids (one codebook per group), got "
                             f"shape {tuple(init_centroids.shape)}")
        warm = init_centroids.detach().to("cpu", torch.float64).reshape(groups, k)

    if method == "kmeans":
        centroids, _ = kmeans_1d(rows, k, sw_rows, o["init"], o["max_iter"], o["tol"], seed, init_centroids=warm)
    elif method == "kmeans_optimal":
        centroids, _ = kmeans_1d_optimal(rows, k, sw_rows)
    else:
        if method == "lloyd_max":
            density, start, step, _ = kde_grid_density(rows, sw_rows, 0, "none", 1.0, o["grid_size"], seed)
        else:
            density, start, step, _ = kde_grid_density(rows, sw_rows, o["sample_size"], o["bandwidth"],
                                                       o["bandwidth_factor"], o["grid_size"], seed)
        if method == "kde_kmeans":
            grid = start[:, None] + step[:, None] * torch.arange(o["grid_size"], dtype=torch.float64)
            centroids, _ = kmeans_1d(grid, k, density, o["init"], o["max_iter"], o["tol"], seed, init_centroids=warm)
        else:
            centroids, _ = lloyd_max(density, start, step, k, o["init"], o["max_iter"], o["tol"])
        values, count = distinct_values(rows, k)  # the padding rule for groups with few values
        few = count <= k
        if bool(few.any()):
            centroids = torch.where(few[:, None], values, centroids.to(torch.float64))
    codebook = centroids.to(torch.float32)
    codebook, _ = torch.sort(codebook, dim=1)  # float32 rounding keeps order; sort is a cheap guard
    if granularity == "tensor":
        codebook = codebook[0]
    indices, dequantized = quantize_to_codebook(w_cpu, codebook)
    err = (dequantized.to(torch.float64) - w_cpu.to(torch.float64)).square_()
    sse = float((err * sw.to(torch.float64)).sum() if sw is not None else err.sum())
    return CodebookFit(codebook=codebook.to(device), indices=indices.to(device),
                       dequantized=dequantized.to(device), sse=sse, method=method, bits=bits)


def cluster_change_fraction(old_indices: torch.Tensor, new_indices: torch.Tensor) -> float:
    """Fraction of weights whose codebook index differs between two assignments of the same shape."""
    for name, t in (("old_indices", old_indices), ("new_indices", new_indices)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
    if old_indices.shape != new_indices.shape:
        raise ValueError(f"old_indices {tuple(old_indices.shape)} and new_indices {tuple(new_indices.shape)} "
                         "must have the same shape")
    if old_indices.numel() == 0:
        raise ValueError("old_indices and new_indices are empty")
    changed = torch.ne(old_indices.to(torch.int64), new_indices.to(old_indices.device, torch.int64))
    return float(changed.sum().item()) / old_indices.numel()

