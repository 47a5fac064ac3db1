"""The Python side of csrc/ops, one module per C++ op file: each op's wrapper (argument checks, defaults) and its
fake (meta) kernel. fake_quant (fake_quant.cpp, autograd in fake_quant_autograd.cpp), codebook (codebook.cpp),
int_ops (int_ops.cpp: the exporter's bit packing and Huffman coding), engine (engine.cpp: the integer engine).
The public API re-exports them: qcnn.ops, qcnn.codebook, qcnn.load."""
from __future__ import annotations

import torch


def check_one_device(op: str, *tensors) -> None:
    """What the real kernels require: every tensor argument on one device. The fake kernels check it too, since
    a meta tensor among CPU ones dispatches to them and would return uninitialized memory."""
    devices = sorted({str(t.device) for t in tensors if isinstance(t, torch.Tensor)})
    torch._check(len(devices) <= 1, lambda: f"qcnn::{op}: the tensor arguments must be on one device, got {devices}")
