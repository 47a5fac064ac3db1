"""Bit-operation cost model of a (quantized) CNN: MACs, bit widths, bit operations, memory, and the
theoretical speedups of O'Keeffe & Villing 2017 and the cost metrics of Goyal et al. 2021.

Definitions (l runs over the nn.Conv2d / nn.Linear layers, qcnn's QuantConv2d / QuantLinear included):

- MACs_l, for one sample: conv: out_numel * (Cin / groups) * kh * kw (grouped and depthwise convs
  included); linear: out_numel * in_features.
- Bit widths: weight bits BW_w = layer.weight_quant.bits (binary weights: 1), activation bits BW_a =
  layer.act_quant.bits of the quantizer on the layer's input (the activation it multiplies), bias bits
  BW_b = layer.bias_quant.bits when the layer has one; every missing quantizer counts 32 (float32 weights
  and activations; a bias without its own quantizer is deployed as float32 or int32).
- bops_l = MACs_l * BW_w * BW_a. A binary weight (1 bit) against b-bit activations costs b popcount passes
  per MAC, which is the same formula; float activations count 32.
- speedup_vs_float32 = sum_l MACs_l * 32 * 32 / sum_l bops_l; speedup_vs_int8 = sum_l MACs_l * 8 * 8 / sum_l bops_l.
- popcount_speedup (O'Keeffe & Villing 2017; the form is ours, see PAPERS.md): when every layer has
  binary weights, 64 / sum_l p_l * b_l with p_l = MACs_l / sum MACs and b_l = BW_a of layer l (one 64-bit
  word of XNOR-popcount per b bit planes); None when any layer has wider weights.
- Memory (Goyal et al. 2021): sum over layers of BW * count for the weights, the biases and the
  activations. qcnn quantizes an activation where it enters a layer, so a layer's activations are its
  input tensor (N_a = its element count per sample, BW_a its bit width). Memory is count x bit width only;
  the int16 level tables of codebook layers (G tables x 2^b entries x 16 bits, docs/FORMAT.md section 3)
  are reported apart as codebook_bits.
- goyal_mult_cost = sum_l BW_w * N_w * BW_a * N_a (Goyal et al.'s multiplication cost, exactly as
  defined there; N_w = weight count, N_a = input activation count of layer l).
- Savings against the same net at all-8-bit (every BW_w, BW_b, BW_a = 8), in percent:
  memory_saved_vs_int8_pct = 100 * (1 - memory_bits / int8_memory_bits), likewise mult_cost_saved_vs_int8_pct.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..engine import unwrap
from ..quantizers.weight_codebook import CodebookWeightQuantizer
from ..quantizers.weight_kinds import kind_of

FLOAT_BITS = 32
INT8_BITS = 8
CODEBOOK_LEVEL_BITS = 16  # levels are stored as I16 (docs/FORMAT.md section 3)
POPCOUNT_WORD_BITS = 64
MAX_INPUT_ELEMENTS = 1 << 27  # one sample of 3 x 6688 x 6688; the forward's activations are some multiple of it


@dataclass
class LayerCost:
    """The cost of one conv or linear layer for one sample (counts; memory and bops in bits)."""

    name: str
    kind: str  # "conv" or "linear"
    weight_format: str  # "float", "uniform", "binary", "fixed", "codebook" or the quantizer's class name
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    groups: int
    calls: int
    macs: int
    weight_count: int
    bias_count: int
    act_count: int
    weight_bits: int
    bias_bits: int
    act_bits: int
    weight_memory_bits: int = field(init=False)
    bias_memory_bits: int = field(init=False)
    act_memory_bits: int = field(init=False)
    codebook_bits: int = 0
    bops: int = field(init=False)
    goyal_mult_cost: int = field(init=False)

    def __post_init__(self) -> None:
        self.weight_memory_bits = self.weight_count * self.weight_bits
        self.bias_memory_bits = self.bias_count * self.bias_bits
        self.act_memory_bits = self.act_count * self.act_bits
        self.bops = self.macs * self.weight_bits * self.act_bits
        self.goyal_mult_cost = self.weight_bits * self.weight_count * self.act_bits * self.act_count

    @property
    def binary_weight(self) -> bool:
        return self.weight_bits == 1

    def to_dict(self) -> dict:
        out = asdict(self)
        out["input_shape"], out["output_shape"] = list(self.input_shape), list(self.output_shape)
        out["binary_weight"] = self.binary_weight
        return out


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _saved_pct(value: int, reference: int) -> float | None:
    return 100.0 * (1.0 - value / reference) if reference > 0 else None


def _totals(layers: list[LayerCost]) -> dict:
    macs = sum(l.macs for l in layers)
    bops = sum(l.bops for l in layers)
    memory = {k: sum(getattr(l, k) for l in layers)
              for k in ("weight_memory_bits", "bias_memory_bits", "act_memory_bits")}
    memory_bits = sum(memory.values())
    int8_memory_bits = INT8_BITS * sum(l.weight_count + l.bias_count + l.act_count for l in layers)
    mult_cost = sum(l.goyal_mult_cost for l in layers)
    int8_mult_cost = INT8_BITS * INT8_BITS * sum(l.weight_count * l.act_count for l in layers)
    popcount = None
    if macs > 0 and all(l.binary_weight for l in layers):
        popcount = POPCOUNT_WORD_BITS / (sum(l.macs * l.act_bits for l in layers) / macs)
    return {
        "layers": len(layers), "macs": macs, "bops": bops,
        "weight_count": sum(l.weight_count for l in layers), "bias_count": sum(l.bias_count for l in layers),
        "act_count": sum(l.act_count for l in layers),
        **memory, "memory_bits": memory_bits, "codebook_bits": sum(l.codebook_bits for l in layers),
        "float32_bops": macs * FLOAT_BITS * FLOAT_BITS, "int8_bops": macs * INT8_BITS * INT8_BITS,
        "speedup_vs_float32": _ratio(macs * FLOAT_BITS * FLOAT_BITS, bops),
        "speedup_vs_int8": _ratio(macs * INT8_BITS * INT8_BITS, bops),
        "popcount_speedup": popcount,
        "goyal_mult_cost": mult_cost, "int8_memory_bits": int8_memory_bits, "int8_mult_cost": int8_mult_cost,
        "memory_saved_vs_int8_pct": _saved_pct(memory_bits, int8_memory_bits),
        "mult_cost_saved_vs_int8_pct": _saved_pct(mult_cost, int8_mult_cost),
    }


@dataclass
class CostReport:
    """Per-layer costs (`layers`, in the order the layers first run) and their sums and speedups (`total`)."""

    input_shape: tuple[int, ...]
    layers: list[LayerCost]
    total: dict = field(init=False)

    def __post_init__(self) -> None:
        self.total = _totals(self.layers)

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "layers": [l.to_dict() for l in self.layers],
                "total": dict(self.total)}

    def table(self) -> str:
        """A markdown table, one row per layer and a total row, then the speedups and savings."""
        lines = ["| layer | kind | weights | MACs | W bits | B bits | A bits | BOPs | weight mem (bits) | "
                 "bias mem (bits) | act mem (bits) |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for l in self.layers:
            lines.append(f"| {l.name} | {l.kind} | {l.weight_format} | {l.macs} | {l.weight_bits} | {l.bias_bits} | "
                         f"{l.act_bits} | {l.bops} | {l.weight_memory_bits} | {l.bias_memory_bits} | "
                         f"{l.act_memory_bits} |")
        t = self.total
        lines.append(f"| total | | | {t['macs']} | | | | {t['bops']} | {t['weight_memory_bits']} | "
                     f"{t['bias_memory_bits']} | {t['act_memory_bits']} |")

        def fmt(value, suffix: str) -> str:
            return "-" if value is None else f"{value:.2f}{suffix}"

        lines += ["",
                  f"theoretical speedup vs float32 {fmt(t['speedup_vs_float32'], 'x')}, vs all-8-bit "
                  f"{fmt(t['speedup_vs_int8'], 'x')}, popcount (O'Keeffe & Villing) {fmt(t['popcount_speedup'], 'x')}; "
                  f"memory {t['memory_bits']} bits ({fmt(t['memory_saved_vs_int8_pct'], '%')} saved vs all-8-bit), "
                  f"multiplication cost {t['goyal_mult_cost']} ({fmt(t['mult_cost_saved_vs_int8_pct'], '%')} saved); "
                  f"codebook tables {t['codebook_bits']} bits"]
        return "\n".join(lines)


def _check_input_shape(input_shape) -> tuple[int, ...]:
    if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__"):
        raise ValueError(f"cost: input_shape must be a sequence of positive ints (one sample, no batch "
                         f"dimension), got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"cost: input_shape must be a non-empty sequence of positive ints (one sample, no "
                         f"batch dimension), got {input_shape!r}")
    return shape


def _bits(quantizer, what: str, layer_name: str) -> int:
    if quantizer is None:
        return FLOAT_BITS
    bits = getattr(quantizer, "bits", None)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ValueError(f"cost: layer {layer_name!r}: its {what} quantizer {type(quantizer).__name__} has no "
                         f"positive int `bits` (got {bits!r})")
    return bits


def _weight_format(quantizer) -> str:
    if quantizer is None:
        return "float"
    return kind_of(quantizer) or type(quantizer).__name__


def _codebook_bits(quantizer, weight_bits: int) -> int:
    if not isinstance(quantizer, CodebookWeightQuantizer):
        return 0
    tables = quantizer.codebook.shape[0] if quantizer.codebook.dim() == 2 else 1
    return tables * 2 ** weight_bits * CODEBOOK_LEVEL_BITS


def cost(model: nn.Module, input_shape, *, example: torch.Tensor | None = None) -> CostReport:
    """The bit-operation cost of `model` on one input of shape `input_shape` (one sample, WITHOUT the batch
    dimension, e.g. (1, 28, 28); a batch of one is prepended). A 4-D shape is an NCHW batch shape, which no
    single sample of a 2-D CNN has: its batch size is dropped and the cost is still per sample. The shapes are
    traced with forward hooks on a deep copy of the model in eval mode (so lazy quantizer fits and BatchNorm
    statistics of `model` stay untouched), fed with zeros or with `example` (a tensor of shape `input_shape`,
    or a batch of one of it). A layer run more than once adds the MACs and activations of every call.
    Formulas: see the module docstring.

    Raises TypeError if `model` is not an nn.Module, ValueError if input_shape is not a sequence of
    positive ints or has more than MAX_INPUT_ELEMENTS elements, if `example` does not have that shape, if the
    model has no nn.Conv2d / nn.Linear that runs on this input, or if the model cannot run on it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"cost: model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    model = unwrap(model)
    if not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()):
        raise ValueError("cost: model has no nn.Conv2d or nn.Linear layer")
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise ValueError(f"cost: input_shape {shape} has {elements:,} elements per sample, more than the "
                         f"{MAX_INPUT_ELEMENTS:,} a traced forward is allowed")
    if example is not None:
        if isinstance(example, torch.Tensor) and tuple(example.shape) == (1, *shape):
            example = example[0]
        if not isinstance(example, torch.Tensor) or tuple(example.shape) != shape:
            got = tuple(example.shape) if isinstance(example, torch.Tensor) else type(example).__name__
            raise ValueError(f"cost: example must be a tensor of shape input_shape {shape}, got {got}")

    traced = copy.deepcopy(model).eval()
    try:
        parameter = next(traced.parameters())
        device, dtype = parameter.device, parameter.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = (example.detach().to(device, dtype) if example is not None else torch.zeros(shape, device=device, dtype=dtype))
    x = x.unsqueeze(0)

    seen: dict[str, dict] = {}

    def record(name: str):
        def hook(module, inputs, output):
            entry = seen.setdefault(name, {"calls": 0, "macs": 0, "act_count": 0,
                                           "input_shape": tuple(inputs[0].shape[1:]),
                                           "output_shape": tuple(output.shape[1:])})
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                per_output = (module.in_channels // module.groups) * kh * kw
            else:
                per_output = module.in_features
            entry["calls"] += 1
            entry["macs"] += output.numel() * per_output
            entry["act_count"] += inputs[0].numel()
        return hook

    modules = {name: m for name, m in traced.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    handles = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            traced(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"cost: the model cannot run on an input of input_shape {shape} (batch of 1): {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError(f"cost: model ran on input_shape {shape} without calling any nn.Conv2d / nn.Linear layer")

    layers = []
    for name, entry in seen.items():  # dict order = order of first call
        module = modules[name]
        weight_quant = getattr(module, "weight_quant", None)
        weight_bits = _bits(weight_quant, "weight", name)
        layers.append(LayerCost(
            name=name, kind="conv" if isinstance(module, nn.Conv2d) else "linear",
            weight_format=_weight_format(weight_quant),
            input_shape=entry["input_shape"], output_shape=entry["output_shape"],
            groups=module.groups if isinstance(module, nn.Conv2d) else 1, calls=entry["calls"],
            macs=entry["macs"], weight_count=module.weight.numel(),
            bias_count=module.bias.numel() if module.bias is not None else 0, act_count=entry["act_count"],
            weight_bits=weight_bits, bias_bits=_bits(getattr(module, "bias_quant", None), "bias", name),
            act_bits=_bits(getattr(module, "act_quant", None), "activation", name),
            codebook_bits=_codebook_bits(weight_quant, weight_bits)))
    return CostReport(input_shape=shape, layers=layers)
