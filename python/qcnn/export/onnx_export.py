"""ONNX export of an export Graph: Clip + QuantizeLinear + DequantizeLinear for every activation
quantizer (the fake quantization of the float model), and every conv/linear weight as an integer
initializer (int8, or int32 past 127) with a per-channel DequantizeLinear, BatchNorm folded into its
scales: the deployed integers, which leaves a runtime nothing to re-quantize (onnxruntime's default session
re-quantizes float weight initializers that feed a QDQ graph, and changes the predictions). Needs `onnx`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .graph import Graph, QParams, reference_forward
from .lower import adaptive_output_size, adaptive_windows, pool_windows

OPSET = 13


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def integer_weight(node, const, nodes: list) -> tuple[str, np.ndarray]:
    """DequantizeLinear(integer weights, per-channel scale) for a conv/linear node, and its float64 bias, with
    BatchNorm y * s + t folded in: scales become |scale * s| and a channel with s < 0 negates its integers."""
    from onnx import helper

    w = node.weight
    m = w.out_channels
    scale, levels = w.integer_table()
    ints = w.gather(levels).reshape(w.indices.shape)
    bias = _np(node.bias).astype(np.float64) if node.bias is not None else np.zeros(m)
    scale = _np(scale).astype(np.float64)
    if node.bn_scale is not None:
        s = _np(node.bn_scale).astype(np.float64)
        scale, bias = scale * s, s * bias + _np(node.bn_shift).astype(np.float64)
    sign = np.where(scale < 0, -1, 1)
    ints = _np(ints) * sign.reshape(-1, *([1] * (ints.dim() - 1)))
    if node.op == "linear":
        ints = ints.reshape(m, -1)
    narrow = np.abs(ints).max(initial=0) <= 127
    q = const(f"{node.name}.weight_int", ints.astype(np.int8 if narrow else np.int32))
    # A zero scale (an all-zero channel) is invalid in DequantizeLinear; any positive one dequantizes zeros.
    dq_scale = const(f"{node.name}.weight_scale", np.where(scale == 0, 1.0, np.abs(scale)).astype(np.float32))
    inputs = [q, dq_scale]
    if narrow:
        inputs.append(const(f"{node.name}.weight_zp", np.zeros(m, dtype=np.int8)))
    nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{node.name}.weight"], axis=0))
    return f"{node.name}.weight", bias


def export_onnx(graph: Graph, path: str | Path) -> Path:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("qcnn.export_onnx needs the `onnx` package (pip install onnx)") from err
    graph.validate()
    nodes, inits = [], []
    values = {}
    reference_forward(graph, torch.zeros(1, *graph.input_shape), values)
    shapes = {name: tuple(v.shape) for name, v in values.items()}

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

    def relu(x: str, out: str, node) -> None:
        if node.relu_max is None:
            nodes.append(helper.make_node("Relu", [x], [out]))
        else:
            lo = const(f"{node.name}.relu_lo", np.array(0.0, dtype=np.float32))
            hi = const(f"{node.name}.relu_hi", np.array(node.relu_max, dtype=np.float32))
            nodes.append(helper.make_node("Clip", [x, lo, hi], [out]))

    def window_pool(x: str, out: str, node, rows: list, cols: list, is_max: bool) -> None:
        """Pooling over explicit windows ((begin, end, divisor) per output cell of each axis, lower.pool_windows),
        for what ONNX's pools cannot say (torch's ceil_mode and divisors, adaptive pooling): each axis in turn is
        sliced per window, reduced (max, or sum times 1 / divisor) and concatenated. Max of maxima and the
        separable divisors make this exact."""
        for axis, windows in ((2, rows), (3, cols)):
            parts = []
            for i, (begin, end, divisor) in enumerate(windows):
                tag = f"{node.name}.axis{axis}.{i}"
                bounds = [const(f"{tag}.{k}", np.array([v], dtype=np.int64)) for k, v in
                          (("begin", begin), ("end", end), ("axis", axis))]
                nodes.append(helper.make_node("Slice", [x, *bounds], [f"{tag}.window"]))
                if is_max:
                    nodes.append(helper.make_node("ReduceMax", [f"{tag}.window"], [f"{tag}.pooled"], axes=[axis],
                                                  keepdims=1))
                else:
                    nodes.append(helper.make_node("ReduceSum", [f"{tag}.window", bounds[2]], [f"{tag}.sum"],
                                                  keepdims=1))
                    inv = const(f"{tag}.inv", np.array(1.0 / divisor, dtype=np.float32))
                    nodes.append(helper.make_node("Mul", [f"{tag}.sum", inv], [f"{tag}.pooled"]))
                parts.append(f"{tag}.pooled")
            y = out if axis == 3 else f"{node.name}.rows"
            nodes.append(helper.make_node("Concat", parts, [y], axis=axis))
            x = y

    def elementwise(x: str, out: str, node) -> None:
        fn, tag = node.function, node.name
        if fn in ("sigmoid", "tanh"):
            nodes.append(helper.make_node(fn.capitalize(), [x], [out]))
        elif fn == "hardsigmoid":
            nodes.append(helper.make_node("HardSigmoid", [x], [out], alpha=1.0 / 6.0, beta=0.5))
        elif fn in ("hardswish", "silu"):  # x * hardsigmoid(x) / x * sigmoid(x) (HardSwish needs opset 14)
            gate = helper.make_node("HardSigmoid", [x], [f"{tag}.gate"], alpha=1.0 / 6.0, beta=0.5) \
                if fn == "hardswish" else helper.make_node("Sigmoid", [x], [f"{tag}.gate"])
            nodes.extend([gate, helper.make_node("Mul", [x, f"{tag}.gate"], [out])])
        elif fn == "leaky_relu":
            nodes.append(helper.make_node("LeakyRelu", [x], [out], alpha=float(node.function_args[0])))
        elif fn == "elu":
            nodes.append(helper.make_node("Elu", [x], [out], alpha=float(node.function_args[0])))
        else:  # gelu: x * (1 + erf(x / sqrt 2)) / 2 (Gelu needs opset 20)
            half = const(f"{tag}.half", np.array(0.5, dtype=np.float32))
            one = const(f"{tag}.one", np.array(1.0, dtype=np.float32))
            root = const(f"{tag}.sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
            nodes.extend([helper.make_node("Div", [x, root], [f"{tag}.scaled"]),
                          helper.make_node("Erf", [f"{tag}.scaled"], [f"{tag}.erf"]),
                          helper.make_node("Add", [f"{tag}.erf", one], [f"{tag}.sum"]),
                          helper.make_node("Mul", [x, f"{tag}.sum"], [f"{tag}.prod"]),
                          helper.make_node("Mul", [f"{tag}.prod", half], [out])])

    for node in graph.nodes:
        x = node.inputs[0]
        out = node.name
        if node.op in ("conv2d", "linear"):
            if node.act is not None:
                x = fake_quant(x, node.act, f"{node.name}.act")
            wn, b = integer_weight(node, const, nodes)
            y = out if not node.relu else f"{node.name}.pre_relu"
            if node.op == "conv2d":
                # The bias is added after the conv, not given to it: onnxruntime's default session would otherwise
                # quantize a float bias to int32 at input scale * weight scale, which at 2-bit activations leaves
                # it a few steps of resolution (WeightBiasQuantization).
                bn = const(f"{node.name}.bias", b.astype(np.float32).reshape(1, -1, 1, 1))
                pads = [node.padding[0], node.padding[1], node.padding[0], node.padding[1]]
                kernel = list(node.weight.indices.shape[2:])
                nodes.append(helper.make_node("Conv", [x, wn], [f"{node.name}.product"], kernel_shape=kernel,
                                              strides=list(node.stride), pads=pads, group=int(node.groups),
                                              dilations=list(node.dilation)))
                nodes.append(helper.make_node("Add", [f"{node.name}.product", bn], [y]))
            else:  # a Gemm followed by an Add is fused back, and wrongly, by onnxruntime: its bias stays its C input
                bn = const(f"{node.name}.bias", b.astype(np.float32))
                nodes.append(helper.make_node("Gemm", [x, wn, bn], [y], transB=1))
            if node.relu:
                relu(y, out, node)
        elif node.op == "quant":
            nodes.append(helper.make_node("Identity", [fake_quant(x, node.act, node.name)], [out]))
        elif node.op == "affine":
            per_channel = (-1,) + (1,) * (len(shapes[x]) - 2)
            a = const(f"{node.name}.scale", _np(node.bn_scale).astype(np.float32).reshape(per_channel))
            b = const(f"{node.name}.shift", _np(node.bn_shift).astype(np.float32).reshape(per_channel))
            y = out if not node.relu else f"{node.name}.pre_relu"
            nodes.extend([helper.make_node("Mul", [x, a], [f"{node.name}.scaled"]),
                          helper.make_node("Add", [f"{node.name}.scaled", b], [y])])
            if node.relu:
                relu(y, out, node)
        elif node.op == "relu":
            relu(x, out, node)
        elif node.op == "lut":
            elementwise(x, out, node)
        elif node.op == "mul":
            nodes.append(helper.make_node("Mul", [x, node.inputs[1]], [out]))
        elif node.op == "concat":
            nodes.append(helper.make_node("Concat", list(node.inputs), [out], axis=1))
        elif node.op == "gather_channels":
            index = const(f"{node.name}.index", np.array(node.channel_index(shapes[x][1]), dtype=np.int64))
            nodes.append(helper.make_node("Gather", [x, index], [out], axis=1))
        elif node.op == "max_pool2d":
            pads = [node.padding[0], node.padding[1], node.padding[0], node.padding[1]]
            if node.ceil_mode:
                # torch's ceil_mode drops a last window that would start in the right padding, onnxruntime's
                # does not: pad the end explicitly to torch's output size instead (max pooling ignores pads).
                h, w = shapes[node.inputs[0]][2:]
                oh, ow = shapes[node.name][2:]
                pads[2] = max(pads[2], (oh - 1) * node.stride[0] + node.kernel_size[0] - h - node.padding[0])
                pads[3] = max(pads[3], (ow - 1) * node.stride[1] + node.kernel_size[1] - w - node.padding[1])
            nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=list(node.kernel_size),
                                          strides=list(node.stride), pads=pads))
        elif node.op == "avg_pool2d":
            if node.ceil_mode:
                h, w = shapes[x][2:]
                rows, cols = (pool_windows(size, node.kernel_size[i], node.stride[i], node.padding[i], True,
                                           node.count_include_pad) for i, size in enumerate((h, w)))
                window_pool(x, out, node, rows, cols, is_max=False)
            else:
                pads = [node.padding[0], node.padding[1], node.padding[0], node.padding[1]]
                nodes.append(helper.make_node("AveragePool", [x], [out], kernel_shape=list(node.kernel_size),
                                              strides=list(node.stride), pads=pads,
                                              count_include_pad=int(node.count_include_pad)))
        elif node.op in ("adaptive_max_pool2d", "adaptive_avg_pool2d"):
            h, w = shapes[x][2:]
            oh, ow = adaptive_output_size(node, shapes[x][1:])
            window_pool(x, out, node, adaptive_windows(h, oh), adaptive_windows(w, ow),
                        is_max=node.op == "adaptive_max_pool2d")
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
                relu(y, out, node)
    c, h, w = graph.input_shape
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])
    out_shape = ["N", *shapes[graph.output][1:]]
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
