"""Python entry points of qcnn's compiled ops (torch.ops.qcnn.*)."""
from .codebook._ops import kmeans_1d, kmeans_1d_optimal, lloyd_max, quantize_to_codebook  # noqa: E402,F401
