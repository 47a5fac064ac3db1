"""Loads a CUDA build of qcnn's extension (make cuda-check) into a process without qcnn, and checks that it
links (every symbol resolves against the CUDA build of torch) and registers the CUDA kernels of every op the
.cu files implement. Needs no GPU. Usage: python tests/cuda/check_link.py build/cuda-ext/qcnn/_C.abi3.so"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def cuda_ops() -> list[str]:
    """The ops the CUDA sources register (m.impl("name", ...) inside TORCH_LIBRARY_IMPL(qcnn, CUDA, m))."""
    ops = []
    for source in sorted((ROOT / "csrc" / "ops" / "cuda").glob("*.cu")):
        for block in re.findall(r"TORCH_LIBRARY_IMPL\(qcnn,\s*CUDA,\s*m\)\s*\{(.*?)\n\}", source.read_text(), re.S):
            ops += re.findall(r'm\.impl\("(\w+)"', block)
    return ops


def main(library: str) -> None:
    if torch.version.cuda is None:
        sys.exit(f"check_link.py: torch {torch.__version__} is a CPU build; the CUDA extension cannot link against it")
    torch.ops.load_library(library)
    ops = cuda_ops()
    if not ops:
        sys.exit("check_link.py: found no TORCH_LIBRARY_IMPL(qcnn, CUDA, m) registrations in csrc/ops/cuda")
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"qcnn::{op}", "CUDA")]
    if missing:
        sys.exit(f"check_link.py: {library} has no CUDA kernel for {', '.join(missing)}")
    print(f"cuda-check: {library} links against torch {torch.__version__} (CUDA {torch.version.cuda}) and registers "
          f"CUDA kernels for {len(ops)} ops: {', '.join(ops)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
