"""de Bruin, Zivkovic, Corporaal 2020: quantization for a processor whose accumulator has P bits.

Per conv/linear layer the solver picks the input (activation) bit width b_x and the weight bit width b_w that
fully use a signed P-bit accumulator without overflow, and the model is then fine-tuned with the weights held
to the no-overflow condition (A2Q-style, Colbert et al. 2023), so the exported model is overflow-free by
construction:

    plan = qcnn.search.accumulator(model, acc_bits=16)   # a float model (BatchNorm may stay)
    print(plan.table())
    plan.apply(model)                                    # qcnn.quantize_ with per-layer bits and the constraint

The integer form is qcnn's (docs/FORMAT.md section 4): acc = sum_k (x_k - z_x) * w_int[k] over K = C_in/groups *
kh * kw terms, input codes with X = max|x - z_x| (2^b_x - 1 for unsigned b_x-bit codes, 2^(b_x-1) for the
signed codes of the first layer's input, 2^(b_x-1) - 1 for signed PACT), symmetric weights |w_int| <= W =
2^(b_w-1) - 1. A signed P-bit register holds +-(2^(P-1) - 1). Two bounds:

- Data-free worst case (any weights on the grid, any input): |acc| <= K * X * W. For unsigned inputs
  X * W < 2^(b_x + b_w - 1) and K <= 2^ceil(log2 K), so b_x + b_w + ceil(log2 K) <= P gives
  |acc| < 2^(P-1); with signed inputs X * W < 2^(b_x + b_w - 2): one bit less, b_x + b_w + ceil(log2 K) - 1 <= P.
- Per-channel L1 (the model's weights): every partial sum of channel c obeys |acc| <= X * ||w_int,c||_1, so
  ||w_int,c||_1 <= T = floor((2^(P-1) - 1) / X) is enough. This is the constraint kept during fine-tuning
  (UniformWeightQuantizer.constrained_scale); it is implied by the worst case (||w_int,c||_1 <= K * W).

Rule (documented choice): candidates are all pairs min_bits <= b_x, b_w <= max_bits (8 at most: what the engine
runs). bound='worst_case' admits the pairs meeting the data-free bound; bound='l1' (default) admits the pairs
whose integer weights, the model's current weights quantized at b_w by the quantizer the plan installs, meet
X * max_c ||w_int,c||_1 <= l1_slack * (2^(P-1) - 1) (l1_slack > 1 lets fine-tuning's projection shrink the norms
by up to that factor, as A2Q trains into the constraint). The feasible sets grow with P. Among the admitted
pairs the solver prefers balance, then bits: the largest min(b_x, b_w), then the largest b_x + b_w, then more
activation bits (the activations share one per-tensor scale, the weights have one per channel). The pair fully
uses P: neither b_x + 1 nor b_w + 1 is admitted (or it is above max_bits), since either would beat it. Under
the data-free bound the admitted pairs are those with b_x + b_w <= P - ceil(log2 K) (+1 signed), so this is the
most bits, split evenly (the odd bit to the activations). When no pair is admitted, 'worst_case' raises
ValueError naming the layer; 'l1' takes (min_bits, min_bits) and the constraint binds from the first step. Whatever the rule, every layer gets the L1 constraint with P, so the
export declares P on it and verifies the bound from the stored integers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from ..config import (ActQuantConfig, ConfigError, QuantConfig, WeightQuantConfig, check_range, join_key,
                      Section)
from ..engine import unwrap
from ..nn.layers import QuantLayer
from ..quantize import input_readers, quantize_
from ..quantizers.act import QuantAct
from ..quantizers.weight import accumulator_l1_budget, act_code_range, check_accumulator_bits
from ..quantizers.weight_uniform import UniformWeightQuantizer
from .plan import Plan, PlanLayer

PLAN_FORMAT = "qcnn.accumulator_plan"
PLAN_VERSION = 1
BOUNDS = ("l1", "worst_case")
MAX_ENGINE_BITS = 8


def worst_case_accumulator_bits(k: int, act_bits: int, weight_bits: int, signed_input: bool) -> int:
    """The accumulator width the data-free bound asks for: b_x + b_w + ceil(log2 K), one less with a signed
    input (the weights are always signed). A P at least this large holds K * X * W for every input."""
    for name, value in (("k", k), ("act_bits", act_bits), ("weight_bits", weight_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"worst_case_accumulator_bits: {name} must be a positive int, got {value!r}")
    return act_bits + weight_bits + math.ceil(math.log2(k)) - (1 if signed_input else 0)


@dataclass
class AccumulatorSearchConfig(Section):
    """The `search:` section of training/search_accumulator.py's configs: qcnn.search.accumulator's options."""

    acc_bits: int = 16
    bound: Literal["l1", "worst_case"] = "l1"
    min_bits: int = 2
    max_bits: int = 8
    l1_slack: float = 1.0

    def validate(self, path: str = "") -> None:
        check_range(join_key(path, "acc_bits"), self.acc_bits, 2, 32)
        check_range(join_key(path, "min_bits"), self.min_bits, 2, MAX_ENGINE_BITS)
        check_range(join_key(path, "max_bits"), self.max_bits, self.min_bits, MAX_ENGINE_BITS)
        check_range(join_key(path, "l1_slack"), self.l1_slack, 1.0, 1024.0)
        if self.bound == "worst_case" and self.l1_slack != 1.0:
            raise ConfigError(join_key(path, "l1_slack"), "only applies to bound 'l1'")


@dataclass
class LayerAccumulator(PlanLayer):
    """One layer of an AccumulatorPlan.

    k: terms per accumulator (C_in/groups * kh * kw, or in_features); input_code_range X = max|x - z_x|;
    weight_max W = 2^(b_w-1) - 1; l1_budget T = floor((2^(P-1) - 1) / X); solve_l1: max over channels of
    ||w_int,c||_1 of the model's weights at b_w when solved (before fine-tuning); worst_case_acc = K * X * W
    (data-free); guaranteed_acc = X * min(T, K * W), the bound on |acc| the installed constraint proves
    (<= 2^(P-1) - 1); bound: 'worst_case' when the pair meets the data-free bound, else 'l1'."""

    PLAN: ClassVar[str] = "AccumulatorPlan"

    k: int
    signed_input: bool
    act_bits: int
    weight_bits: int
    acc_bits: int
    bound: str
    input_code_range: int
    weight_max: int
    l1_budget: int
    solve_l1: int
    worst_case_acc: int
    guaranteed_acc: int

    def __post_init__(self) -> None:
        where = self.check_identity()
        if self.bound not in BOUNDS:
            raise ValueError(f"{where}: bound must be one of {list(BOUNDS)}, got {self.bound!r}")
        check_accumulator_bits(where, self.acc_bits)
        for key in ("act_bits", "weight_bits"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_ENGINE_BITS:
                raise ValueError(f"{where}: {key} must be an int in [2, {MAX_ENGINE_BITS}], got {value!r}")
        self.check_counts(where, ("k", "input_code_range", "weight_max", "l1_budget", "solve_l1", "worst_case_acc",
                                  "guaranteed_acc"))
        if self.guaranteed_acc > 2 ** (self.acc_bits - 1) - 1:
            raise ValueError(f"{where}: guaranteed_acc {self.guaranteed_acc} exceeds 2^(P-1) - 1 for P = {self.acc_bits}")


@dataclass
class AccumulatorPlan(Plan):
    """Per-layer bit widths for a P-bit accumulator, and the quantization config that installs them."""

    FORMAT: ClassVar[str] = PLAN_FORMAT
    VERSION: ClassVar[int] = PLAN_VERSION

    acc_bits: int
    rule: str
    layers: list[LayerAccumulator]
    base: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self) -> None:
        check_accumulator_bits("AccumulatorPlan", self.acc_bits)
        if self.rule not in BOUNDS:
            raise ValueError(f"AccumulatorPlan: rule must be one of {list(BOUNDS)}, got {self.rule!r}")
        self.check_layers(LayerAccumulator)
        if any(layer.acc_bits != self.acc_bits for layer in self.layers):
            raise ValueError("AccumulatorPlan: every layer must have the plan's acc_bits")

    @property
    def bits(self) -> dict[str, tuple[int, int]]:
        """{layer: (act_bits, weight_bits)}."""
        return {layer.name: (layer.act_bits, layer.weight_bits) for layer in self.layers}

    def quant_config(self) -> QuantConfig:
        """The QuantConfig that qcnn.quantize_ turns into this plan: the base weight quantizer (uniform,
        symmetric) with accumulator_bits = P, the base activation quantizers, and one override per layer (an
        exact-name regex) setting its weight and input bits."""
        weight = self.base.weight.replace(accumulator_bits=self.acc_bits)
        overrides = [{"pattern": "re:" + re.escape(layer.name), "weight": {"bits": layer.weight_bits},
                      "act": {"bits": layer.act_bits}} for layer in self.layers]
        data = {**self.base.to_dict(), "weight": weight.to_dict(), "overrides": overrides}
        return QuantConfig.from_dict(data, _path="quant")

    def apply(self, model: nn.Module) -> nn.Module:
        """Quantizes `model` in place (qcnn.quantize_ with quant_config()); its conv/linear layers must be the
        plan's, by name and in order. Returns `model`."""
        names = [name for name, _ in _layers(model)]
        if names != [layer.name for layer in self.layers]:
            raise ValueError(f"AccumulatorPlan.apply: the model's float conv/linear layers {names} are not the "
                             f"plan's {[layer.name for layer in self.layers]}")
        return quantize_(model, self.quant_config())

    def table(self) -> str:
        """Markdown table, one row per layer."""
        lines = [f"Accumulator P = {self.acc_bits} bits (|acc| <= {2 ** (self.acc_bits - 1) - 1}), rule {self.rule!r}",
                 "",
                 "| layer | K | input | b_x | b_w | P | bound used | max\\|x - z\\| | L1 budget | L1 at solve "
                 "| worst case K*X*W | guaranteed \\|acc\\| |",
                 "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
        for r in self.layers:
            lines.append(f"| {r.name} | {r.k} | {'signed' if r.signed_input else 'unsigned'} | {r.act_bits} | "
                         f"{r.weight_bits} | {r.acc_bits} | {r.bound} | {r.input_code_range} | {r.l1_budget} | "
                         f"{r.solve_l1} | {r.worst_case_acc} | {r.guaranteed_acc} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return self.document(acc_bits=self.acc_bits, rule=self.rule, base=self.base.to_dict(),
                             layers=[layer.to_dict() for layer in self.layers])

    @classmethod
    def from_dict(cls, data: dict) -> "AccumulatorPlan":
        data = cls.read_document(data, ("acc_bits", "rule", "base", "layers"))
        rows = [LayerAccumulator.from_dict(row) for row in data["layers"]]
        return cls(data.get("acc_bits"), data.get("rule"), rows, QuantConfig.from_dict(data.get("base"), _path="base"))


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The float conv/linear layers in the order qcnn.quantize_ visits them."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantLayer)]


def _terms(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    return module.in_features


def base_quant_config(quant) -> QuantConfig:
    """The base QuantConfig of the solver: `quant` checked (uniform symmetric weights, activation quantizers, no
    overrides; ConfigError naming the key otherwise), or the default for None."""
    if quant is None:
        return QuantConfig(weight=WeightQuantConfig(kind="uniform", bits=8, granularity="channel", symmetric=True,
                                                    calibration="mse"),
                           act=ActQuantConfig(bits=8, method="lsq"))
    if isinstance(quant, dict):
        quant = QuantConfig.from_dict(quant, _path="quant")
    if not isinstance(quant, QuantConfig):
        raise TypeError(f"accumulator: quant must be a qcnn.config.QuantConfig, a dict or None, got "
                        f"{type(quant).__name__}")
    if quant.weight is None or quant.weight.kind != "uniform" or not quant.weight.symmetric:
        raise ConfigError("quant.weight", "the accumulator solver needs uniform symmetric weights "
                                          "(kind: uniform, symmetric: true)")
    if quant.act is None:
        raise ConfigError("quant.act", "the accumulator solver needs activation quantizers (every layer's input)")
    if quant.overrides:
        raise ConfigError("quant.overrides", "must be empty: the plan writes one override per layer")
    return quant


def _natural_l1(weight: torch.Tensor, bits: int, wcfg: WeightQuantConfig) -> int:
    """max over channels of ||w_int,c||_1 for `weight` under the unconstrained quantizer the plan installs."""
    quantizer = UniformWeightQuantizer(weight.shape, bits, per_channel=wcfg.granularity == "channel",
                                       symmetric=True, calibration=wcfg.calibration).to(weight.device)
    quantizer.refit(weight.detach())
    ints = quantizer.assignment(weight.detach())
    return int(ints.reshape(ints.shape[0], -1).abs().sum(dim=1).max())


@torch.no_grad()
def accumulator(model: nn.Module, acc_bits: int = 16, *, quant: QuantConfig | dict | None = None,
                bound: str = "l1", min_bits: int = 2, max_bits: int = MAX_ENGINE_BITS,
                l1_slack: float = 1.0) -> AccumulatorPlan:
    """Chooses per-layer input and weight bit widths for a signed `acc_bits`-bit accumulator (the rule and
    the bounds are in the module docstring). `model` is a float model (nn.Conv2d / nn.Linear; not modified).
    `quant` is the base QuantConfig (weight: uniform symmetric, its granularity and calibration; act and
    input_act: method and observer; no overrides); None means uniform per-channel MSE-calibrated weights and
    LSQ activations. The inputs of the layers that read the network input are signed, as qcnn.quantize_ makes
    them. Returns the plan."""
    options = AccumulatorSearchConfig.from_dict({"acc_bits": acc_bits, "bound": bound, "min_bits": min_bits,
                                                 "max_bits": max_bits, "l1_slack": l1_slack})
    if not isinstance(model, nn.Module):
        raise TypeError(f"accumulator: model must be a torch.nn.Module, got {type(model).__name__}")
    base = base_quant_config(quant)
    layers = _layers(model)
    if not layers:
        raise ValueError("accumulator: the model has no float nn.Conv2d or nn.Linear layer")
    if any(isinstance(m, QuantLayer) for m in model.modules()):
        raise ValueError("accumulator: the model already has quantized layers; pass the float model")
    for name, module in layers:
        if not bool(torch.isfinite(module.weight.detach()).all()):
            raise ValueError(f"accumulator: layer {name!r} has NaN or infinite weights")
    p = options.acc_bits
    limit = 2 ** (p - 1) - 1
    bit_range = range(options.min_bits, options.max_bits + 1)
    input_cfg = base.input_act if base.input_act is not None else base.act.replace(signed=True,
                                                                                  bits=max(base.act.bits, 2))
    rows = []
    readers, _ = input_readers(model, [name for name, _ in layers])
    for name, module in layers:
        act_cfg = input_cfg if name in readers else base.act
        signed = act_cfg.signed is True  # 'auto' is bounded as unsigned, its wider code range
        k = _terms(module)
        x_range = {b: act_code_range(QuantAct(b, signed, act_cfg.method)) for b in bit_range}
        natural = {}
        if options.bound == "l1":
            natural = {b: _natural_l1(module.weight, b, base.weight) for b in bit_range}

        def admitted(bx: int, bw: int) -> bool:
            if options.bound == "worst_case":
                return worst_case_accumulator_bits(k, bx, bw, signed) <= p
            return x_range[bx] * natural[bw] <= options.l1_slack * limit

        pairs = [(bx, bw) for bx in bit_range for bw in bit_range if admitted(bx, bw)]
        if pairs:
            bx, bw = max(pairs, key=lambda pair: (min(pair), pair[0] + pair[1], pair[0]))
        elif options.bound == "worst_case":
            need = worst_case_accumulator_bits(k, options.min_bits, options.min_bits, signed)
            raise ValueError(f"accumulator: layer {name!r} (K = {k}) needs P >= {need} for {options.min_bits}-bit "
                             f"inputs and weights under the data-free bound, got P = {p}; use bound='l1'")
        else:
            bx = bw = options.min_bits
        x = x_range[bx]
        w_max = 2 ** (bw - 1) - 1
        budget = accumulator_l1_budget(p, x)
        if budget < 1:
            raise ValueError(f"accumulator: layer {name!r}: P = {p} leaves no nonzero weight for {bx}-bit inputs "
                             f"(max|x - z| = {x})")
        solve_l1 = natural[bw] if natural else _natural_l1(module.weight, bw, base.weight)
        used = "worst_case" if worst_case_accumulator_bits(k, bx, bw, signed) <= p else "l1"
        rows.append(LayerAccumulator(
            name=name, kind="conv" if isinstance(module, nn.Conv2d) else "linear", k=k, signed_input=signed,
            act_bits=bx, weight_bits=bw, acc_bits=p, bound=used, input_code_range=x, weight_max=w_max,
            l1_budget=budget, solve_l1=solve_l1, worst_case_acc=k * x * w_max,
            guaranteed_acc=x * min(budget, k * w_max)))
    return AccumulatorPlan(p, options.bound, rows, base)


@torch.no_grad()
def accumulator_report(model: nn.Module) -> list[dict]:
    """For every quantized layer with an accumulator constraint: its P, max|x - z_x|, the per-channel L1 budget
    and the largest ||w_int,c||_1 of the weights as the forward quantizes them now, and whether the bound
    max|x - z_x| * max_c ||w_int,c||_1 <= 2^(P-1) - 1 holds (it does by construction)."""
    out = []
    for name, layer in unwrap(model).named_modules():
        wq = getattr(layer, "weight_quant", None)
        if not isinstance(layer, QuantLayer) or getattr(wq, "accumulator_bits", None) is None:
            continue
        ints = wq.assignment(layer.weight)
        l1 = int(ints.reshape(ints.shape[0], -1).abs().sum(dim=1).max())
        p, x = wq.accumulator_bits, wq.input_code_range
        out.append({"name": name, "acc_bits": p, "input_code_range": x, "l1_budget": wq.l1_budget, "max_l1": l1,
                    "max_acc": x * l1, "holds": x * l1 <= 2 ** (p - 1) - 1})
    return out


__all__ = ["AccumulatorPlan", "AccumulatorSearchConfig", "LayerAccumulator", "accumulator", "accumulator_report",
           "base_quant_config", "worst_case_accumulator_bits"]
