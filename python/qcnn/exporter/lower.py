"""Lowering of a float-level Graph to the integer program of a .qcnn file (docs/FORMAT.md).

All float -> fixed-point conversions happen here, once; both runtimes only execute integers.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .._ops.int_ops import huffman_code_lengths, huffman_encode, pack_bits
from ..weight_format import codebook_level_limit
from .graph import Graph, Node, QParams

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# Wide tensors (outputs feeding adds, several quantizers, or average pools) use int32 codes whose
# scale is the power of two that maps a proven bound on |value| (worst case over all inputs) into
# [2**29, 2**30). A power of two keeps fixed-point values exact: their scales are powers of two too, so
# an add of two such tensors, and a requantization from one, see the same ties as torch's float graph.
WIDE_RANGE = 2 ** 30
BIAS_LIMIT = 2 ** 62
AFFINE_BIAS_LIMIT = 2 ** 61  # the engine's affine op: |x - z| * |m| < 2^62 and the bias must leave int64 room


def _output_clamp(target: QParams, node: Node) -> list[int]:
    """The code range of a node's output: the target quantizer's, from its zero point up with a ReLU, and up to
    z + round(relu_max / scale) with a capped one (round is monotone: min(relu(y), c) then quantized is the
    quantized relu(y) clamped at the quantized c)."""
    relu = node.relu or node.op == "relu"
    lo = max(target.qmin, target.zero_point) if relu else target.qmin
    hi = target.qmax
    if node.relu_max is not None:
        hi = max(lo, min(hi, target.zero_point + round(node.relu_max / target.scale)))
    return [int(lo), int(hi)]


def quantize_multiplier(real: float, mantissa_bits: int = 31) -> tuple[int, int]:
    """(m, s) with real ~= m * 2**-s, |m| < 2**mantissa_bits normalized to >= 2**(mantissa_bits-1), 0 <= s <= 62."""
    if not math.isfinite(real):
        raise ValueError(f"requantization factor must be finite, got {real}")
    if real == 0.0:
        return 0, 0
    frac, exp = math.frexp(abs(real))  # abs(real) = frac * 2**exp, frac in [0.5, 1)
    mant = round(frac * 2 ** mantissa_bits)
    if mant == 2 ** mantissa_bits:
        mant //= 2
        exp += 1
    shift = mantissa_bits - exp
    if shift > 62:
        mant, shift = round(abs(real) * 2.0 ** 62), 62
    if shift < 0:
        raise ValueError(f"requantization factor {real} is too large (>= 2**{mantissa_bits - 1})")
    return (mant if real > 0 else -mant), shift


def wide_qparams(bound: float) -> QParams:
    if not bound > 0:
        return QParams(1.0, 0, INT32_MIN, INT32_MAX)
    _, exp = math.frexp(bound / WIDE_RANGE)  # bound / WIDE_RANGE in [2**(exp-1), 2**exp)
    return QParams(math.ldexp(1.0, exp), 0, INT32_MIN, INT32_MAX)


def pool_windows(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool,
                 count_include_pad: bool = True) -> list[tuple[int, int, int]]:
    """torch's pooling windows along one axis, as (begin, end, divisor) per output cell: the input cells
    [begin, end) and the average's divisor (the window's cells inside the padded input with count_include_pad,
    else inside the input). With ceil_mode the output size rounds up, the last window starting inside the input
    or its left padding. The engine computes the same (csrc/core/requant.h: pool_axis)."""
    span = size + 2 * pad - kernel
    if span < 0:
        return []
    out = span // stride + 1 if not ceil_mode else -(-span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    windows = []
    for i in range(out):
        start = i * stride - pad
        stop = min(start + kernel, size + pad)
        begin, end = max(start, 0), min(stop, size)
        windows.append((begin, end, stop - start if count_include_pad else end - begin))
    return windows


def adaptive_windows(size: int, out: int) -> list[tuple[int, int, int]]:
    """torch's adaptive pooling windows from `size` to `out` cells: [floor(i size / out), ceil((i + 1) size / out))."""
    return [(i * size // out, -(-(i + 1) * size // out), -(-(i + 1) * size // out) - i * size // out)
            for i in range(out)]


def adaptive_output_size(node: Node, shape: tuple[int, ...]) -> tuple[int, int]:
    """An adaptive pool's (H, W) on a [C, H, W] input: its output_size, None entries keeping the input's."""
    return tuple(int(shape[1 + i] if v is None else v) for i, v in enumerate(node.output_size))


def _grid16(bound: float) -> QParams:
    """The symmetric 16-bit grid over [-bound, bound] that lut inputs and outputs use without a quantizer."""
    return QParams(bound / 32767 if bound > 0 else 1.0, 0, -32767, 32767)


def _code_range(q: QParams) -> int:
    """Largest |q - zero_point|."""
    return max(abs(q.qmax - q.zero_point), abs(q.qmin - q.zero_point))


@dataclass
class Tensor:
    name: str
    qparams: QParams | None
    shape: tuple[int, ...]
    bound: float = 0.0   # proven bound on |real value|


def _bound(q: QParams) -> float:
    return q.scale * _code_range(q)


class Lowering:
    def __init__(self, graph: Graph, entropy_coding: bool):
        graph.validate()
        self.graph = graph
        self.entropy_coding = entropy_coding
        self.nodes: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.values: dict[str, Tensor] = {}
        self.consumers: dict[str, list[Node]] = {"input": []}
        for node in graph.nodes:
            self.consumers.setdefault(node.name, [])
            for name in node.inputs:
                self.consumers[name].append(node)
        self.index_bytes = {"packed": 0, "huffman": 0, "stored": 0}
        self.requantizations: dict[str, Tensor] = {}  # requantize nodes emitted, by name
        self.narrow_targets: dict[str, QParams | None] = {}

    # Where the codes of a value should go -------------------------------------------------------
    def narrow_target(self, value: str) -> QParams | None:
        """The quantizer that the value meets next, if every path from it goes through ops that commute with
        monotone quantization (ReLU, max pooling, flatten) to quantizers with the same parameters (a ResNet stem's
        max pool feeds a block's first conv and its downsampling conv); None if it needs a wide tensor."""
        if value not in self.narrow_targets:  # memoized: branches that meet again are walked once
            target = None
            for i, user in enumerate(self.consumers[value]):
                t = self.user_target(user)
                if t is None or (i > 0 and t != target):
                    target = None
                    break
                target = t
            self.narrow_targets[value] = target
        return self.narrow_targets[value]

    def user_target(self, user: Node) -> QParams | None:
        if user.op in ("conv2d", "linear", "quant"):
            return user.act
        if user.op in ("relu", "max_pool2d", "adaptive_max_pool2d", "global_max_pool", "flatten", "concat",
                       "gather_channels"):
            return self.narrow_target(user.name)
        return None

    def emit(self, node: dict) -> None:
        self.nodes.append(node)

    def requantized(self, value: str, target: QParams, user: str) -> Tensor:
        """The value as codes of `target`, inserting a requantize node when needed."""
        src = self.values[value]
        if src.qparams is None:
            raise ValueError(f"node {user!r}: its input {value!r} is float; only the last layer may output float")
        if src.qparams == target:
            return src
        name = f"{value}.to_{user}"
        if name in self.requantizations:  # the user reads the value twice (torch.cat([x, y, x]))
            return self.requantizations[name]
        mult, shift = quantize_multiplier(src.qparams.scale / target.scale)
        self.emit({"name": name, "op": "requantize", "inputs": [src.name], "shape": list(src.shape),
                   "qparams": target.to_json(), "input_zero_point": src.qparams.zero_point,
                   "multiplier": mult, "shift": shift, "clamp": [target.qmin, target.qmax]})
        self.requantizations[name] = Tensor(name, target, src.shape, min(src.bound, _bound(target)))
        return self.requantizations[name]

    def output_target(self, name: str, bound: float) -> tuple[QParams, float]:
        """The quantizer a node's output is written in and the bound on |real value| that then holds:
        narrow_target; else, where every consumer reads 16-bit codes (lut, mul: narrow16), the 16-bit grid over
        the proven bound that they would requantize a wide tensor onto (one rounding instead of two, and no
        requantize node); else a wide grid over the bound."""
        target = self.narrow_target(name)
        if target is None:
            users = self.consumers[name]
            if not users or any(user.op not in ("lut", "mul") for user in users):
                return wide_qparams(bound), bound
            target = _grid16(bound)
        return target, min(bound, _bound(target))

    def channel_requantization(self, prefix: str, scale: torch.Tensor, bias: torch.Tensor, target: QParams,
                               bias_limit: int) -> None:
        """Stores the per-channel fixed point of y = scale[c] * v + bias[c] in `target`'s codes:
        <prefix>.multiplier / .shift / .bias with multiplier 2^-shift = scale[c] / s_y and bias[c] / s_y * 2^shift
        (clamped to +-bias_limit)."""
        mults, shifts, biases = [], [], []
        for c in range(scale.numel()):
            real, codes = float(scale[c]) / target.scale, float(bias[c]) / target.scale
            mt, sh = quantize_multiplier(real)
            if abs(codes) * 2.0 ** sh > bias_limit:
                # A negligible scale (a pruned channel's FLT_MIN) took the largest shift, which leaves the bias no
                # room: shift less, so the bias stays exact and the multiplier keeps what it can (maybe 0).
                sh = max(0, sh - math.ceil(math.log2(abs(codes) * 2.0 ** sh / bias_limit)))
                mt = round(real * 2.0 ** sh)
            mults.append(mt)
            shifts.append(sh)
            biases.append(max(-bias_limit, min(bias_limit, round(codes * 2.0 ** sh))))
        self.tensors[f"{prefix}.multiplier"] = torch.tensor(mults, dtype=torch.int32)
        self.tensors[f"{prefix}.shift"] = torch.tensor(shifts, dtype=torch.uint8)
        self.tensors[f"{prefix}.bias"] = torch.tensor(biases, dtype=torch.int64)

    # Lowering of each op --------------------------------------------------------------------------
    def lower_input(self) -> None:
        g = self.graph
        target = self.narrow_target("input")
        if target is None:
            lo = min((0.0 - m) / s for m, s in zip(g.mean, g.std))
            hi = max((1.0 - m) / s for m, s in zip(g.mean, g.std))
            scale = (hi - lo) / 255.0
            target = QParams(scale, int(min(255, max(0, round(-lo / scale)))), 0, 255)
        pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 1, 256).expand(1, g.input_shape[0], 1, 256)
        if _code_range(target) > 32767 or target.qmin < -32768 or target.qmax > 32767:
            raise ValueError("the first layer's input quantizer must have int16 codes")
        lut = target.codes(g.normalize(pixels)).reshape(g.input_shape[0], 256).to(torch.int16).contiguous()
        self.tensors["input.lut"] = lut
        self.input_json = {"shape": list(g.input_shape), "mean": [float(m) for m in g.mean],
                           "std": [float(s) for s in g.std], "qparams": target.to_json(), "lut": "input.lut"}
        self.values["input"] = Tensor("input", target, tuple(g.input_shape), _bound(target))

    def weight_tensors(self, node: Node, x_q: QParams, k: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Stores the weight of a conv/linear node (docs/FORMAT.md section 3: real weight
        = scale[m] * levels[g(m), index] for every kind); returns its JSON, the per-channel scale as
        stored and the per-channel max|level|."""
        w = node.weight
        m = w.out_channels
        prefix = f"{node.name}.weight"
        if w.kind == "codebook":
            # The grid CodebookWeightQuantizer trains on: a codebook it fitted is exactly scale * level,
            # so this only reads the levels off. The int32 accumulator bound
            # K * max|q_x - z_x| * L < 2**31 (worst case, no data needed) may lower L further.
            limit = codebook_level_limit(w.bits)
            acc_limit = (2 ** 31 - 1) // (k * max(1, _code_range(x_q)))
            if acc_limit < 1:
                raise ValueError(f"node {node.name!r}: K = {k} too large for an int32 accumulator")
            if acc_limit < limit:
                warnings.warn(f"node {node.name!r}: the int32 accumulator bound (K = {k}, max|q_x - z_x| = "
                              f"{_code_range(x_q)}) caps the codebook levels at {acc_limit} instead of {limit}: "
                              "the deployed weights differ from the trained ones", stacklevel=2)
                limit = acc_limit
            scale, levels = w.integer_table(limit)
        else:
            scale, levels = w.integer_table()
        largest = int(levels.abs().max())
        worst = k * _code_range(x_q) * largest
        if worst > INT32_MAX or largest > 32767:
            raise ValueError(f"node {node.name!r}: integer weights too wide for an int16 table and an int32 "
                             f"accumulator (max|level| = {largest}, K * max|x| * max|w| = {worst})")
        self.tensors[f"{prefix}.levels"] = levels.to(torch.int16).contiguous()
        self.tensors[f"{prefix}.scale"] = scale.to(torch.float32).contiguous()
        scale = self.tensors[f"{prefix}.scale"].to(torch.float64)  # the requantization uses the stored scale
        flat = w.indices.reshape(-1).contiguous()
        packed = pack_bits(flat, w.bits)
        coding = "packed"
        stored = packed
        self.index_bytes["packed"] += packed.numel()
        if w.bits <= 8:  # Huffman codes take at most 256 symbols
            lengths = huffman_code_lengths(torch.bincount(flat.long(), minlength=w.codes), 16)
            huff = huffman_encode(flat, lengths)
            self.index_bytes["huffman"] += huff.numel() + lengths.numel()
            if self.entropy_coding and huff.numel() + lengths.numel() < packed.numel():
                coding, stored = "huffman", huff
                self.tensors[f"{prefix}.code_lengths"] = lengths
        else:
            self.index_bytes["huffman"] += packed.numel()
        self.index_bytes["stored"] += stored.numel() + (self.tensors[f"{prefix}.code_lengths"].numel()
                                                        if coding == "huffman" else 0)
        self.tensors[f"{prefix}.indices"] = stored
        info = {"kind": w.kind, "bits": w.bits, "codes": w.codes, "groups": w.groups, "count": int(flat.numel()),
                "coding": coding}
        group_max = levels.abs().amax(dim=1).to(torch.float64)
        return info, scale, group_max.expand(m)

    def check_accumulator(self, node: Node, k: int) -> None:
        """Proves, from the integers just stored, that the node's declared P-bit accumulator cannot overflow:
        every partial sum of channel m obeys |acc| <= max|x - z_x| * ||w_int,m||_1, which must be at most
        2^(P-1) - 1 (docs/FORMAT.md section 4). Raises ValueError naming the node otherwise."""
        p = node.accumulator_bits
        w_int = node.weight.gather(self.tensors[f"{node.name}.weight.levels"].to(torch.int64))
        l1 = w_int.abs().sum(dim=1)
        x_range = _code_range(node.act)
        worst = x_range * int(l1.max())
        limit = 2 ** (p - 1) - 1
        if worst > limit:
            channel = int(l1.argmax())
            raise ValueError(f"node {node.name!r}: declares accumulator_bits = {p} but max|x - z_x| * ||w_int||_1 = "
                             f"{x_range} * {int(l1[channel])} = {worst} > 2^{p - 1} - 1 = {limit} (output channel "
                             f"{channel}, K = {k}); the accumulator can overflow")

    def lower_conv(self, node: Node) -> None:
        if node.act is None:
            raise ValueError(f"node {node.name!r}: {node.op} has no input quantizer; the integer runtime needs one")
        if _code_range(node.act) > 32767:
            raise ValueError(f"node {node.name!r}: input codes must fit int16 after the zero point")
        x = self.requantized(node.inputs[0], node.act, node.name)
        m = node.weight.out_channels
        if node.op == "conv2d":
            if len(x.shape) != 3:
                raise ValueError(f"node {node.name!r}: conv2d input must be [C, H, W], got {list(x.shape)}")
            c, h, wd = x.shape
            kh, kw = node.weight.indices.shape[2:]
            groups, (dh, dw) = int(node.groups), node.dilation
            if groups < 1 or c % groups or m % groups:
                raise ValueError(f"node {node.name!r}: groups {groups} must divide the {c} input and {m} output "
                                 "channels")
            if node.weight.indices.shape[1] * groups != c:
                raise ValueError(f"node {node.name!r}: weight has {node.weight.indices.shape[1]} input channels per "
                                 f"group, input {c} in {groups} groups")
            oh = (h + 2 * node.padding[0] - dh * (kh - 1) - 1) // node.stride[0] + 1
            ow = (wd + 2 * node.padding[1] - dw * (kw - 1) - 1) // node.stride[1] + 1
            if oh < 1 or ow < 1:
                raise ValueError(f"node {node.name!r}: kernel larger than the padded input")
            shape = (m, oh, ow)
            k = c // groups * kh * kw
            geometry = {"kernel": [int(kh), int(kw)], "stride": list(map(int, node.stride)),
                        "padding": list(map(int, node.padding)), "in_channels": int(c)}
            if groups != 1:
                geometry["groups"] = groups
            if tuple(node.dilation) != (1, 1):
                geometry["dilation"] = [int(dh), int(dw)]
        else:
            if len(x.shape) != 1:
                raise ValueError(f"node {node.name!r}: linear input must be flat, got {list(x.shape)} (add a flatten)")
            k = x.shape[0]
            if node.weight.indices[0].numel() != k:
                raise ValueError(f"node {node.name!r}: weight has {node.weight.indices[0].numel()} inputs, input {k}")
            shape = (m,)
            geometry = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0], "in_channels": int(k)}
        weight_info, w_scale, level_max = self.weight_tensors(node, node.act, k)
        if node.accumulator_bits is not None:
            self.check_accumulator(node, k)
        one = torch.ones(m, dtype=torch.float64)
        bias = node.bias.to(torch.float64) if node.bias is not None else torch.zeros(m, dtype=torch.float64)
        bn_scale = node.bn_scale.to(torch.float64) if node.bn_scale is not None else one
        bn_shift = node.bn_shift.to(torch.float64) if node.bn_shift is not None else torch.zeros_like(one)
        # y = eff_scale * acc + eff_bias  (acc = sum (q_x - z_x) * level)
        eff_scale = node.act.scale * w_scale * bn_scale
        eff_bias = bn_scale * bias + bn_shift
        is_last = node.name == self.graph.output
        out: dict = {"name": node.name, "op": node.op, "inputs": [x.name], "shape": list(shape),
                     "input_zero_point": node.act.zero_point, "relu": bool(node.relu), "weight": weight_info,
                     **geometry, "out_channels": int(m)}
        if node.accumulator_bits is not None:
            out["accumulator_bits"] = int(node.accumulator_bits)
        if is_last:
            if node.relu:
                raise ValueError(f"node {node.name!r}: the float output layer cannot have a ReLU")
            self.tensors[f"{node.name}.output.scale"] = eff_scale.to(torch.float32).contiguous()
            self.tensors[f"{node.name}.output.bias"] = eff_bias.to(torch.float32).contiguous()
            out["qparams"] = None
            self.values[node.name] = Tensor(node.name, None, shape)
        else:
            # |y| <= |eff_scale| * K * max|q_x - z_x| * max|level| + |eff_bias| for every input.
            bound_m = eff_scale.abs() * (k * _code_range(node.act)) * level_max + eff_bias.abs()
            target, bound = self.output_target(node.name, float(bound_m.max()))
            self.channel_requantization(f"{node.name}.requant", eff_scale, eff_bias, target, BIAS_LIMIT)
            out["qparams"] = target.to_json()
            out["clamp"] = _output_clamp(target, node)
            self.values[node.name] = Tensor(node.name, target, shape, bound)
        self.emit(out)

    def lower_add(self, node: Node) -> None:
        a, b = (self.values[n] for n in node.inputs)
        if a.qparams is None or b.qparams is None:
            raise ValueError(f"node {node.name!r}: add inputs must be quantized")
        if a.shape != b.shape:
            raise ValueError(f"node {node.name!r}: add inputs have shapes {list(a.shape)} and {list(b.shape)}")
        target, bound = self.output_target(node.name, a.bound + b.bound)
        ra, rb = a.qparams.scale / target.scale, b.qparams.scale / target.scale
        _, shift = quantize_multiplier(max(ra, rb), 29)
        ma, mb = round(ra * 2.0 ** shift), round(rb * 2.0 ** shift)
        self.emit({"name": node.name, "op": "add", "inputs": [a.name, b.name], "shape": list(a.shape),
                   "qparams": target.to_json(), "a_zero_point": a.qparams.zero_point, "a_multiplier": ma,
                   "b_zero_point": b.qparams.zero_point, "b_multiplier": mb, "shift": shift, "relu": bool(node.relu),
                   "clamp": _output_clamp(target, node)})
        self.values[node.name] = Tensor(node.name, target, a.shape, bound)

    def lower_affine(self, node: Node) -> None:
        """A BatchNorm that folds into no layer: y = a[c] x + b[c] per channel on the input codes,
        y_code = z_y + RS((x - z_x) m[c] + bias[c], shift[c]) with m[c] 2^-shift[c] = a[c] s_x / s_y (the conv
        epilogue's fixed point), ReLU and clamp on the output codes."""
        src = self.values[node.inputs[0]]
        q = src.qparams
        if q is None:
            raise ValueError(f"node {node.name!r}: input {node.inputs[0]!r} is float")
        channels = src.shape[0]
        a, b = node.bn_scale.to(torch.float64), node.bn_shift.to(torch.float64)
        if a.numel() != channels:
            raise ValueError(f"node {node.name!r}: {a.numel()} BatchNorm features for an input of {channels} channels "
                             f"(shape {list(src.shape)})")
        target, bound = self.output_target(node.name, float((a.abs() * src.bound + b.abs()).max()))
        self.channel_requantization(node.name, a * q.scale, b, target, AFFINE_BIAS_LIMIT)
        self.emit({"name": node.name, "op": "affine", "inputs": [src.name], "shape": list(src.shape),
                   "input_zero_point": q.zero_point, "qparams": target.to_json(), "clamp": _output_clamp(target, node)})
        self.values[node.name] = Tensor(node.name, target, src.shape, bound)

    def lower_output(self) -> None:
        """A model whose last node is not a conv or linear layer (a 1x1-conv classifier then global pooling and
        flatten) ends in a dequantize node: the float output scale * (code - zero_point)."""
        last = self.values[self.graph.output]
        self.output_name = last.name
        if last.qparams is None:
            return
        q = last.qparams
        self.output_name = f"{last.name}.dequantize"
        self.emit({"name": self.output_name, "op": "dequantize", "inputs": [last.name], "shape": list(last.shape),
                   "input_qparams": q.to_json(), "qparams": None})

    def narrow16(self, value: str, user: str) -> Tensor:
        """The value with codes of at most 16 bits around its zero point (a wide one requantized onto a
        symmetric 16-bit grid over its bound)."""
        src = self.values[value]
        if src.qparams is None:
            raise ValueError(f"node {user!r}: input {value!r} is float")
        if _code_range(src.qparams) > 32767:
            src = self.requantized(value, _grid16(src.bound), user)
        return src

    def lower_mul(self, node: Node) -> None:
        """a * b of two branches (squeeze-excitation's x * gate(x), the gate [C, 1, 1] broadcast over x's
        positions): the product of the integer codes, requantized once: y_code = z + (s_a s_b / s_y) *
        (a - z_a)(b - z_b)."""
        a, b = (self.narrow16(name, node.name) for name in node.inputs)
        if a.shape != b.shape and len(a.shape) == 3 and tuple(a.shape) == (b.shape[0], 1, 1):
            a, b = b, a  # the engine broadcasts its second input
        if a.shape != b.shape and not (len(a.shape) == 3 and tuple(b.shape) == (a.shape[0], 1, 1)):
            raise ValueError(f"node {node.name!r}: mul inputs must have the same shape or one be [C, 1, 1] of the "
                             f"other's channels, got {list(a.shape)} and {list(b.shape)}")
        bound = a.bound * b.bound
        target = self.narrow_target(node.name) or _grid16(bound)
        multiplier, shift = quantize_multiplier(a.qparams.scale * b.qparams.scale / target.scale)
        self.emit({"name": node.name, "op": "mul", "inputs": [a.name, b.name], "shape": list(a.shape),
                   "qparams": target.to_json(), "a_zero_point": a.qparams.zero_point,
                   "b_zero_point": b.qparams.zero_point, "multiplier": multiplier, "shift": shift,
                   "clamp": _output_clamp(target, node)})
        self.values[node.name] = Tensor(node.name, target, a.shape, min(bound, _bound(target)))

    def lower_concat(self, node: Node) -> None:
        """Channel concatenation: every input is brought to the output's quantizer (the consumer's, which its
        producers already target when they can; else the inputs' common one, or a wide grid over their bounds),
        then the engine copies codes."""
        sources = [self.values[name] for name in node.inputs]
        if any(src.qparams is None for src in sources):
            raise ValueError(f"node {node.name!r}: concat inputs must be quantized")
        if any(len(src.shape) != 3 or src.shape[1:] != sources[0].shape[1:] for src in sources):
            raise ValueError(f"node {node.name!r}: concat inputs must be [C, H, W] with the same H and W, got "
                             f"{[list(src.shape) for src in sources]}")
        bound = max(src.bound for src in sources)
        target = self.narrow_target(node.name)
        if target is None:
            common = {src.qparams for src in sources}
            target = common.pop() if len(common) == 1 else wide_qparams(bound)
        inputs = [self.requantized(name, target, node.name).name for name in node.inputs]
        shape = (sum(src.shape[0] for src in sources), *sources[0].shape[1:])
        self.emit({"name": node.name, "op": "concat", "inputs": inputs, "shape": list(shape),
                   "qparams": target.to_json()})
        self.values[node.name] = Tensor(node.name, target, shape, min(bound, _bound(target)))

    def lower_lut(self, node: Node) -> None:
        """An elementwise function as a table over the input codes (at most 16 bits: a wide input is first
        requantized onto a symmetric 16-bit grid over its bound). Each entry is the function of the code's
        float32 value, quantized as the consumer's quantizer would (a 16-bit grid over the output bound when
        none follows directly), so the engine applies the function and the next quantization in one lookup."""
        src = self.narrow16(node.inputs[0], node.name)
        q = src.qparams
        codes = torch.arange(q.qmin, q.qmax + 1, dtype=torch.int64)
        x = (codes - q.zero_point).to(torch.float32) * torch.tensor(q.scale, dtype=torch.float32)
        y = node.apply(x)
        bound = float(y.abs().max())
        target = self.narrow_target(node.name) or _grid16(bound)
        if target.qmin < -32768 or target.qmax > 32767:
            raise ValueError(f"node {node.name!r}: output codes of a lut must fit int16")
        table = f"{node.name}.table"
        self.tensors[table] = target.codes(y).to(torch.int16).contiguous()
        self.emit({"name": node.name, "op": "lut", "inputs": [src.name], "shape": list(src.shape),
                   "input_min": int(q.qmin), "table": table, "qparams": target.to_json()})
        self.values[node.name] = Tensor(node.name, target, src.shape, min(bound, _bound(target)))

    def lower_simple(self, node: Node) -> None:
        src = self.values[node.inputs[0]]
        q = src.qparams
        if q is None:
            raise ValueError(f"node {node.name!r}: input {node.inputs[0]!r} is float")
        if node.op == "quant":
            self.values[node.name] = self.requantized(node.inputs[0], node.act, node.name)
            return
        spec: dict = {"name": node.name, "op": node.op, "inputs": [src.name], "qparams": q.to_json()}
        shape = src.shape
        if node.op == "relu":
            spec["clamp"] = _output_clamp(q, node)
        elif node.op in ("max_pool2d", "avg_pool2d"):
            if len(shape) != 3:
                raise ValueError(f"node {node.name!r}: {node.op} needs a [C, H, W] input")
            if any(2 * p > k for p, k in zip(node.padding, node.kernel_size)):
                raise ValueError(f"node {node.name!r}: pooling padding must be at most half the kernel")
            oh, ow = (len(pool_windows(shape[1 + i], node.kernel_size[i], node.stride[i], node.padding[i],
                                       node.ceil_mode)) for i in (0, 1))
            if oh < 1 or ow < 1:
                raise ValueError(f"node {node.name!r}: pooling window larger than the input")
            shape = (shape[0], oh, ow)
            spec.update(kernel=list(map(int, node.kernel_size)), stride=list(map(int, node.stride)),
                        padding=list(map(int, node.padding)))
            if node.ceil_mode:
                spec["ceil_mode"] = True
            if node.op == "avg_pool2d" and not node.count_include_pad:
                spec["count_include_pad"] = False
        elif node.op in ("adaptive_max_pool2d", "adaptive_avg_pool2d"):
            if len(shape) != 3:
                raise ValueError(f"node {node.name!r}: {node.op} needs a [C, H, W] input")
            shape = (shape[0], *adaptive_output_size(node, shape))
            spec["output_size"] = list(shape[1:])
        elif node.op in ("global_max_pool", "global_avg_pool"):
            if len(shape) != 3:
                raise ValueError(f"node {node.name!r}: {node.op} needs a [C, H, W] input")
            shape = (shape[0], 1, 1)
        elif node.op == "flatten":
            shape = (int(np.prod(shape)),)
        elif node.op == "gather_channels":
            if len(shape) != 3:
                raise ValueError(f"node {node.name!r}: gather_channels needs a [C, H, W] input")
            index = node.channel_index(shape[0])
            self.tensors[f"{node.name}.index"] = torch.tensor(index, dtype=torch.int32)
            spec["index"] = f"{node.name}.index"
            shape = (len(index), *shape[1:])
        spec["shape"] = list(shape)
        self.emit(spec)
        self.values[node.name] = Tensor(node.name, q, shape, src.bound)

    def run(self) -> dict:
        self.lower_input()
        for node in self.graph.nodes:
            if node.op in ("conv2d", "linear"):
                self.lower_conv(node)
            elif node.op == "affine":
                self.lower_affine(node)
            elif node.op == "add":
                self.lower_add(node)
            elif node.op == "lut":
                self.lower_lut(node)
            elif node.op == "concat":
                self.lower_concat(node)
            elif node.op == "mul":
                self.lower_mul(node)
            else:
                self.lower_simple(node)
        self.lower_output()
        return {"format": "qcnn", "version": 1, "input": self.input_json, "nodes": self.nodes,
                "output": self.output_name}


def lower_graph(graph: Graph, entropy_coding: bool = False) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Returns (metadata document, tensors, index byte counts {packed, huffman, stored})."""
    lowering = Lowering(graph, entropy_coding)
    doc = lowering.run()
    return doc, lowering.tensors, lowering.index_bytes
