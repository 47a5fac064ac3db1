"""Export of quantized models to the .qcnn format, ONNX export, and qcnn.load (the C++ integer engine)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import unwrap
from ..quantizers.act import QuantAct
from ..quantizers.weight import WeightQuantizer
from .graph import Graph, Node, QParams, QuantWeight, reference_forward
from . import onnx_export
from .lower import lower_graph, quantize_multiplier
from .qfile import read_qcnn, write_qcnn
from .runtime import IntegerModel, LayerProfile, load
from .trace import graph_from_model

__all__ = ["export", "load", "export_onnx", "ExportReport", "Graph", "Node", "QParams", "QuantWeight",
           "reference_forward", "lower_graph", "quantize_multiplier", "read_qcnn", "write_qcnn", "IntegerModel",
           "LayerProfile", "to_graph"]


@dataclass
class ExportReport:
    path: Path
    file_bytes: int                 # the .qcnn file as written
    float32_bytes: int              # the float32 state dict of the source model
    packed_index_bytes: int         # weight indices, bit-packed
    huffman_index_bytes: int        # weight indices, Huffman coded (including code-length tables)
    stored_index_bytes: int         # what the file holds

    @property
    def ratio(self) -> float:
        return self.float32_bytes / self.file_bytes

    def __str__(self) -> str:
        # a tiny net can be larger than its float32 weights: the file's header and tables cost more than they save
        size = (f"{self.ratio:.2f}x smaller than" if self.ratio >= 1 else
                f"{self.file_bytes / self.float32_bytes:.2f}x larger than")
        return (f"{self.path}: {self.file_bytes} bytes, {size} float32 "
                f"({self.float32_bytes} bytes); weight indices {self.packed_index_bytes} bytes packed, "
                f"{self.huffman_index_bytes} bytes Huffman-coded, {self.stored_index_bytes} stored")


def _graph_float_bytes(graph: Graph) -> int:
    """float32 bytes of the equivalent state dict: weights, biases, BatchNorm (4 per channel)."""
    total = 0
    for node in graph.nodes:
        if node.weight is not None:
            m = node.weight.out_channels
            total += 4 * node.weight.indices.numel()
            total += 4 * m if node.bias is not None else 0
            total += 16 * m if node.bn_scale is not None else 0
    return total


def _model_float_bytes(model: torch.nn.Module) -> int:
    """float32 bytes of the model's own floating-point parameters and buffers (its quantizers' state,
    codebooks and clips, is not part of the float model)."""
    total = 0
    for module in model.modules():
        if isinstance(module, (WeightQuantizer, QuantAct)):
            continue
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        total += sum(4 * t.numel() for t in tensors if t.is_floating_point())
    return total


def to_graph(model, **trace_options) -> Graph:
    """The float-level export graph of a qcnn model (or the graph itself; a compiled or data-parallel model is
    exported as the module it wraps). trace_options go to trace.graph_from_model: input_shape (C, H, W), mean
    and std (the input normalisation; by default what the model records, qcnn.data.set_input_spec; with neither,
    an error)."""
    if isinstance(model, Graph):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"qcnn.export: model must be a quantized torch.nn.Module or a qcnn.exporter.Graph, "
                        f"got {type(model).__name__}")
    return graph_from_model(unwrap(model), **trace_options)


def export(model, path: str | Path, entropy_coding: bool = False, verbose: bool = True,
           **trace_options) -> ExportReport:
    """Writes `model` (a qcnn quantized model or an export Graph) as a .qcnn file.

    entropy_coding=True stores the weight indices of each layer Huffman-coded when that is smaller.
    trace_options: see to_graph."""
    graph = to_graph(model, **trace_options)
    doc, tensors, index_bytes = lower_graph(graph, entropy_coding)
    size = write_qcnn(path, doc, tensors)
    if isinstance(model, torch.nn.Module):
        float_bytes = _model_float_bytes(unwrap(model))
    else:
        float_bytes = _graph_float_bytes(graph)
    report = ExportReport(Path(path), size, float_bytes, index_bytes["packed"], index_bytes["huffman"],
                          index_bytes["stored"])
    if verbose:
        print(report)
    return report


def export_onnx(model, path: str | Path, calibration=None, **trace_options) -> Path:
    """ONNX export in the QDQ form of onnxruntime's own quantizer, so that its default session runs the layers on
    its integer kernels (onnx_export.py). Values the engine keeps wider than 8 bits (residual sums, lookup-table
    inputs) stay float and exact unless `calibration` (uint8 images [N, C, H, W]) is given: then each gets an 8-bit
    grid from its range on those images and every conv runs on integer kernels, at the cost of one more rounding
    than the engine makes there."""
    return onnx_export.export_onnx(to_graph(model, **trace_options), path, calibration)
