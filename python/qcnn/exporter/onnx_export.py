"""ONNX export of the integer program of a .qcnn file (lower.lower_graph) in the QDQ form of onnxruntime's own
static quantizer, so that onnxruntime's default session runs the layers on its integer kernels. Needs `onnx`.

Per op of the program (codes are uint8; a signed 8-bit grid is held moved up by 128, the same real values):
- conv2d / linear: DequantizeLinear(x codes), DequantizeLinear(int8 weights [M, ...], per-channel scale s_w,
  axis 0), DequantizeLinear(int32 bias, scale s_x * s_w, zero point 0) -> Conv / Gemm -> QuantizeLinear(output
  grid), fused by onnxruntime into QLinearConv / QGemm (the last layer's Gemm, without QuantizeLinear, into a
  QGemm with float output). BatchNorm is folded into s_w and the bias; a ReLU / ReLU6 is the QuantizeLinear's
  saturation, or where the program's clamp is narrower than [0, 255], a Clip on the codes after it.
- add, mul, average pools, sigmoid: DequantizeLinear of the inputs -> op -> QuantizeLinear (QLinearAdd,
  QLinearMul, QLinearAveragePool, QLinearGlobalAveragePool, QLinearSigmoid); the other lookup tables (Hardswish,
  SiLU, ...), affine nodes, and average pools that ONNX's pools cannot say: the float op between them.
- requantize: QuantizeLinear of the dequantized value; max pools, concat, gather_channels, flatten and relu act on
  the codes.
Layers whose weights or input codes pass 8 bits (fixed-point formats of mixed-precision plans, asymmetric 8-bit
weights) keep exact int16 weights behind their DequantizeLinear and run on float kernels; so do, without calibration,
layers whose output codes are narrower than 8 bits (2- and 4-bit activations), where the integer kernels' coarser
bias grid moves exact rounding ties (binary weights with 2-bit activations: 99.47% agreement with the engine on the
integer kernels, 99.99% on the float path).

Values that the program keeps wider than 8 bits (wide int32 tensors: residual adds, values read by quantizers of
different parameters, average pools of those; the 16-bit grids of lookup tables and gates) have no 8-bit grid. One
that only a single 8-bit quantizer reads is held on that quantizer's grid. The others, without calibration, stay
float: exact, but their producers (the last conv of a residual branch, say) run on float kernels. With
`calibration` images each gets a uint8 grid from its range on them (calibrated_grid) so that every layer fuses,
and SiLU becomes onnxruntime's QLinearSigmoid and QLinearMul; both cost one more rounding than the engine makes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import atomic
from .graph import Graph, QParams, reference_forward
from .lower import adaptive_windows, lower_graph, pool_windows

OPSET = 21  # int16 DequantizeLinear (weights past int8), HardSwish and Gelu as single ops
WIDE_WEIGHT_LIMIT = 32767  # int16 weights of the float path
BIAS_LIMIT = 2 ** 30
# The ops whose values past 8 bits get a calibrated grid: those onnxruntime fuses when their output is quantized.
CALIBRATED_OPS = ("conv2d", "linear", "add", "mul", "lut", "affine", "concat", "avg_pool2d", "adaptive_avg_pool2d",
                  "global_avg_pool")
# The ops whose output keeps their input's grid.
GRID_KEEPING_OPS = ("max_pool2d", "adaptive_max_pool2d", "global_max_pool", "flatten", "gather_channels", "relu")
CALIBRATION_ELEMENTS = 2 ** 20  # input elements per batch of the calibration pass (it holds every value of a batch)


@dataclass(frozen=True)
class Value:
    """A value of the program in the ONNX graph: uint8 codes on `grid`, or real values (grid None, float)."""
    tensor: str
    grid: QParams | None


def storage_grid(q: QParams) -> QParams | None:
    """The uint8 grid that holds q's codes (a signed 8-bit one moved up by 128: onnxruntime fuses a conv only
    where its input and output codes have one type), or None past 8 bits."""
    if q.qmin >= 0 and q.qmax <= 255:
        return q
    if q.qmin >= -128 and q.qmax <= 127:
        return QParams(q.scale, q.zero_point + 128, q.qmin + 128, q.qmax + 128)
    return None


def minmax_grid(lo: float, hi: float) -> QParams:
    """onnxruntime's MinMax calibration: the uint8 grid over [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return QParams(scale, int(min(255, max(0, round(-lo / scale)))), 0, 255)


def calibrated_grid(lo: float, hi: float, consumer: QParams | None) -> QParams:
    """The uint8 grid of a value past 8 bits that takes [lo, hi] on the calibration images: onnxruntime's MinMax
    grid, unless the value is requantized to an 8-bit quantizer (`consumer`, step s_c) whose step is at least half
    MinMax's. Then the grid's step is s_c / k, k the largest odd integer that keeps the range within 256 codes
    (1 where s_c is below MinMax's step: the grid clips the value where the consumer does and covers what it can
    of the rest), so that the consumer reads exactly the codes the engine gives it: with k odd, every boundary
    (m + 1/2) s_c of the consumer's rounding is one of the grid's, round(round(v k / s_c) / k) = round(v / s_c)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    grid = minmax_grid(lo, hi)
    ratio = consumer.scale / grid.scale if consumer is not None else 0.0
    if ratio < 0.5:
        return grid
    k = max(1, int(ratio) - (1 - int(ratio) % 2))
    step = consumer.scale / k
    low, high = math.floor(lo / step), math.ceil(hi / step)  # the codes the range needs, relative to 0
    first = max(low, min((consumer.qmin - consumer.zero_point) * k, high - 255))
    return QParams(step, -first, 0, 255)


@torch.no_grad()
def calibration_ranges(graph: Graph, pixels: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) of every node's value over uint8 images [N, C, H, W], from the float fake-quant graph."""
    ranges: dict[str, tuple[float, float]] = {}
    for chunk in pixels.split(max(1, CALIBRATION_ELEMENTS // math.prod(graph.input_shape))):
        values: dict = {}
        reference_forward(graph, graph.normalize(chunk), values)
        for name, v in values.items():
            lo, hi = float(v.min()), float(v.max())
            old = ranges.get(name, (lo, hi))
            ranges[name] = (min(lo, old[0]), max(hi, old[1]))
    return ranges


def real_clamp(q: QParams, clamp: list[int] | None) -> tuple[float, float]:
    """A program clamp [lo, hi] on q's codes as real bounds (infinite where it is q's own range)."""
    lo, hi = clamp or (q.qmin, q.qmax)
    return (-math.inf if lo <= q.qmin else (lo - q.zero_point) * q.scale,
            math.inf if hi >= q.qmax else (hi - q.zero_point) * q.scale)


def integer_layer(ints: np.ndarray, scale: np.ndarray, bias: np.ndarray, x_scale: float, limit: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A layer's real weights ints[m] * scale[m] (scale of any sign, or 0) and real bias as onnxruntime's quantizer
    writes them: the integers times t[m] = max(1, limit // max|ints[m]|), scale's sign folded in, s_w = |scale| / t
    (float32), and the bias as int32 codes on the grid s_x * s_w (the float32 product onnxruntime forms), rounded:
    t makes that grid t times finer than the weights' own. A channel whose s_w would put its bias past 2^30 codes
    (a zero or negligible scale) takes the smallest s_w that does not, its integers rounded onto it.
    Returns (integers, s_w, bias codes, bias scale)."""
    m = ints.shape[0]
    flat = ints.reshape(m, -1) * np.where(scale < 0, -1, 1)[:, None]
    largest = np.abs(flat).max(axis=1, initial=0)
    t = np.maximum(1, limit // np.maximum(largest, 1))
    w_scale = np.abs(scale) / t
    flat = flat * t[:, None]
    floor = np.abs(bias) / (x_scale * BIAS_LIMIT)
    small = w_scale < floor
    flat[small] = np.round(flat[small] * (w_scale[small] / floor[small])[:, None])
    w_scale = np.where(small, floor, w_scale)
    w_scale = np.where(w_scale > 0, w_scale, 1.0).astype(np.float32)
    bias_scale = np.float32(x_scale) * w_scale
    bias_codes = np.round(bias / bias_scale.astype(np.float64)).astype(np.int32)
    return flat.reshape(ints.shape), w_scale, bias_codes, bias_scale


class OnnxProgram:
    """The ONNX graph of a graph's lowered program: one method per program op (OPS), each recording how the
    op's value is held (self.values)."""

    def __init__(self, graph: Graph, calibration: torch.Tensor | None):
        self.graph = graph
        self.doc, self.tensors, _ = lower_graph(graph)
        self.sources = {node.name: node for node in graph.nodes}
        self.specs = {spec["name"]: spec for spec in self.doc["nodes"]}
        self.consumers: dict[str, list[dict]] = {}
        for spec in self.doc["nodes"]:
            for name in spec["inputs"]:
                self.consumers.setdefault(name, []).append(spec)
        self.ranges = calibration_ranges(graph, calibration) if calibration is not None else {}
        self.nodes, self.inits = [], []
        self.values: dict[str, Value] = {}
        self.dequantized: dict[str, str] = {}

    # Graph building -------------------------------------------------------------------------------------
    def const(self, name: str, array) -> str:
        from onnx import numpy_helper

        # np.array keeps 0-d arrays 0-d: onnxruntime fuses QDQ groups only with scalar scales and zero points
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def qparams(self, tag: str, grid: QParams, dtype=np.uint8) -> tuple[str, str]:
        return (self.const(f"{tag}.scale", np.float32(grid.scale)),
                self.const(f"{tag}.zero_point", np.array(grid.zero_point, dtype=dtype)))

    def float_of(self, value: Value) -> str:
        """The value's real values (one DequantizeLinear of its codes, shared by its readers)."""
        if value.grid is None:
            return value.tensor
        if value.tensor not in self.dequantized:
            scale, zp = self.qparams(value.tensor, value.grid)
            self.dequantized[value.tensor] = self.op("DequantizeLinear", [value.tensor, scale, zp],
                                                     f"{value.tensor}.dq")
        return self.dequantized[value.tensor]

    def quantized(self, x: str, grid: QParams | None, tag: str, clamp: tuple[float, float] = (-math.inf, math.inf)
                  ) -> Value:
        """Float x clamped to the real range `clamp`: codes of `grid` (QuantizeLinear, clipped), or with grid None
        float (Relu or Clip)."""
        lo, hi = clamp
        if grid is not None:
            scale, zp = self.qparams(tag, grid)
            return self.clipped(Value(self.op("QuantizeLinear", [x, scale, zp], f"{tag}.q"), grid), clamp, tag,
                                fresh=True)
        if lo == 0 and hi == math.inf:
            x = self.op("Relu", [x], f"{tag}.relu")
        elif lo > -math.inf or hi < math.inf:
            bounds = [self.const(f"{tag}.{k}", np.float32(v)) if math.isfinite(v) else ""
                      for k, v in (("lo", lo), ("hi", hi))]
            x = self.op("Clip", [x, *bounds], f"{tag}.clip")
        return Value(x, None)

    def clipped(self, value: Value, clamp: tuple[float, float], tag: str, fresh: bool = False) -> Value:
        """Codes limited to their grid's [qmin, qmax] and to the real range `clamp` (round is monotone: clamping the
        real value, then quantizing, clamps the codes at the quantized bounds): a Clip on the codes where that is
        narrower than what they hold already, [0, 255] for `fresh` codes of a QuantizeLinear, else [qmin, qmax]."""
        grid, (lo, hi) = value.grid, clamp
        known = (0, 255) if fresh else (grid.qmin, grid.qmax)
        code_lo, code_hi = grid.qmin, grid.qmax
        if lo > -math.inf:
            code_lo = max(code_lo, grid.zero_point + round(lo / grid.scale))
        if hi < math.inf:
            code_hi = max(code_lo, min(code_hi, grid.zero_point + round(hi / grid.scale)))
        if code_lo <= known[0] and code_hi >= known[1]:
            return value
        bounds = [self.const(f"{tag}.code_{k}", np.uint8(v)) for k, v in (("lo", code_lo), ("hi", code_hi))]
        return Value(self.op("Clip", [value.tensor, *bounds], f"{tag}.clip"), grid)

    def codes_of(self, value: Value, grid: QParams, tag: str) -> Value:
        """The value as codes of the uint8 `grid`."""
        return value if value.grid == grid else self.quantized(self.float_of(value), grid, tag)

    def grid_for(self, name: str, q: QParams) -> QParams | None:
        """The uint8 grid that holds the program value `name` (qparams q): q's own (storage_grid); past 8 bits, the
        grid of the one 8-bit quantizer that all its readers requantize it to (an average pool before a layer: the
        codes the engine gives that layer); else with calibration, calibrated_grid; else None (float)."""
        own = storage_grid(q)
        if own is not None:
            return own
        targets, only = self.requantize_targets(name)
        if only and len(set(targets)) == 1:
            return targets[0]
        source = self.sources.get(name)
        if name not in self.ranges or source is None or source.op not in CALIBRATED_OPS:
            return None
        return calibrated_grid(*self.ranges[name], targets[0] if targets else None)

    def requantize_targets(self, name: str) -> tuple[list[QParams], bool]:
        """The 8-bit grids that the value is requantized to through ops that keep its grid, and whether those
        requantizations are all that read it."""
        targets, only = [], True
        for spec in self.consumers.get(name, []):
            target = storage_grid(QParams(**spec["qparams"])) if spec["op"] == "requantize" else None
            if target is not None:
                targets.append(target)
            elif spec["op"] in GRID_KEEPING_OPS:
                found, found_only = self.requantize_targets(spec["name"])
                targets, only = targets + found, only and found_only
            else:
                only = False
        return targets, only

    def store(self, spec: dict, x: str) -> Value:
        """Float x (before the clamp) as the value of program node `spec`: on its grid, with its clamp."""
        q = QParams(**spec["qparams"])
        return self.quantized(x, self.grid_for(spec["name"], q), spec["name"], real_clamp(q, spec.get("clamp")))

    def shape(self, name: str) -> list[int]:
        return list(self.graph.input_shape) if name == "input" else self.specs[name]["shape"]

    # Ops -------------------------------------------------------------------------------------------------
    def layer(self, spec: dict) -> None:
        name, node = spec["name"], self.sources[spec["name"]]
        x, integer = self.layer_input(self.values[spec["inputs"][0]], node.act, f"{name}.input")
        ints, scale, bias = self.layer_weights(name)
        integer = integer and np.abs(ints).max(initial=0) <= 127
        # Without calibration the export keeps the engine's predictions first: a layer whose output codes are narrower
        # than 8 bits (2-bit activations) meets exact rounding ties often, where the integer kernels' bias grid
        # (s_x * s_w / t, t <= 127) moves the result; the int16-weight float path holds the bias 256 times finer.
        q = spec["qparams"]
        if not self.ranges and q is not None and q["qmax"] - q["qmin"] < 255:
            integer = False
        # Integers are scaled up (integer_layer) for a finer bias grid, as far as int8 and AVX2's vpmaddubsw allow
        # (onnxruntime's MLAS kernels on CPUs without VNNI): its u8 x s8 pair sums must stay within int16,
        # 2 * max code * max|w| <= 32767 (|w| <= 64 for 8-bit codes, 127 for 4-bit ones).
        limit = min(127, 32767 // (2 * storage_grid(node.act).qmax)) if integer else WIDE_WEIGHT_LIMIT
        ints, w_scale, bias_codes, bias_scale = integer_layer(ints, scale, bias, node.act.scale, limit)
        w = self.dequantized_const(f"{name}.weight", ints.astype(np.int8 if integer else np.int16), w_scale)
        b = self.dequantized_const(f"{name}.bias", bias_codes, bias_scale)
        if spec["op"] == "conv2d":
            (pad_h, pad_w), dilation = spec["padding"], spec.get("dilation", [1, 1])
            y = self.op("Conv", [x, w, b], f"{name}.sum", kernel_shape=list(spec["kernel"]), strides=spec["stride"],
                        pads=[pad_h, pad_w, pad_h, pad_w], group=int(spec.get("groups", 1)), dilations=dilation)
        else:
            y = self.op("Gemm", [x, w, b], f"{name}.sum", transB=1)
        self.values[name] = Value(y, None) if spec["qparams"] is None else self.store(spec, y)

    def layer_input(self, x: Value, act: QParams, tag: str) -> tuple[str, bool]:
        """The float input of a conv / linear layer on its quantizer's grid, and whether it is 8-bit codes."""
        grid = storage_grid(act)
        if grid is not None:
            return self.float_of(self.codes_of(x, grid, tag)), True
        if act.qmin >= -32768 and act.qmax <= 32767:  # a 16-bit quantizer: fake quantization on its int16 grid
            scale, zp = self.qparams(tag, act, np.int16)
            codes = self.op("QuantizeLinear", [self.float_of(x), scale, zp], f"{tag}.q")
            return self.op("DequantizeLinear", [codes, scale, zp], f"{tag}.dq"), False
        return self.float_of(x), False

    def layer_weights(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A conv / linear node's stored integer weights (the levels the engine reads) in its weight shape, their
        per-channel real scale with BatchNorm folded in, and its real bias (float64)."""
        node = self.sources[name]
        w, m = node.weight, node.weight.out_channels
        ints = w.gather(self.tensors[f"{name}.weight.levels"].to(torch.int64)).numpy()
        scale = self.tensors[f"{name}.weight.scale"].numpy().astype(np.float64)
        bias = node.bias.double().numpy() if node.bias is not None else np.zeros(m)
        if node.bn_scale is not None:
            bn = node.bn_scale.double().numpy()
            scale, bias = scale * bn, bn * bias + node.bn_shift.double().numpy()
        return ints.reshape(tuple(w.indices.shape) if node.op == "conv2d" else (m, -1)), scale, bias

    def dequantized_const(self, name: str, ints: np.ndarray, scale: np.ndarray) -> str:
        inputs = [self.const(f"{name}.int", ints), self.const(f"{name}.scale", scale),
                  self.const(f"{name}.zero_point", np.zeros(scale.shape, dtype=ints.dtype))]
        return self.op("DequantizeLinear", inputs, name, axis=0)

    def requantize(self, spec: dict) -> None:
        target, src = storage_grid(QParams(**spec["qparams"])), self.values[spec["inputs"][0]]
        # onto a 16-bit grid (a lookup table's or a mul's input): the reader takes the source as it is held
        self.values[spec["name"]] = self.codes_of(src, target, spec["name"]) if target is not None else src

    def affine(self, spec: dict) -> None:
        name, node = spec["name"], self.sources[spec["name"]]
        shape = (1, -1) + (1,) * (len(spec["shape"]) - 1)
        a = self.const(f"{name}.a", node.bn_scale.float().numpy().reshape(shape))
        b = self.const(f"{name}.b", node.bn_shift.float().numpy().reshape(shape))
        scaled = self.op("Mul", [self.float_of(self.values[spec["inputs"][0]]), a], f"{name}.scaled")
        self.values[name] = self.store(spec, self.op("Add", [scaled, b], f"{name}.sum"))

    def binary(self, spec: dict) -> None:  # add, mul
        a, b = (self.float_of(self.values[name]) for name in spec["inputs"])
        self.values[spec["name"]] = self.store(spec, self.op(spec["op"].capitalize(), [a, b],
                                                             f"{spec['name']}.{spec['op']}"))

    def relu(self, spec: dict) -> None:
        src, clamp = self.values[spec["inputs"][0]], real_clamp(QParams(**spec["qparams"]), spec["clamp"])
        self.values[spec["name"]] = (self.clipped(src, clamp, spec["name"]) if src.grid is not None else
                                     self.quantized(src.tensor, None, spec["name"], clamp))

    def lut(self, spec: dict) -> None:
        src, node = self.values[spec["inputs"][0]], self.sources[spec["name"]]
        x, fn, tag = self.float_of(src), node.function, f"{node.name}.fn"
        if fn == "hardsigmoid":
            y = self.op("HardSigmoid", [x], tag, alpha=1.0 / 6.0, beta=0.5)
        elif fn == "silu" and self.ranges and src.grid is not None:
            # x * sigmoid(x) as onnxruntime's own model computes it (QLinearSigmoid, QLinearMul): the gate on the
            # uint8 MinMax grid of sigmoid over x's range, one rounding more than the engine's table makes
            lo, hi = ((q - src.grid.zero_point) * src.grid.scale for q in (src.grid.qmin, src.grid.qmax))
            gate = self.quantized(self.op("Sigmoid", [x], f"{node.name}.gate"),
                                  minmax_grid(1 / (1 + math.exp(-lo)), 1 / (1 + math.exp(-hi))), f"{node.name}.gate")
            y = self.op("Mul", [x, self.float_of(gate)], tag)
        elif fn == "silu":
            y = self.op("Mul", [x, self.op("Sigmoid", [x], f"{node.name}.gate")], tag)
        elif fn in ("leaky_relu", "elu"):
            y = self.op("LeakyRelu" if fn == "leaky_relu" else "Elu", [x], tag, alpha=float(node.function_args[0]))
        else:
            y = self.op({"sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish", "gelu": "Gelu"}[fn], [x], tag)
        self.values[spec["name"]] = self.store(spec, y)

    def concat(self, spec: dict) -> None:
        grid = self.grid_for(spec["name"], QParams(**spec["qparams"]))
        parts = [self.float_of(self.values[name]) if grid is None else
                 self.codes_of(self.values[name], grid, f"{spec['name']}.in{i}").tensor
                 for i, name in enumerate(spec["inputs"])]
        self.values[spec["name"]] = Value(self.op("Concat", parts, f"{spec['name']}.y", axis=1), grid)

    def gather_channels(self, spec: dict) -> None:
        src = self.values[spec["inputs"][0]]
        index = self.const(f"{spec['name']}.index", self.tensors[spec["index"]].numpy().astype(np.int64))
        self.values[spec["name"]] = Value(self.op("Gather", [src.tensor, index], f"{spec['name']}.y", axis=1),
                                          src.grid)

    def flatten(self, spec: dict) -> None:
        src = self.values[spec["inputs"][0]]
        self.values[spec["name"]] = Value(self.op("Flatten", [src.tensor], f"{spec['name']}.y", axis=1), src.grid)

    def max_pool(self, spec: dict) -> None:
        src, name = self.values[spec["inputs"][0]], spec["name"]
        pad_h, pad_w = spec["padding"]
        pads = [pad_h, pad_w, pad_h, pad_w]
        if spec.get("ceil_mode"):
            # torch's ceil_mode drops a last window that would start in the right padding, onnxruntime's does not:
            # pad the end explicitly to the program's output size instead (max pooling ignores pads).
            (h, w), (oh, ow) = self.shape(spec["inputs"][0])[1:], spec["shape"][1:]
            (kh, kw), (sh, sw) = spec["kernel"], spec["stride"]
            pads[2] = max(pad_h, (oh - 1) * sh + kh - h - pad_h)
            pads[3] = max(pad_w, (ow - 1) * sw + kw - w - pad_w)
        y = self.op("MaxPool", [src.tensor], f"{name}.y", kernel_shape=spec["kernel"], strides=spec["stride"],
                    pads=pads)
        self.values[name] = Value(y, src.grid)

    def avg_pool(self, spec: dict) -> None:
        name, x = spec["name"], self.float_of(self.values[spec["inputs"][0]])
        include_pad = spec.get("count_include_pad", True)
        if spec.get("ceil_mode"):
            h, w = self.shape(spec["inputs"][0])[1:]
            rows, cols = (pool_windows(size, spec["kernel"][i], spec["stride"][i], spec["padding"][i], True,
                                       include_pad) for i, size in enumerate((h, w)))
            y = self.window_pool(x, name, rows, cols, is_max=False)
        else:
            pad_h, pad_w = spec["padding"]
            y = self.op("AveragePool", [x], f"{name}.avg", kernel_shape=spec["kernel"], strides=spec["stride"],
                        pads=[pad_h, pad_w, pad_h, pad_w], count_include_pad=int(include_pad))
        self.values[name] = self.store(spec, y)

    def adaptive_pool(self, spec: dict) -> None:
        src, name = self.values[spec["inputs"][0]], spec["name"]
        (h, w), (oh, ow) = self.shape(spec["inputs"][0])[1:], spec["output_size"]
        if spec["op"] == "adaptive_max_pool2d":  # on the codes
            y = self.window_pool(src.tensor, name, adaptive_windows(h, oh), adaptive_windows(w, ow), is_max=True)
            self.values[name] = Value(y, src.grid)
        else:
            y = self.window_pool(self.float_of(src), name, adaptive_windows(h, oh), adaptive_windows(w, ow), False)
            self.values[name] = self.store(spec, y)

    def global_pool(self, spec: dict) -> None:
        src, name = self.values[spec["inputs"][0]], spec["name"]
        if spec["op"] == "global_max_pool":  # on the codes (GlobalMaxPool takes float only)
            axes = self.const(f"{name}.axes", np.array([2, 3], dtype=np.int64))
            self.values[name] = Value(self.op("ReduceMax", [src.tensor, axes], f"{name}.y", keepdims=1), src.grid)
        else:
            self.values[name] = self.store(spec, self.op("GlobalAveragePool", [self.float_of(src)], f"{name}.avg"))

    def window_pool(self, x: str, name: str, rows: list, cols: list, is_max: bool) -> str:
        """Pooling over explicit windows ((begin, end, divisor) per output cell of each axis, lower.pool_windows),
        for what ONNX's pools cannot say (torch's ceil_mode and divisors, adaptive pooling): each axis in turn is
        sliced per window, reduced (max, or sum times 1 / divisor) and concatenated. Max of maxima and the
        separable divisors make this exact."""
        for axis, windows in ((2, rows), (3, cols)):
            parts = []
            for i, (begin, end, divisor) in enumerate(windows):
                tag = f"{name}.axis{axis}.{i}"
                begin_, end_, axis_ = (self.const(f"{tag}.{k}", np.array([v], dtype=np.int64)) for k, v in
                                       (("begin", begin), ("end", end), ("axis", axis)))
                window = self.op("Slice", [x, begin_, end_, axis_], f"{tag}.window")
                if is_max:
                    parts.append(self.op("ReduceMax", [window, axis_], f"{tag}.pooled", keepdims=1))
                else:
                    total = self.op("ReduceSum", [window, axis_], f"{tag}.sum", keepdims=1)
                    inv = self.const(f"{tag}.inv", np.float32(1.0 / divisor))
                    parts.append(self.op("Mul", [total, inv], f"{tag}.pooled"))
            x = self.op("Concat", parts, f"{name}.axis{axis}", axis=axis)
        return x

    def dequantize(self, spec: dict) -> None:
        self.values[spec["name"]] = Value(self.float_of(self.values[spec["inputs"][0]]), None)

    OPS = {"conv2d": layer, "linear": layer, "requantize": requantize, "affine": affine, "add": binary,
           "mul": binary, "relu": relu, "lut": lut, "concat": concat, "gather_channels": gather_channels,
           "flatten": flatten, "max_pool2d": max_pool, "avg_pool2d": avg_pool, "adaptive_max_pool2d": adaptive_pool,
           "adaptive_avg_pool2d": adaptive_pool, "global_max_pool": global_pool, "global_avg_pool": global_pool,
           "dequantize": dequantize}

    def build(self):
        from onnx import TensorProto, helper

        q = QParams(**self.doc["input"]["qparams"])
        self.values["input"] = self.quantized("input", storage_grid(q), "input.codes")
        for spec in self.doc["nodes"]:
            self.OPS[spec["op"]](self, spec)
        self.op("Identity", [self.values[self.doc["output"]].tensor], self.graph.output)
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *self.graph.input_shape])
        outp = helper.make_tensor_value_info(self.graph.output, TensorProto.FLOAT,
                                             ["N", *self.specs[self.doc["output"]]["shape"]])
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(helper.make_graph(self.nodes, "qcnn", [inp], [outp], self.inits),
                                  opset_imports=opset, producer_name="qcnn",
                                  # the oldest IR version the opset allows, not the installed onnx's newest:
                                  # runtimes refuse IR versions newer than they know
                                  ir_version=helper.find_min_ir_version_for(opset))
        model.metadata_props.add(key="normalization", value=f"mean={list(self.graph.mean)} std={list(self.graph.std)}")
        return model


def _calibration_pixels(pixels, input_shape) -> torch.Tensor:
    """`pixels` as a uint8 tensor of at least one image of `input_shape`; else a ValueError naming the argument."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    shape = list(input_shape)
    if (not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8 or pixels.dim() != 4
            or list(pixels.shape[1:]) != shape or pixels.shape[0] < 1):
        got = (f"{pixels.dtype} {list(pixels.shape)}" if isinstance(pixels, torch.Tensor) else type(pixels).__name__)
        raise ValueError(f"export_onnx: calibration must be uint8 images [N >= 1, {', '.join(map(str, shape))}], "
                         f"got {got}")
    return pixels.cpu()


def build_onnx(graph: Graph, calibration: torch.Tensor | None = None):
    """The ONNX ModelProto of an export Graph (module docstring). calibration: uint8 images [N, C, H, W] from which
    the values past 8 bits get 8-bit grids (None: they stay float)."""
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("qcnn.export_onnx needs the `onnx` package (pip install onnx)") from err
    graph.validate()
    if calibration is not None:
        calibration = _calibration_pixels(calibration, graph.input_shape)
    model = OnnxProgram(graph, calibration).build()
    onnx.checker.check_model(model)
    return model


def save_model(model, path: str | Path) -> Path:
    """Writes the model's bytes to `path` atomically (qcnn.atomic: a failure raises WriteError naming the file
    and leaves no partial file)."""
    import onnx

    path = Path(path)
    atomic.write_file(path, lambda f: onnx.save(model, f))
    return path


def export_onnx(graph: Graph, path: str | Path, calibration: torch.Tensor | None = None) -> Path:
    """Writes the ONNX file of an export Graph (build_onnx) to `path`."""
    return save_model(build_onnx(graph, calibration), path)
