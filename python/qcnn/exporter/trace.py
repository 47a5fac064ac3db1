"""qcnn model -> export Graph: traces a quantized model with torch.fx and reads every layer's quantizers.

Supported: (Quant)Conv2d (grouped, depthwise, dilated; zero padding given, 'same' or 'valid'), (Quant)Linear,
BatchNorm2d / BatchNorm1d (folded into the conv / linear layer right before it, else a per-channel integer affine
op), ReLU (module, F.relu, torch.relu, .relu()), ReLU6 and Hardtanh(0, c) (a capped ReLU), Hardswish, Hardsigmoid,
SiLU, Sigmoid, Tanh, GELU, LeakyReLU and ELU (modules and functions: lookup tables in the engine), MaxPool2d /
AvgPool2d (modules and functions; padding, ceil_mode, count_include_pad), AdaptiveMax/AvgPool2d to any size
(modules and functions) and global pooling by x.mean((2, 3)) / x.amax((2, 3)), flattening (nn.Flatten,
torch.flatten(x, 1), x.view/reshape(x.size(0), -1)), torch.cat along the channels, torch.chunk / torch.split
along the channels, torchvision's channel_shuffle (ShuffleNet) and any view / reshape / transpose / permute /
flatten chain that permutes the channels or flattens (replayed on element indices at the shapes of a batch of 2;
the batch must stay dim 0), torchvision's stochastic depth (identity), residual add, a * b of two branches
(squeeze-excitation), standalone QuantAct, and the no-ops of evaluation (Dropout, Identity). The graph is what
the model computes in eval mode. Anything else is a TypeError naming the node.
"""
from __future__ import annotations

import math
import operator

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..data import InputSpec
from ..fold import bn_affine, trace
from ..nn.layers import QuantLayer
from ..quantizers.act import FixedPointQuantizer, QuantAct
from .graph import Graph, Node, QParams, QuantWeight

_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_NO_OPS = (nn.Dropout, nn.Dropout2d, nn.Identity)
_SUPPORTED = ("the exportable activations: ReLU, ReLU6, Hardtanh(0, c), Hardswish, Hardsigmoid, SiLU, Sigmoid, Tanh, "
              "GELU, LeakyReLU, ELU; layers: Conv2d, Linear, BatchNorm, max/avg/adaptive pooling, global pooling, "
              "flatten, add, mul of two branches, torch.cat / chunk / split on channels, torchvision's "
              "channel_shuffle or a view / transpose chain that permutes the channels, Dropout, Identity")
# Elementwise functions the integer engine runs as lookup tables (graph.ELEMENTWISE names).
_LUT_MODULES = {nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                nn.Tanh: "tanh", nn.GELU: "gelu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu"}
_LUT_FUNCTIONS = {F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu", torch.sigmoid: "sigmoid",
                  F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu", F.leaky_relu: "leaky_relu",
                  F.elu: "elu"}
_LUT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}


def act_qparams(act: QuantAct | FixedPointQuantizer) -> QParams:
    """The affine quantizer a calibrated QuantAct, or a fixed-point one (step 2^-F, symmetric), applies in eval mode."""
    if isinstance(act, FixedPointQuantizer):
        return QParams(act.step, 0, -act.qmax, act.qmax)
    if not bool(act.calibrated):
        raise ValueError("QuantAct is not calibrated; run the model (or calibrate_activations) before exporting")
    step = float(act.scale.detach().abs().clamp(min=torch.finfo(torch.float32).tiny)) if act.method == "lsq" \
        else float((act.alpha.detach() / act.qmax).clamp(min=torch.finfo(torch.float32).tiny))
    # PACT clips at +-alpha = +-qmax * step before quantizing: the signed range is symmetric.
    qmin = -act.qmax if act.method == "pact" and act.signed else act.qmin
    return QParams(step, 0, qmin, act.qmax)


@torch.no_grad()
def deployed_bias(layer: QuantLayer) -> torch.Tensor:
    """The bias the layer adds: through its bias quantizer (a fixed-point plan's) when it has one."""
    quantizer = getattr(layer, "bias_quant", None)
    bias = layer.bias.detach() if quantizer is None else quantizer(layer.bias.detach())
    return bias.to(torch.float32)


@torch.no_grad()
def quant_weight(layer: QuantLayer, name: str) -> QuantWeight:
    """The deployed weights of a quantized layer: indices into per-channel or per-tensor level tables."""
    wq, w = layer.weight_quant, layer.weight.detach()
    if wq is None:
        raise TypeError(f"layer {name!r} has float weights; the integer formats need a weight quantizer on every "
                        "conv/linear (e.g. a uniform 8-bit override for it)")
    if not bool(wq.fitted):
        raise ValueError(f"layer {name!r}: the weight quantizer is not fitted yet; run the model once (or "
                         "qcnn.quantize.refit_weights) before exporting")
    return wq.deployed_weight(w, name)


def _is_stochastic_depth(fn) -> bool:
    return getattr(fn, "__name__", "") == "stochastic_depth" and getattr(fn, "__module__", "").startswith("torchvision.")


def _is_channel_shuffle(fn) -> bool:
    return getattr(fn, "__module__", "") == "torchvision.models.shufflenetv2" and getattr(fn, "__name__", "") == \
        "channel_shuffle"


def _is_shape(node) -> bool:
    """x.size() / x.size(d) / x.shape."""
    return isinstance(node, torch.fx.Node) and (node.op == "call_method" and node.target == "size" or
                                                node.op == "call_function" and node.target is getattr
                                                and node.args[1:] == ("shape",))


def _is_batch_size(arg) -> bool:
    """x.size(0), x.size()[0] or x.shape[0] (fx nodes)."""
    if not isinstance(arg, torch.fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size":
        return arg.args[1:] == (0,) or arg.kwargs.get("dim") == 0
    return arg.target is operator.getitem and _is_shape(arg.args[0]) and arg.args[1] == 0


def _conv_padding(mod: nn.Conv2d, node: torch.fx.Node, tracer) -> tuple[int, int]:
    """Explicit zero padding; padding='same' is (dilation * (k - 1)) / 2 per side, exportable when that is a
    whole number (odd kernels: torch pads the extra row at the end otherwise, which the format cannot say)."""
    if not isinstance(mod.padding, str):
        return tuple(mod.padding)
    if mod.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
    if any(t % 2 for t in total):
        raise tracer.fail(node, f"padding='same' with kernel {tuple(mod.kernel_size)} and dilation "
                          f"{tuple(mod.dilation)} pads unevenly; give the padding explicitly")
    return tuple(t // 2 for t in total)


_SCALAR_FUNCTIONS = (operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub, operator.neg)
_SHAPE_METHODS = ("view", "reshape", "transpose", "permute", "contiguous", "flatten", "swapaxes")
_SHAPE_FUNCTIONS = (torch.reshape, torch.transpose, torch.permute, torch.flatten, torch.swapaxes)


class _Tracer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, int, int]):
        self.model, self.input_shape = model, tuple(input_shape)
        self.fx_graph = trace(model, "qcnn.export")
        self.modules = dict(model.named_modules())
        self.shapes: dict[torch.fx.Node, tuple] | None = None  # at batch 2, when a shape chain needs them
        self.rearranged: dict[torch.fx.Node, tuple] = {}  # view / transpose chains: (source, its shape, index)
        self.scalars: set[torch.fx.Node] = set()  # shape arithmetic (x.size(1) // g), read where a view uses it
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.value: dict[torch.fx.Node, str] = {}            # fx node -> graph value name
        self.producers: dict[str, list[torch.fx.Node]] = {"input": []}  # graph value -> fx nodes that alias it
        self.output: str | None = None
        self.pieces: dict[torch.fx.Node, tuple] = {}  # chunk / split calls along the channels: (source, how)

    def fail(self, node: torch.fx.Node, what: str) -> TypeError:
        return TypeError(f"qcnn.export: node {node.name!r} ({node.op} {node.target}): {what}")

    def input_of(self, node: torch.fx.Node, i: int = 0) -> str:
        arg = node.args[i] if i < len(node.args) else None
        if isinstance(arg, torch.fx.Node) and arg in self.rearranged:
            self.settle(arg)
        if not isinstance(arg, torch.fx.Node) or arg not in self.value:
            raise self.fail(node, f"argument {i} is not a traced tensor")
        return self.value[arg]

    def is_scalar(self, node: torch.fx.Node) -> bool:
        """x.size(), x.shape and integer arithmetic on them (c // groups)."""
        if _is_shape(node):
            return True
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        return node.op == "call_function" and node.target in _SCALAR_FUNCTIONS and bool(args) and \
            all(a in self.scalars or _is_shape(a) for a in args)

    def shape_of(self, node: torch.fx.Node) -> tuple:
        """The shape `node` computes on a batch of 2 (torch.fx ShapeProp on zeros, eval mode, run once)."""
        if self.shapes is None:
            from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

            module = torch.fx.GraphModule(self.model, self.fx_graph)
            device = next((t.device for t in self.model.parameters()), torch.device("cpu"))
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    ShapeProp(module).propagate(torch.zeros((2, *self.input_shape), device=device))
            except Exception as err:  # whatever the model raises on a batch of 2 of its input shape
                raise self.fail(node, f"finding its shape needs the model to run on a batch of 2 inputs of shape "
                                f"{self.input_shape}, and it failed ({type(err).__name__}: {err})") from err
            finally:
                self.model.train(was_training)
            self.shapes = {n: tuple(n.meta["tensor_meta"].shape) for n in self.fx_graph.nodes
                           if isinstance(n.meta.get("tensor_meta"), TensorMetadata)}
        if node not in self.shapes:
            raise self.fail(node, "its shape is unknown (not a tensor)")
        return self.shapes[node]

    def view_shape(self, node: torch.fx.Node) -> list:
        """The sizes a view / reshape call asks for (x.view(a, b), x.view((a, b)), torch.reshape(x, (a, b)))."""
        shape = list(node.args[1:]) if node.op == "call_method" else list(self.arg(node, 1, "shape"))
        return list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape

    def rearrange(self, node: torch.fx.Node) -> None:
        """A view / reshape / transpose / permute / contiguous / flatten: replayed on the element indices of the
        batch of 2, settled into a graph node when something else reads it."""
        name = node.target if isinstance(node.target, str) else node.target.__name__
        if name in ("view", "reshape"):
            shape = self.view_shape(node)
            if not shape or not (shape[0] == -1 or _is_batch_size(shape[0])):
                raise self.fail(node, "a view / reshape must keep the batch as its first size (x.size(0) or -1), "
                                f"got {shape[0] if shape else 'no size'}")
        arg = node.args[0] if node.args else node.kwargs.get("input")
        if isinstance(arg, torch.fx.Node) and arg in self.rearranged:
            source, source_shape, index = self.rearranged[arg]
        elif isinstance(arg, torch.fx.Node) and arg in self.value:
            source, source_shape = self.value[arg], self.shape_of(arg)
            index = torch.arange(math.prod(source_shape)).reshape(source_shape)
        else:
            raise self.fail(node, "argument 0 is not a traced tensor")
        if name in ("transpose", "swapaxes"):
            dims = [self.arg(node, i, key) for i, key in ((1, "dim0"), (2, "dim1"))]
            index = index.transpose(*dims)
        elif name == "permute":
            dims = node.args[1:] if node.op == "call_method" else self.arg(node, 1, "dims")
            index = index.permute(*(dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims))
        elif name != "contiguous":  # view, reshape, flatten: the elements in row-major order, re-shaped
            index = index.reshape(self.shape_of(node))
        if tuple(index.shape) != self.shape_of(node):
            raise self.fail(node, f"replaying it gave shape {tuple(index.shape)}, torch gives {self.shape_of(node)}")
        self.rearranged[node] = (source, source_shape, index)

    def settle(self, node: torch.fx.Node) -> None:
        """The graph node for a finished view / transpose chain: the identity, a flatten, or a permutation of the
        channels of an NCHW tensor (a channel shuffle written out by hand). Anything else is refused."""
        source, source_shape, index = self.rearranged.pop(node)
        batch = index.shape[0]
        per_image = index.numel() // batch if batch else 0
        first = torch.arange(batch).reshape((batch,) + (1,) * (index.dim() - 1)) * per_image
        own = index - first  # each image's element indices into its own [C, H, W] (or [F])
        if index.dim() < 2 or batch != 2 or not bool(((own >= 0) & (own < per_image)).all()):
            raise self.fail(node, "a view / transpose chain exports only when it keeps each image apart along dim 0")
        if torch.equal(own.flatten(1)[0], torch.arange(per_image)) and torch.equal(own[0], own[1]):
            if tuple(index.shape) == tuple(source_shape):
                self.alias(node, source)
            elif index.dim() == 2:
                self.add(node, Node(node.name, "flatten", [source]))
            else:
                raise self.fail(node, f"a view to {tuple(index.shape)[1:]} has no export (flatten to (batch, -1) or "
                                "keep the NCHW shape)")
            return
        if index.dim() == 4 and tuple(index.shape) == tuple(source_shape):
            c, h, w = index.shape[1:]
            channel = own[0] // (h * w)
            perm = channel[:, 0, 0]
            plane = torch.arange(h * w).reshape(h, w)
            if torch.equal(own[0], perm[:, None, None] * (h * w) + plane) and torch.equal(own[0], own[1]):
                self.add(node, Node(node.name, "gather_channels", [source], channels=("index", tuple(perm.tolist()))))
                return
        raise self.fail(node, "a view / transpose chain exports only as a flatten or as a permutation of the "
                        "channels (a channel shuffle: view (N, g, C / g, H, W), transpose(1, 2), view (N, C, H, W))")

    def alias(self, node: torch.fx.Node, value: str) -> None:
        self.value[node] = value
        self.producers[value].append(node)

    def register(self, graph_node: Node, node: torch.fx.Node) -> None:
        """Appends a graph node (made for fx `node`) whose name is free."""
        if graph_node.name in self.by_name or graph_node.name == "input":
            raise self.fail(node, f"graph value name {graph_node.name!r} is taken")
        self.nodes.append(graph_node)
        self.by_name[graph_node.name] = graph_node
        self.producers[graph_node.name] = []

    def add(self, node: torch.fx.Node, graph_node: Node) -> None:
        """Appends the graph node computing fx `node` (renamed after it when its own name is taken)."""
        if graph_node.name in self.by_name or graph_node.name == "input":
            graph_node.name = node.name
        self.register(graph_node, node)
        self.alias(node, graph_node.name)

    def sole_use(self, value: str) -> bool:
        """True when nothing but the current fx node consumes `value` (every alias has one user)."""
        return value != "input" and all(len(n.users) == 1 for n in self.producers[value])

    def fuse_relu(self, node: torch.fx.Node, relu_max: float | None = None) -> None:
        src = self.input_of(node)
        target = self.by_name.get(src)
        if target is not None and target.op in ("conv2d", "linear", "affine", "add") and not target.relu and \
                self.sole_use(src):
            target.relu, target.relu_max = True, relu_max
            self.alias(node, src)
        else:
            self.add(node, Node(node.name, "relu", [src], relu_max=relu_max))

    def capped_relu(self, node: torch.fx.Node, low, high) -> None:
        """ReLU6 and Hardtanh(0, c): a ReLU capped at c."""
        if low != 0 or not isinstance(high, (int, float)) or not high > 0:
            raise self.fail(node, f"hardtanh exports only as a ReLU capped at c > 0 (min 0), got [{low}, {high}]")
        self.fuse_relu(node, float(high))

    def module(self, node: torch.fx.Node) -> None:
        mod, qualname = self.modules[node.target], str(node.target)
        src = self.input_of(node)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if not isinstance(mod, QuantLayer):
                raise self.fail(node, "a float layer; call qcnn.quantize_ on the model first")
            act = mod.act_quant
            common = dict(weight=quant_weight(mod, qualname), act=None if act is None else act_qparams(act),
                          bias=None if mod.bias is None else deployed_bias(mod),
                          accumulator_bits=getattr(mod.weight_quant, "accumulator_bits", None))
            if isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros":
                    raise self.fail(node, f"padding_mode {mod.padding_mode!r} has no export; use zero padding")
                self.add(node, Node(qualname, "conv2d", [src], kernel_size=tuple(mod.kernel_size),
                                    stride=tuple(mod.stride), padding=_conv_padding(mod, node, self),
                                    groups=mod.groups, dilation=tuple(mod.dilation), **common))
            else:
                self.add(node, Node(qualname, "linear", [src], **common))
        elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            self.batch_norm(node, mod, src)
        elif isinstance(mod, nn.ReLU):
            self.fuse_relu(node)
        elif isinstance(mod, nn.Hardtanh):  # nn.ReLU6 is Hardtanh(0, 6)
            self.capped_relu(node, mod.min_val, mod.max_val)
        elif type(mod) in _LUT_MODULES:
            self.lut_node(node, _LUT_MODULES[type(mod)], mod)
        elif isinstance(mod, _NO_OPS):
            self.alias(node, src)
        elif isinstance(mod, (QuantAct, FixedPointQuantizer)):
            self.add(node, Node(node.name, "quant", [src], act=act_qparams(mod)))
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
            self.pool(node, mod, src)
        elif isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            if isinstance(mod, nn.AdaptiveMaxPool2d) and mod.return_indices:
                raise self.fail(node, "adaptive max pooling exports only without indices")
            self.adaptive_pool(node, mod.output_size, isinstance(mod, nn.AdaptiveMaxPool2d))
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise self.fail(node, "Flatten exports only with start_dim=1, end_dim=-1")
            self.add(node, Node(node.name, "flatten", [src]))
        else:
            raise self.fail(node, f"module type {type(mod).__name__} has no export ({_SUPPORTED})")

    def batch_norm(self, node: torch.fx.Node, mod: nn.Module, src: str) -> None:
        """Folded into the conv / linear layer right before it (nothing else reading its output, no ReLU between),
        else an affine node: y = scale[c] * x + shift[c]."""
        scale, shift = (t.to(torch.float32) for t in bn_affine(mod))
        layer = self.by_name.get(src)
        if (layer is not None and layer.op == ("conv2d" if isinstance(mod, nn.BatchNorm2d) else "linear")
                and layer.bn_scale is None and not layer.relu and self.sole_use(src)):
            if mod.num_features != layer.weight.out_channels:
                raise self.fail(node, f"{mod.num_features} features after a layer with {layer.weight.out_channels} "
                                "outputs")
            layer.bn_scale, layer.bn_shift = scale, shift
            self.alias(node, src)
        else:
            self.add(node, Node(node.name, "affine", [src], bn_scale=scale, bn_shift=shift))

    def adaptive_pool(self, node: torch.fx.Node, size, is_max: bool) -> None:
        """Adaptive pooling to `size` (an int or (H, W), None keeping the input's): global pooling at 1 x 1."""
        pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if len(pair) != 2 or not all(v is None or isinstance(v, int) and v >= 1 for v in pair):
            raise self.fail(node, f"adaptive pooling needs output_size an int >= 1 or a pair of them (or None), "
                            f"got {size!r}")
        if pair == (1, 1):
            self.add(node, Node(node.name, "global_max_pool" if is_max else "global_avg_pool", [self.input_of(node)]))
        else:
            self.add(node, Node(node.name, "adaptive_max_pool2d" if is_max else "adaptive_avg_pool2d",
                                [self.input_of(node)], output_size=pair))

    def pool(self, node: torch.fx.Node, mod: nn.Module, src: str) -> None:
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        kernel = pair(mod.kernel_size)
        stride = pair(mod.stride if mod.stride is not None else mod.kernel_size)
        padding = pair(mod.padding)
        if isinstance(mod, nn.MaxPool2d):
            if pair(mod.dilation) != (1, 1) or mod.return_indices:
                raise self.fail(node, "max pooling exports only with dilation 1 and no indices")
            self.add(node, Node(node.name, "max_pool2d", [src], kernel_size=kernel, stride=stride, padding=padding,
                                ceil_mode=bool(mod.ceil_mode)))
        else:
            if mod.divisor_override is not None:
                raise self.fail(node, "average pooling with divisor_override has no export")
            self.add(node, Node(node.name, "avg_pool2d", [src], kernel_size=kernel, stride=stride, padding=padding,
                                ceil_mode=bool(mod.ceil_mode), count_include_pad=bool(mod.count_include_pad)))

    def arg(self, node: torch.fx.Node, i: int, key: str, default=None):
        return node.args[i] if i < len(node.args) else node.kwargs.get(key, default)

    def lut_node(self, node: torch.fx.Node, function: str, mod: nn.Module | None = None) -> None:
        """A `lut` node for an elementwise function, with its extra arguments from its module or its call."""
        args = ()
        if function == "leaky_relu":
            args = (float(mod.negative_slope if mod is not None else self.arg(node, 1, "negative_slope", 0.01)),)
        elif function == "elu":
            args = (float(mod.alpha if mod is not None else self.arg(node, 1, "alpha", 1.0)),)
        elif function == "gelu":
            approximate = mod.approximate if mod is not None else self.arg(node, 1, "approximate", "none")
            if approximate != "none":
                raise self.fail(node, "GELU exports with approximate='none'")
        self.add(node, Node(node.name, "lut", [self.input_of(node)], function=function, function_args=args))

    def global_pool(self, node: torch.fx.Node, op: str, flatten: bool) -> None:
        src = self.input_of(node)
        if not flatten:
            self.add(node, Node(node.name, op, [src]))
            return
        pool = Node(f"{node.name}_pool", op, [src])
        self.register(pool, node)
        self.add(node, Node(node.name, "flatten", [pool.name]))

    def split_channels(self, node: torch.fx.Node, kind: str) -> None:
        """torch.chunk(x, n, 1) / torch.split(x, sizes, 1) (and the methods): remembered until a piece is taken."""
        how = self.arg(node, 1, "chunks" if kind == "chunk" else "split_size_or_sections")
        if how is None and kind == "split":
            how = node.kwargs.get("split_size")
        dim = self.arg(node, 2, "dim", 0)
        if dim not in (1, -3):
            raise self.fail(node, f"{kind} exports only along the channels (dim 1), got dim {dim}")
        valid = isinstance(how, int) and how >= 1 if kind == "chunk" else \
            isinstance(how, int) and how >= 1 or isinstance(how, (list, tuple)) and how and \
            all(isinstance(v, int) and v >= 1 for v in how)
        if not valid:
            raise self.fail(node, f"{kind} needs {'a chunk count' if kind == 'chunk' else 'a size or sizes'} >= 1, "
                            f"got {how!r}")
        self.pieces[node] = (self.input_of(node), (kind, tuple(how) if isinstance(how, list) else how))

    def function(self, node: torch.fx.Node) -> None:
        fn = node.target
        method = node.op == "call_method"
        shape_op = method and fn in _SHAPE_METHODS or fn in _SHAPE_FUNCTIONS
        if shape_op and node.args and node.args[0] in self.rearranged:
            self.rearrange(node)  # a view / transpose chain goes on
        elif fn is operator.getitem and node.args[0] in self.pieces:
            src, (kind, how) = self.pieces[node.args[0]]
            index = node.args[1]
            if not isinstance(index, int) or index < 0:
                raise self.fail(node, f"take the pieces of a {kind} by a non-negative index, got {index!r}")
            self.add(node, Node(node.name, "gather_channels", [src], channels=(kind, how, index)))
        elif fn in (torch.chunk,) or (method and fn == "chunk"):
            self.split_channels(node, "chunk")
        elif fn in (torch.split,) or (method and fn == "split"):
            self.split_channels(node, "split")
        elif _is_channel_shuffle(fn):
            groups = self.arg(node, 1, "groups")
            if not isinstance(groups, int) or groups < 1:
                raise self.fail(node, f"channel_shuffle needs groups an int >= 1, got {groups!r}")
            self.add(node, Node(node.name, "gather_channels", [self.input_of(node)], channels=("shuffle", groups)))
        elif fn in _RELU_FUNCTIONS or (method and fn in ("relu", "relu_")):
            self.fuse_relu(node)
        elif fn in _LUT_FUNCTIONS or (method and fn in _LUT_METHODS):
            self.lut_node(node, _LUT_METHODS[fn] if method else _LUT_FUNCTIONS[fn])
        elif _is_stochastic_depth(fn):
            self.alias(node, self.input_of(node))  # torchvision's stochastic depth is the identity in eval mode
        elif fn is F.relu6:
            self.capped_relu(node, 0.0, 6.0)
        elif fn in (F.hardtanh, F.hardtanh_):
            self.capped_relu(node, self.arg(node, 1, "min_val", -1.0), self.arg(node, 2, "max_val", 1.0))
        elif fn in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            if fn is F.adaptive_max_pool2d and self.arg(node, 2, "return_indices", False):
                raise self.fail(node, "adaptive max pooling exports only without indices")
            self.adaptive_pool(node, self.arg(node, 1, "output_size"), fn is F.adaptive_max_pool2d)
        elif (method and fn in ("mean", "amax")) or fn in (torch.mean, torch.amax):
            name = fn if method else fn.__name__
            dims = self.arg(node, 1, "dim")
            if isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims):
                dims = sorted(d % 4 for d in dims)
            dtype = self.arg(node, 3, "dtype") if fn is torch.mean else node.kwargs.get("dtype")
            if dims != [2, 3] or dtype is not None:
                raise self.fail(node, f"{name} exports only over the spatial dims (2, 3) of an NCHW tensor, got {dims}")
            self.global_pool(node, "global_avg_pool" if name == "mean" else "global_max_pool",
                             flatten=not self.arg(node, 2, "keepdim", False))
        elif fn in (F.max_pool2d, F.avg_pool2d):
            kernel = self.arg(node, 1, "kernel_size")
            options = dict(stride=self.arg(node, 2, "stride"), padding=self.arg(node, 3, "padding", 0))
            if fn is F.max_pool2d:
                mod = nn.MaxPool2d(kernel, dilation=self.arg(node, 4, "dilation", 1),
                                   ceil_mode=self.arg(node, 5, "ceil_mode", False),
                                   return_indices=self.arg(node, 6, "return_indices", False), **options)
            else:
                mod = nn.AvgPool2d(kernel, ceil_mode=self.arg(node, 4, "ceil_mode", False),
                                   count_include_pad=self.arg(node, 5, "count_include_pad", True),
                                   divisor_override=self.arg(node, 6, "divisor_override"), **options)
            self.pool(node, mod, self.input_of(node))
        elif method and fn in ("view", "reshape") or fn is torch.reshape:
            shape = self.view_shape(node)
            if len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0]):
                self.add(node, Node(node.name, "flatten", [self.input_of(node)]))
            else:
                self.rearrange(node)
        elif shape_op and fn not in ("flatten", torch.flatten):
            self.rearrange(node)
        elif fn in _ADD_FUNCTIONS or (method and fn in ("add", "add_", "__add__")):
            if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise self.fail(node, "add exports only as a + b of two tensors")
            self.add(node, Node(node.name, "add", [self.input_of(node, 0), self.input_of(node, 1)]))
        elif fn in (operator.mul, torch.mul) or (method and fn in ("mul", "__mul__")):
            if len(node.args) != 2 or not all(isinstance(a, torch.fx.Node) and a in self.value for a in node.args):
                raise self.fail(node, "mul exports only as a * b of two traced tensors (squeeze-excitation's "
                                "x * gate); a constant factor has no export")
            self.add(node, Node(node.name, "mul", [self.input_of(node, 0), self.input_of(node, 1)]))
        elif fn in (torch.cat, torch.concat, torch.concatenate):
            tensors = self.arg(node, 0, "tensors")
            dim = self.arg(node, 1, "dim", 0)
            if isinstance(tensors, (list, tuple)) and len(tensors) == 1 and tensors[0] in self.value:
                self.alias(node, self.value[tensors[0]])  # the cat of one tensor is that tensor
                return
            if not isinstance(tensors, (list, tuple)) or len(tensors) < 2 or dim not in (1, -3):
                raise self.fail(node, f"cat exports only along the channels (dim 1) of two or more NCHW tensors, "
                                f"got dim {dim}")
            if any(not isinstance(t, torch.fx.Node) or t not in self.value for t in tensors):
                raise self.fail(node, "cat arguments must be traced tensors")
            self.add(node, Node(node.name, "concat", [self.value[t] for t in tensors]))
        elif fn is torch.flatten or (method and fn == "flatten"):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if start == 1 and end == -1:
                self.add(node, Node(node.name, "flatten", [self.input_of(node)]))
            else:
                self.rearrange(node)
        else:
            raise self.fail(node, f"this function has no export ({_SUPPORTED})")

    def run(self) -> None:
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                if "input" in self.value.values():
                    raise self.fail(node, "the model must take exactly one input tensor")
                self.alias(node, "input")
            elif node.op == "call_module":
                self.module(node)
            elif self.is_scalar(node):
                self.scalars.add(node)  # shape arithmetic for a view: read where it is used
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            elif node.op == "output":
                if not isinstance(node.args[0], torch.fx.Node):
                    raise self.fail(node, "the model must return one tensor")
                self.output = self.input_of(node)
            else:
                raise self.fail(node, "unsupported fx node kind")
        if not self.nodes or self.output != self.nodes[-1].name:
            raise TypeError("qcnn.export: the model's output must be the last layer's output (the logits)")


def graph_from_model(model: nn.Module, input_shape: tuple[int, int, int] | None = None,
                     mean: list[float] | None = None, std: list[float] | None = None) -> Graph:
    """The export Graph of a quantized qcnn model (in eval semantics; `model` is not modified).

    input_shape (C, H, W) and mean/std (the per-channel normalisation of pixels / 255 the model was trained
    with) default to what the model records (qcnn.data.set_input_spec; qcnn.retrain.run records its
    loader's); with neither, a missing one is a ValueError: there is no silent default."""
    recorded = getattr(model, "qcnn_input_spec", None)
    given = {"input_shape": input_shape, "mean": mean, "std": std}
    missing = [key for key, value in given.items() if value is None]
    if missing and recorded is None:
        raise ValueError(f"qcnn.export: {', '.join(missing)} not given and the model records no input spec: pass "
                         "input_shape=(C, H, W), mean=[...] and std=[...], the per-channel normalisation of "
                         "pixels / 255 the model was trained with (Fashion-MNIST: input_shape=(1, 28, 28), "
                         "mean=[0.286], std=[0.353]), or record them with qcnn.data.set_input_spec(model, spec)")
    if recorded is not None:
        given = {"input_shape": recorded.shape if input_shape is None else input_shape,
                 "mean": recorded.mean if mean is None else mean, "std": recorded.std if std is None else std}
    try:
        spec = InputSpec(tuple(given["input_shape"]), tuple(given["mean"]), tuple(given["std"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"qcnn.export: bad input_shape/mean/std: {err}") from None
    tracer = _Tracer(model, spec.shape)
    tracer.run()
    graph = Graph(spec.shape, list(spec.mean), list(spec.std), tracer.nodes)
    graph.validate()
    return graph
