"""The integer engine of csrc/ops/engine.cpp: torch.classes.qcnn.Engine (a loaded .qcnn file; qcnn.load wraps it) and
the kernel paths it has. (Its int8_peak_gmacs op, which only the benchmarks call, is torch.ops.qcnn.int8_peak_gmacs.)"""
from __future__ import annotations

import torch


def open_engine(path: str, max_macs_per_image: int | None = None, max_ops_per_image: int | None = None,
                max_activation_bytes_per_image: int | None = None, count_overflows: bool = False, fuse: bool = True):
    """The engine of a .qcnn file (arguments as qcnn.load checks them)."""
    return torch.classes.qcnn.Engine(str(path), max_macs_per_image, max_ops_per_image, max_activation_bytes_per_image,
                                     count_overflows, fuse)


def engine_isas() -> dict[str, bool]:
    """Every kernel path the engine has, in QCNN_ISA's names from the most portable to the fastest, and whether this
    CPU runs it (qcnn.load takes the last one it runs unless QCNN_ISA names another)."""
    names, supported = torch.ops.qcnn.engine_isas()
    return {name: name in supported for name in names}

