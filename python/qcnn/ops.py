"""qcnn's compiled ops (torch.ops.qcnn.*) as Python functions: the fake-quant ops and the raw codebook fitters.
Their wrappers and fake kernels live in qcnn._ops, one module per csrc/ops file."""
from __future__ import annotations

from ._ops.codebook import kmeans_1d, kmeans_1d_optimal, lloyd_max, quantize_to_codebook
from ._ops.fake_quant import fake_quant, fake_quant_binary, fake_quant_fixed, fixed_point_grid

__all__ = ["fake_quant", "fake_quant_binary", "fake_quant_fixed", "fixed_point_grid", "kmeans_1d",
           "kmeans_1d_optimal", "lloyd_max", "quantize_to_codebook"]
