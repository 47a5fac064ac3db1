"""The float-level graph that qcnn exports: what a fake-quantized model computes, layer by layer.

`trace.graph_from_model` builds it from a qcnn model; tests may build it directly. `lower.lower_graph`
turns it into the integer program stored in a .qcnn file, `reference_forward` evaluates it with
plain torch float ops (the independent reference the integer runtimes are compared with).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..weight_format import QuantWeight

OPS = ("conv2d", "linear", "quant", "affine", "relu", "lut", "max_pool2d", "avg_pool2d", "adaptive_max_pool2d",
       "adaptive_avg_pool2d", "global_max_pool", "global_avg_pool", "flatten", "add", "mul", "concat", "gather_channels")
# The elementwise functions of a `lut` node (the integer engine runs them as a table over the input codes).
ELEMENTWISE = {"hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid, "silu": F.silu, "sigmoid": torch.sigmoid,
               "tanh": torch.tanh, "gelu": F.gelu, "leaky_relu": F.leaky_relu, "elu": F.elu}


@dataclass(frozen=True)
class QParams:
    """Affine activation quantizer x = scale * (q - zero_point), q in [qmin, qmax]."""
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def __post_init__(self):
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"QParams.scale must be positive and finite, got {self.scale}")
        if not self.qmin <= self.zero_point <= self.qmax:
            raise ValueError(f"QParams.zero_point {self.zero_point} outside [qmin, qmax] = [{self.qmin}, {self.qmax}]")

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes with the rounding of torch's fake_quantize (float32 x * (1/scale), half to even)."""
        inv = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(self.scale, dtype=torch.float32)
        q = torch.round(x.to(torch.float32) * inv) + self.zero_point
        return q.clamp(self.qmin, self.qmax).to(torch.int32)

    def to_json(self) -> dict:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point), "qmin": int(self.qmin),
                "qmax": int(self.qmax)}


def _relu(y: torch.Tensor, node: "Node") -> torch.Tensor:
    y = F.relu(y)
    return y if node.relu_max is None else y.clamp(max=node.relu_max)


@dataclass
class Node:
    """One operation; its output value is named `name`. Inputs name earlier nodes or "input"."""
    name: str
    op: str
    inputs: list[str]
    weight: QuantWeight | None = None       # conv2d, linear
    bias: torch.Tensor | None = None        # conv2d, linear: float32 [M]
    bn_scale: torch.Tensor | None = None    # conv2d/linear: a folded BatchNorm after them, y = bn_scale * y + bn_shift;
    bn_shift: torch.Tensor | None = None    # affine: y = bn_scale[c] * x + bn_shift[c] per channel (a BatchNorm alone)
    act: QParams | None = None              # conv2d/linear: input quantizer; quant: the quantizer
    relu: bool = False                      # conv2d, linear, affine, add: ReLU on the output
    relu_max: float | None = None           # with relu (or op relu): min(relu(y), relu_max), e.g. 6 for ReLU6
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    accumulator_bits: int | None = None     # conv2d, linear: the declared accumulator width P (2..32), if any
    function: str | None = None             # lut: a name of ELEMENTWISE
    function_args: tuple = ()               # lut: its extra arguments (leaky_relu's slope, elu's alpha)
    groups: int = 1                         # conv2d: grouped (depthwise: groups = in = out channels)
    dilation: tuple[int, int] = (1, 1)      # conv2d
    ceil_mode: bool = False                 # max/avg_pool2d: the output size rounds up (torch's ceil_mode)
    count_include_pad: bool = True          # avg_pool2d: padding cells count in the divisor (torch's default)
    output_size: tuple | None = None        # adaptive pools: (H, W), an entry None keeps the input's
    channels: tuple | None = None           # gather_channels: ("shuffle", groups) | ("chunk", n, i) | ("split", sizes, i)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"node {self.name!r}: op must be one of {OPS}, got {self.op!r}")
        if self.accumulator_bits is not None:
            p = self.accumulator_bits
            if self.op not in ("conv2d", "linear"):
                raise ValueError(f"node {self.name!r}: accumulator_bits applies to conv2d and linear, not {self.op!r}")
            if isinstance(p, bool) or not isinstance(p, int) or not 2 <= p <= 32:
                raise ValueError(f"node {self.name!r}: accumulator_bits must be an int in [2, 32], got {p!r}")
        if self.op in ("conv2d", "linear") and self.weight is None:
            raise ValueError(f"node {self.name!r}: {self.op} needs a weight")
        if self.op == "quant" and self.act is None:
            raise ValueError(f"node {self.name!r}: quant needs act (its QParams)")
        if self.relu_max is not None and not (self.relu_max > 0 and (self.relu or self.op == "relu")):
            raise ValueError(f"node {self.name!r}: relu_max must be positive and needs relu, got {self.relu_max!r}")
        if self.op == "lut" and self.function not in ELEMENTWISE:
            raise ValueError(f"node {self.name!r}: lut needs function, one of {sorted(ELEMENTWISE)}, got "
                             f"{self.function!r}")
        if self.op == "affine" and (self.bn_scale is None or self.bn_shift is None):
            raise ValueError(f"node {self.name!r}: affine needs bn_scale and bn_shift")
        if self.op.startswith("adaptive") and (not isinstance(self.output_size, tuple) or len(self.output_size) != 2):
            raise ValueError(f"node {self.name!r}: {self.op} needs output_size (H, W), got {self.output_size!r}")
        if self.op == "gather_channels" and (not isinstance(self.channels, tuple) or
                                             self.channels[:1] not in (("shuffle",), ("chunk",), ("split",),
                                                                       ("index",))):
            raise ValueError(f"node {self.name!r}: gather_channels needs channels ('shuffle', groups), ('chunk', n, i), "
                             f"('split', sizes, i) or ('index', channels), got {self.channels!r}")
        if self.op == "concat" and len(self.inputs) < 2:
            raise ValueError(f"node {self.name!r}: concat needs at least 2 inputs")
        if self.op in ("add", "mul") and len(self.inputs) != 2:
            raise ValueError(f"node {self.name!r}: {self.op} needs 2 inputs")
        if self.op not in ("add", "mul", "concat") and len(self.inputs) != 1:
            raise ValueError(f"node {self.name!r}: {self.op} needs 1 input")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """A lut node's function on float values."""
        return ELEMENTWISE[self.function](x, *self.function_args)

    def channel_index(self, channels: int) -> list[int]:
        """A gather_channels node's input channel for each output channel, on an input of `channels`:
        torchvision's channel_shuffle (view as [groups, C / groups], transpose, flatten), or the i-th piece of
        torch.chunk / torch.split along the channels, or an explicit list ('index': a permutation written as view /
        transpose / view). ValueError naming the node when it does not apply."""
        kind = self.channels[0]
        if kind == "index":
            index = list(self.channels[1])
            if not all(isinstance(c, int) and 0 <= c < channels for c in index):
                raise ValueError(f"node {self.name!r}: channel index {index} is not into {channels} channels")
            return index
        if kind == "shuffle":
            groups = self.channels[1]
            if not isinstance(groups, int) or groups < 1 or channels % groups:
                raise ValueError(f"node {self.name!r}: channel_shuffle into {groups!r} groups of {channels} channels")
            per_group = channels // groups
            return [(j % groups) * per_group + j // groups for j in range(channels)]
        if kind == "chunk":
            n, i = self.channels[1:]
            size = -(-channels // n)
            starts = list(range(0, channels, size))
        else:
            sizes, i = self.channels[1:]
            if isinstance(sizes, int):
                starts = list(range(0, channels, sizes))
                size = sizes
            else:
                if sum(sizes) != channels:
                    raise ValueError(f"node {self.name!r}: split sizes {list(sizes)} do not sum to {channels} channels")
                starts = [sum(sizes[:k]) for k in range(len(sizes))]
        if not 0 <= i < len(starts):
            raise ValueError(f"node {self.name!r}: piece {i} of {len(starts)} along {channels} channels")
        stop = starts[i + 1] if i + 1 < len(starts) else channels
        return list(range(starts[i], stop))


@dataclass
class Graph:
    input_shape: tuple[int, int, int]                 # C, H, W
    mean: list[float]                                 # per-channel normalisation of pixels / 255
    std: list[float]
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self):
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"Graph.mean and Graph.std need {c} entries (one per input channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError("Graph.std entries must be positive")

    @property
    def output(self) -> str:
        return self.nodes[-1].name

    def validate(self) -> None:
        seen = {"input"}
        for node in self.nodes:
            for name in node.inputs:
                if name not in seen:
                    raise ValueError(f"node {node.name!r} uses {name!r} before it is defined")
            if node.name in seen:
                raise ValueError(f"duplicate node name {node.name!r}")
            seen.add(node.name)
        if not self.nodes:
            raise ValueError("graph has no nodes")

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [N, C, H, W] -> the float input of the model ((p / 255 - mean) / std)."""
        x = pixels.to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32)[None, :, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[None, :, None, None]
        return (x - mean) / std


def reference_forward(graph: Graph, x: torch.Tensor, values: dict | None = None) -> torch.Tensor:
    """Evaluates the graph in float32 with fake quantization (the semantics the integer engine follows).
    `values`, when given, receives every node's output by name."""
    graph.validate()
    values = {} if values is None else values
    values["input"] = x
    for node in graph.nodes:
        a = values[node.inputs[0]]
        if node.op in ("conv2d", "linear"):
            if node.act is not None:
                a = node.act.fake_quant(a)
            w = node.weight.dequantize()
            if node.op == "conv2d":
                y = F.conv2d(a, w, None, node.stride, node.padding, node.dilation, node.groups)
            else:
                y = F.linear(a, w.reshape(w.shape[0], -1))
            shape = (1, -1) + (1,) * (y.dim() - 2)
            if node.bias is not None:
                y = y + node.bias.reshape(shape)
            if node.bn_scale is not None:
                y = y * node.bn_scale.reshape(shape) + node.bn_shift.reshape(shape)
            if node.relu:
                y = _relu(y, node)
        elif node.op == "quant":
            y = node.act.fake_quant(a)
        elif node.op == "affine":
            shape = (1, -1) + (1,) * (a.dim() - 2)
            y = a * node.bn_scale.reshape(shape) + node.bn_shift.reshape(shape)
            if node.relu:
                y = _relu(y, node)
        elif node.op == "relu":
            y = _relu(a, node)
        elif node.op == "lut":
            y = node.apply(a)
        elif node.op == "max_pool2d":
            y = F.max_pool2d(a, node.kernel_size, node.stride, node.padding, ceil_mode=node.ceil_mode)
        elif node.op == "avg_pool2d":
            y = F.avg_pool2d(a, node.kernel_size, node.stride, node.padding, ceil_mode=node.ceil_mode,
                             count_include_pad=node.count_include_pad)
        elif node.op == "adaptive_max_pool2d":
            y = F.adaptive_max_pool2d(a, node.output_size)
        elif node.op == "adaptive_avg_pool2d":
            y = F.adaptive_avg_pool2d(a, node.output_size)
        elif node.op == "global_max_pool":
            y = torch.amax(a, dim=(2, 3), keepdim=True)
        elif node.op == "global_avg_pool":
            y = torch.mean(a, dim=(2, 3), keepdim=True)
        elif node.op == "flatten":
            y = torch.flatten(a, 1)
        elif node.op == "concat":
            y = torch.cat([values[name] for name in node.inputs], 1)
        elif node.op == "gather_channels":
            y = a[:, node.channel_index(a.shape[1])]
        elif node.op == "mul":
            y = a * values[node.inputs[1]]
        else:  # add
            y = a + values[node.inputs[1]]
            if node.relu:
                y = _relu(y, node)
        values[node.name] = y
    return values[graph.output]
