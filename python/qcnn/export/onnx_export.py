"""ONNX export of an export Graph: Clip + QuantizeLinear + DequantizeLinear for every activation
quantizer (the fake quantization of the float model), dequantized float weights (codebooks and integer
weights alike) with BatchNorm folded into them. Needs the `onnx` package."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .graph import Graph, QParams

OPSET = 13


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def export_onnx(graph: Graph, path: str | Path) -> Path:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("qcnn.export_onnx needs the `onnx` package (pip install onnx)") from err
    graph.validate()
    nodes, inits = [], []

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def fake_quant(x: str, q: QParams, tag: str) -> str:
        if q.qmin >= 0 and q.qmax <= 255:
            zp = const(f"{tag}.zp", np.array(q.zero_point, dtype=np.uint8))
        elif q.qmin >= -128 and q.qmax <= 127:
            zp = const(f"{tag}.zp", np.array(q.zero_point, dtype=np.int8))
        else:
            raise ValueError(f"{tag}: quantizer range [{q.qmin}, {q.qmax}] does not fit int8/uint8 for ONNX")
        scale = const(f"{tag}.scale", np.array(q.scale, dtype=np.float32))
        lo = const(f"{tag}.lo", np.array((q.qmin - q.zero_point) * q.scale, dtype=np.float32))
        hi = const(f"{tag}.hi", np.array((q.qmax - q.zero_point) * q.scale, dtype=np.float32))
        nodes.append(helper.make_node("Clip", [x, lo, hi], [f"{tag}.clipped"]))
        nodes.append(helper.make_node("QuantizeLinear", [f"{tag}.clipped", scale, zp], [f"{tag}.q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}.q", scale, zp], [f"{tag}.dq"]))
        return f"{tag}.dq"

    for node in graph.nodes:
        x = node.inputs[0]
        out = node.name
        if node.op in ("conv2d", "linear"):
            if node.act is not None:
                x = fake_quant(x, node.act, f"{node.name}.act")
            w = _np(node.weight.dequantize()).astype(np.float64)
            m = w.shape[0]
            b = _np(node.bias).astype(np.float64) if node.bias is not None else np.zeros(m)
            if node.bn_scale is not None:
                s = _np(node.bn_scale).astype(np.float64)
                w = w * s.reshape(-1, *([1] * (w.ndim - 1)))
                b = s * b + _np(node.bn_shift)
            wn = const(f"{node.name}.weight", w.astype(np.float32) if node.op == "conv2d"
                       else w.reshape(m, -1).astype(np.float32))
            bn = const(f"{node.name}.bias", b.astype(np.float32))
            y = out if not node.relu else f"{node.name}.pre_relu"
            if node.op == "conv2d":
                pads = [node.padding[0], node.padding[1], node.padding[0], node.padding[1]]
                nodes.append(helper.make_node("Conv", [x, wn, bn], [y], kernel_shape=list(w.shape[2:]),
                                              strides=list(node.stride), pads=pads))
            else:
                nodes.append(helper.make_node("Gemm", [x, wn, bn], [y], transB=1))
            if node.relu:
                nodes.append(helper.make_node("Relu", [y], [out]))
        elif node.op == "quant":
            nodes.append(helper.make_node("Identity", [fake_quant(x, node.act, node.name)], [out]))
        elif node.op == "relu":
            nodes.append(helper.make_node("Relu", [x], [out]))
        elif node.op == "max_pool2d":
            pads = [node.padding[0], node.padding[1], node.padding[0], node.padding[1]]
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=list(node.kernel_size),
                                          strides=list(node.stride), pads=pads))
        elif node.op == "avg_pool2d":
            nodes.append(helper.make_node("AveragePool", [x], [out], kernel_shape=list(node.kernel_size),
                                          strides=list(node.stride)))
        elif node.op == "global_max_pool":
            nodes.append(helper.make_node("GlobalMaxPool", [x], [out]))
        elif node.op == "global_avg_pool":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [out]))
        elif node.op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [out], axis=1))
        else:  # add
            y = out if not node.relu else f"{node.name}.pre_relu"
            nodes.append(helper.make_node("Add", [x, node.inputs[1]], [y]))
            if node.relu:
                nodes.append(helper.make_node("Relu", [y], [out]))
    c, h, w = graph.input_shape
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])
    last = graph.nodes[-1]
    out_shape = ["N", last.weight.out_channels] + (["OH", "OW"] if last.op == "conv2d" else [])
    outp = helper.make_tensor_value_info(graph.output, TensorProto.FLOAT, out_shape)
    model = helper.make_model(helper.make_graph(nodes, "qcnn", [inp], [outp], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qcnn",
                              # the oldest IR version the opset allows, not the installed onnx's newest:
                              # runtimes refuse IR versions newer than they know
                              ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", OPSET)]))
    model.metadata_props.add(key="normalization", value=f"mean={list(graph.mean)} std={list(graph.std)}")
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path
