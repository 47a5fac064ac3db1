"""Integer conv kernels (dense int16 GEMM path and weight-sharing path) against torch's float conv2d.

For each layer shape and weight bit width: qcnn_s is the dense integer path (im2col + int16 GEMM),
shared_s the weight-sharing path (inputs summed per centroid, then k multiplies); the anchor is
torch.nn.functional.conv2d in float32 on the same inputs. ratio = anchor_s / qcnn_s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common import parser, report, row, time_call

import qcnn  # noqa: F401
from qcnn.export import _ops

# (name, batch, in_channels, size, out_channels, kernel, padding)
SHAPES = [
    ("conv 1->32 28x28", 64, 1, 28, 32, 3, 1),
    ("conv 32->32 28x28", 64, 32, 28, 32, 3, 1),
    ("conv 64->64 14x14", 64, 64, 14, 64, 3, 1),
    ("conv 64->64 7x7", 64, 64, 7, 64, 3, 1),
    ("linear 3136->10", 256, 3136, 1, 10, 1, 0),
]
BITS = [1, 2, 4, 8]


def main() -> None:
    args = parser(__doc__).parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name, n, c, size, m, k, pad in SHAPES:
        x = torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.int32)
        xf = (x - 128).float()
        for bits in BITS:
            codes = 2 ** bits
            # Gaussian-like index distribution (central centroids most frequent), as for trained weights.
            idx = torch.clamp(torch.round(torch.randn(m, c * k * k, generator=gen) * codes / 6 + codes / 2), 0,
                              codes - 1).to(torch.uint8)
            levels = torch.arange(codes, dtype=torch.int32)[None] * 7 - codes * 3
            w = torch.gather(levels.expand(m, -1), 1, idx.long()).reshape(m, c, k, k)
            w16, wf = w.to(torch.int16), w.float()
            dense = lambda: _ops.int_conv2d(x, 128, w16, (1, 1), (pad, pad))  # noqa: E731
            shared = lambda: _ops.int_conv2d_shared(x, 128, idx, levels, (k, k), (1, 1), (pad, pad))  # noqa: E731
            anchor = lambda: F.conv2d(xf, wf, padding=pad)  # noqa: E731
            assert torch.equal(dense(), shared())
            assert torch.equal(dense(), anchor().round().to(torch.int32))
            t_dense = time_call(dense, args.repeats)
            t_shared = time_call(shared, args.repeats)
            t_anchor = time_call(anchor, args.repeats)
            rows.append(row(f"{name} {bits}-bit", t_dense, "torch.conv2d float32", t_anchor, shared_s=t_shared,
                            shared_ratio=t_anchor / t_shared, shared_vs_dense=t_dense / t_shared))
    report("int_kernels", rows, args.json)


if __name__ == "__main__":
    main()
