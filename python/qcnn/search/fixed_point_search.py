"""Goyal et al. 2021 (arXiv 2102.02147): post-training, layer-wise search of fixed-point formats.

Every quantity is signed symmetric fixed point, q = clip(round(x * 2^F), -(2^(BW-1) - 1), 2^(BW-1) - 1) / 2^F,
BW in [2, 16], F in [-32, 32] (qcnn.quantizers.act.FixedPointQuantizer). Per conv/linear layer the search picks
(BW, F) for its weights, its bias and its *input* activations (the integer engine requantizes at layer inputs,
so the input of each layer is what gets a format; the first layer's input is the normalized image).

    folded = qcnn.fold_batchnorm(model)           # BN folded into the convs: every conv gets a bias
    plan = qcnn.search.fixed_point(folded, splits.val, budget=0.005)
    plan.apply(folded)                             # QuantConv2d/QuantLinear with the chosen formats, in place

The model must be a float model (nn.Conv2d / nn.Linear) without BatchNorm: fold it first. The search works on a
copy; the model passed in is left unchanged.

Algorithm (accuracy = top-1 on the loader given, the first `max_batches` batches; drop = relative drop against
the float model, (acc_float - acc) / acc_float; T = budget):
1. Start: every weight, bias and activation at BW = start_bits (8, as in the authors' code, FXPQuantCNN; the
   paper's text says 12) with F = BW - 1 - ceil(log2 max|x|), so nothing clips (max|x| of an activation over the
   first `calibration_batches` batches, float model). While the drop exceeds T, BW += 4 everywhere (up to 16).
2. Component by component (weights, then biases, then activations), layer by layer in network order (i = 1..L),
   with every earlier choice applied and everything later at its start format, a candidate is accepted when
   the drop stays within the layer's budget: weights T*i/L, biases T, activations T + T*i/L (so the final drop
   is at most 2T). With schedule="size" (ours, not the paper's) i/L becomes the share of the component's values
   in layers 1..i (weights: weight count; activations: input activations per image), so a layer's slice of T
   follows what its bits cost in memory: a 288-weight first conv gets almost none, a 37k-weight conv its share.
   For each layer:
   a. step (BW-1, F-1) (same integer bits) while accepted;
   b. then BW-1 with F fixed (clipping allowed) while accepted;
   c. then the 3x3 neighbourhood (BW+-1, F+-1): the cheapest accepted neighbour (fewest bits; ties: higher
      accuracy) replaces the choice if it has fewer bits, or the same bits and an accuracy higher by more than
      `local_min_gain` (a fraction; 0.0015 as the authors' code, which keeps its local search only for such a
      gain); repeated from the new choice until nothing moves. Neighbours with BW+1 are never cheaper, so they
      are not evaluated.
   A layer whose start format already exceeds its budget (possible for early weights, budget T*i/L) keeps it
   (its history record says within_budget False): where the start itself loses more than T/L, start_bits=12
   (the paper's start) gives those layers room.

Speed: a candidate for layer i changes nothing before layer i, so the search keeps, per validation batch, the
values live just before layer i's call (for a chain, layer i's input; for a residual net, the skip tensors too;
found from a torch.fx trace) and reruns only layer i onwards. The cache is built once per layer and pass, by
advancing the previous layer's cache. Memory: (validation images) x (live floats per image at that point) x 4
bytes, e.g. 5000 images of VGGSmall(24) take at most 188 MB (48 x 14 x 14 floats), Goyal's Sequential(32) 502 MB
(32 x 28 x 28). Where that exceeds `cache_bytes` (or the model cannot be traced) candidates are run from the
images; the images themselves are kept in memory under the same cap, else the loader is read again for each
candidate. A candidate is stopped as soon as its errors exceed the budget (its count is then not needed: it
fails). In-place ops (ReLU(inplace=True), +=, relu_) run out of place in the search so cached tensors stay intact.

Costs (Goyal et al.'s definitions, against all-8-bit): memory = sum over layers of BW * count for weights, biases
and activations (here the input activations, per image); multiplication cost = sum_l BW_w * N_w * BW_a * N_a
(N_w weights, N_a input activations per image of layer l). FixedPointPlan.cost also gives bit operations,
sum_l MACs_l * BW_w * BW_a (the issue's cost model).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Optional

import torch
import torch.fx
from torch import nn

from ..config import ConfigError, check_range, join_key, Section
from ..fold import set_submodule
from ..nn.layers import QuantConv2d, QuantLayer, QuantLinear
from ..quantizers.act import (FIXED_POINT_BITS, FIXED_POINT_FRAC_BITS, FixedPointAct, FixedPointQuantizer,
                              check_fixed_point_format)
from ..quantizers.weight_fixed import FixedPointWeightQuantizer
from .cached_eval import CachedScorer, TracedForward, Untraceable, loader_batches
from .plan import Plan, PlanLayer

COMPONENTS = ("weights", "biases", "activations")
SCHEDULES = ("layers", "size")  # the budget's growth over the layers: Goyal et al.'s i/L, or by value count
DEFAULT_CACHE_BYTES = 2 << 30
PLAN_FORMAT = "qcnn.fixed_point_plan"
PLAN_VERSION = 1

Format = tuple[int, int]


def no_clipping_frac_bits(peak: float, bits: int) -> int:
    """F = bits - 1 - ceil(log2 peak) (Goyal et al. 2021): the most fractional bits with which `peak` still fits
    in `bits` signed bits, clamped to [-32, 32]; bits - 1 for peak 0."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not FIXED_POINT_BITS[0] <= bits <= FIXED_POINT_BITS[1]:
        raise ValueError(f"no_clipping_frac_bits: bits must be an int in {list(FIXED_POINT_BITS)}, got {bits!r}")
    if not isinstance(peak, (int, float)) or not math.isfinite(peak) or peak < 0:
        raise ValueError(f"no_clipping_frac_bits: peak must be a finite number >= 0, got {peak!r}")
    if peak == 0:
        return bits - 1
    mantissa, exponent = math.frexp(peak)  # peak = mantissa * 2^exponent, 0.5 <= mantissa < 1
    int_bits = exponent - 1 if mantissa == 0.5 else exponent  # ceil(log2(peak)), exactly
    return max(FIXED_POINT_FRAC_BITS[0], min(FIXED_POINT_FRAC_BITS[1], bits - 1 - int_bits))


def _valid_format(bits: int, frac_bits: int) -> bool:
    return (FIXED_POINT_BITS[0] <= bits <= FIXED_POINT_BITS[1]
            and FIXED_POINT_FRAC_BITS[0] <= frac_bits <= FIXED_POINT_FRAC_BITS[1])


# --------------------------------------------------------------------------------------------------- the plan
@dataclass
class LayerFixedPoint(PlanLayer):
    """The formats of one layer, and what the cost metrics count: weight and bias counts, input activations
    per image and multiply-accumulates per image. b_bits/b_frac are None for a layer without bias."""

    PLAN: ClassVar[str] = "FixedPointPlan"

    w_bits: int
    w_frac: int
    b_bits: Optional[int]
    b_frac: Optional[int]
    a_bits: int
    a_frac: int
    weight_count: int
    bias_count: int
    act_count: int
    macs: int

    def __post_init__(self) -> None:
        where = self.check_identity()
        check_fixed_point_format(f"{where} (weights: w_bits, w_frac)", self.w_bits, self.w_frac)
        check_fixed_point_format(f"{where} (activations: a_bits, a_frac)", self.a_bits, self.a_frac)
        if (self.b_bits is None) != (self.b_frac is None):
            raise ValueError(f"{where}: b_bits and b_frac must both be set or both be None")
        if self.b_bits is not None:
            check_fixed_point_format(f"{where} (biases: b_bits, b_frac)", self.b_bits, self.b_frac)
        self.check_counts(where, ("weight_count", "bias_count", "act_count", "macs"))
        if (self.b_bits is None) != (self.bias_count == 0):
            raise ValueError(f"{where}: b_bits is {self.b_bits} but bias_count is {self.bias_count}")

    def format(self, component: str) -> Format | None:
        prefix = _component_prefix(component)
        bits = getattr(self, f"{prefix}_bits")
        return None if bits is None else (bits, getattr(self, f"{prefix}_frac"))



def _component_prefix(component: str) -> str:
    prefixes = {"weights": "w", "biases": "b", "activations": "a"}
    if component not in prefixes:
        raise ValueError(f"component must be one of {list(prefixes)}, got {component!r}")
    return prefixes[component]


@dataclass
class FixedPointPlan(Plan):
    """The result of qcnn.search.fixed_point: one LayerFixedPoint per conv/linear layer in network order, and the
    search's statistics (val accuracies before/after, relative drop, seconds, candidates evaluated, history)."""

    FORMAT: ClassVar[str] = PLAN_FORMAT
    VERSION: ClassVar[int] = PLAN_VERSION

    layers: list[LayerFixedPoint]
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_layers(LayerFixedPoint)
        if not isinstance(self.stats, dict):
            raise TypeError(f"FixedPointPlan: stats must be a dict, got {type(self.stats).__name__}")

    # ----------------------------------------------------------------------------------------- applying
    def apply(self, model: nn.Module) -> nn.Module:
        """Replaces every nn.Conv2d/nn.Linear of the float, BN-folded `model` (in place) by a QuantConv2d /
        QuantLinear sharing its parameters, with FixedPointWeightQuantizer, FixedPointAct (input) and
        FixedPointQuantizer (bias) in the planned formats. Returns `model`. The plan must name every conv/linear
        layer of the model, and nothing else; on any mismatch the model is left unchanged."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"FixedPointPlan.apply: model must be an nn.Module, got {type(model).__name__}")
        _reject_batchnorm(model, "FixedPointPlan.apply")
        modules = dict(model.named_modules())
        planned = {layer.name for layer in self.layers}
        unplanned = [name for name, m in modules.items()
                     if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in planned]
        if unplanned:
            raise ValueError(f"FixedPointPlan.apply: the plan has no formats for the model's layers {unplanned}")
        replacements = []
        for layer in self.layers:
            module = modules.get(layer.name)
            if module is None:
                raise ValueError(f"FixedPointPlan.apply: the model has no module named {layer.name!r}")
            replacements.append((layer.name, _quantized_layer(module, layer)))
        for name, quantized in replacements:
            set_submodule(model, name, quantized)
        return model

    # ------------------------------------------------------------------------------------------- costs
    def cost(self, reference_bits: int = 8) -> dict:
        """Goyal et al.'s memory (bits) and multiplication cost, and bit operations, of the plan and of the same
        net with every quantity at `reference_bits`, and the fraction saved (1 - plan / reference)."""
        if isinstance(reference_bits, bool) or not isinstance(reference_bits, int) or not 1 <= reference_bits <= 32:
            raise ValueError(f"FixedPointPlan.cost: reference_bits must be an int in [1, 32], got {reference_bits!r}")
        memory = mult = bops = ref_memory = ref_mult = ref_bops = 0
        for layer in self.layers:
            memory += layer.w_bits * layer.weight_count + (layer.b_bits or 0) * layer.bias_count + \
                layer.a_bits * layer.act_count
            ref_memory += reference_bits * (layer.weight_count + layer.bias_count + layer.act_count)
            mult += layer.w_bits * layer.weight_count * layer.a_bits * layer.act_count
            ref_mult += reference_bits ** 2 * layer.weight_count * layer.act_count
            bops += layer.macs * layer.w_bits * layer.a_bits
            ref_bops += reference_bits ** 2 * layer.macs
        return {"reference_bits": reference_bits,
                "memory_bits": memory, "reference_memory_bits": ref_memory,
                "memory_saved": 1.0 - memory / ref_memory if ref_memory else 0.0,
                "mult_cost": mult, "reference_mult_cost": ref_mult,
                "mult_cost_saved": 1.0 - mult / ref_mult if ref_mult else 0.0,
                "bit_ops": bops, "reference_bit_ops": ref_bops,
                "bit_ops_saved": 1.0 - bops / ref_bops if ref_bops else 0.0}

    # ----------------------------------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        return self.document(layers=[layer.to_dict() for layer in self.layers], stats=copy.deepcopy(self.stats))

    @classmethod
    def from_dict(cls, data: dict) -> "FixedPointPlan":
        data = cls.read_document(data, ("layers", "stats"))
        return cls([LayerFixedPoint.from_dict(layer) for layer in data["layers"]], copy.deepcopy(data.get("stats", {})))

    def table(self) -> str:
        """The per-layer formats as a markdown table (BW = total bits with sign, F = fractional bits)."""
        lines = ["| layer | kind | weights | w BW | w F | biases | b BW | b F | act/image | a BW | a F |",
                 "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for l in self.layers:
            bias = ("-", "-") if l.b_bits is None else (l.b_bits, l.b_frac)
            lines.append(f"| {l.name} | {l.kind} | {l.weight_count} | {l.w_bits} | {l.w_frac} | {l.bias_count} | "
                         f"{bias[0]} | {bias[1]} | {l.act_count} | {l.a_bits} | {l.a_frac} |")
        return "\n".join(lines)


def _quantized_layer(module: nn.Module, layer: LayerFixedPoint) -> nn.Module:
    if isinstance(module, QuantLayer) or not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"FixedPointPlan.apply: {layer.name!r} must be a float nn.Conv2d or nn.Linear, got "
                         f"{type(module).__name__}")
    kind = "conv" if isinstance(module, nn.Conv2d) else "linear"
    bias_count = 0 if module.bias is None else module.bias.numel()
    if kind != layer.kind or module.weight.numel() != layer.weight_count or bias_count != layer.bias_count:
        raise ValueError(f"FixedPointPlan.apply: {layer.name!r} is a {kind} with {module.weight.numel()} weights and "
                         f"{bias_count} biases; the plan has a {layer.kind} with {layer.weight_count} and "
                         f"{layer.bias_count}")
    weight_quant = FixedPointWeightQuantizer(module.weight.shape, layer.w_bits, layer.w_frac)
    act_quant = FixedPointAct(layer.a_bits, layer.a_frac)
    bias_quant = None if layer.b_bits is None else FixedPointQuantizer(layer.b_bits, layer.b_frac)
    cls = QuantConv2d if kind == "conv" else QuantLinear
    quantized = cls.from_float(module, weight_quant, act_quant, bias_quant)
    quantized.refit()  # the format is given, nothing is estimated: this marks the weights ready to export
    return quantized


def _reject_batchnorm(model: nn.Module, owner: str) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{owner}: the model contains BatchNorm {name!r}; fold it into the convs first with "
                             "qcnn.fold_batchnorm(model) (which also gives every conv its bias)")


# ------------------------------------------------------------------------------------------- search config
@dataclass
class FixedPointSearchConfig(Section):
    """The `search:` section of a fixed-point search config (training/search_fixed_point.py); the fields are
    qcnn.search.fixed_point's keyword arguments."""

    budget: float = 0.005
    start_bits: int = 8
    max_batches: Optional[int] = None
    calibration_batches: Optional[int] = None
    cache_bytes: int = DEFAULT_CACHE_BYTES
    local_min_gain: float = 0.0015
    schedule: str = "layers"

    def validate(self, path: str = "") -> None:
        if not 0.0 <= self.budget < 1.0:
            raise ConfigError(join_key(path, "budget"), f"must be in [0, 1), got {self.budget}")
        check_range(join_key(path, "start_bits"), self.start_bits, *FIXED_POINT_BITS)
        check_range(join_key(path, "max_batches"), self.max_batches, 1, 1 << 40)
        check_range(join_key(path, "calibration_batches"), self.calibration_batches, 1, 1 << 40)
        check_range(join_key(path, "cache_bytes"), self.cache_bytes, 0, 1 << 50)
        check_range(join_key(path, "local_min_gain"), self.local_min_gain, 0.0, 1.0)
        if self.schedule not in SCHEDULES:
            raise ConfigError(join_key(path, "schedule"), f"must be one of {list(SCHEDULES)}, got {self.schedule!r}")


# ------------------------------------------------------------------------------------------------ the search
def _check_args(model, budget, start_bits, max_batches, calibration_batches, cache_bytes, local_min_gain,
                schedule) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"qcnn.search.fixed_point: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"qcnn.search.fixed_point: budget must be a number, got {type(budget).__name__}")
    if not 0.0 <= budget < 1.0:  # also rejects NaN
        raise ValueError(f"qcnn.search.fixed_point: budget must be in [0, 1) (a relative accuracy drop), got {budget}")
    if isinstance(start_bits, bool) or not isinstance(start_bits, int) or \
            not FIXED_POINT_BITS[0] <= start_bits <= FIXED_POINT_BITS[1]:
        raise ValueError(f"qcnn.search.fixed_point: start_bits must be an int in {list(FIXED_POINT_BITS)}, "
                         f"got {start_bits!r}")
    for name, value in (("max_batches", max_batches), ("calibration_batches", calibration_batches)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"qcnn.search.fixed_point: {name} must be None or an int >= 1, got {value!r}")
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
        raise ValueError(f"qcnn.search.fixed_point: cache_bytes must be an int >= 0, got {cache_bytes!r}")
    if isinstance(local_min_gain, bool) or not isinstance(local_min_gain, (int, float)) or \
            not 0.0 <= local_min_gain <= 1.0:
        raise ValueError(f"qcnn.search.fixed_point: local_min_gain must be in [0, 1], got {local_min_gain!r}")
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"qcnn.search.fixed_point: schedule must be one of {list(SCHEDULES)}, got {schedule!r}")


@dataclass
class _LayerInfo:
    name: str
    kind: str
    weight_peak: float
    bias_peak: float | None
    act_peak: float = 0.0
    act_count: int = 0
    macs: int = 0
    calls: int = 0


class _Search:
    def __init__(self, model, loader, budget, start_bits, max_batches, calibration_batches, cache_bytes,
                 local_min_gain, schedule, log):
        self.budget, self.start_bits, self.local_min_gain = float(budget), start_bits, float(local_min_gain)
        self.schedule = schedule
        self.log = log or (lambda message: None)
        self.evaluated = self.stopped_early = 0
        self.history: list[dict] = []
        work = copy.deepcopy(model).eval()
        _reject_batchnorm(work, "qcnn.search.fixed_point")
        for module in work.modules():
            if isinstance(getattr(module, "inplace", None), bool):
                module.inplace = False  # cached tensors must not be overwritten (see the module docstring)
        self.work = work
        self.layers = self._find_layers(work)
        self.device = next(work.parameters()).device
        self.scorer = CachedScorer(work, loader, max_batches, self.device, cache_bytes)
        self._calibrate(loader, max_batches, calibration_batches, cache_bytes)
        self._install_quantizers()
        names = [info.name for info in self.layers.values()]
        try:
            traced = TracedForward(work, names)
            first = self.scorer.stored[0][0] if self.scorer.stored else next(self.scorer.source())[0]
            self.scorer.cut_bytes = traced.bytes_per_sample(first)
            self.scorer.traced = traced
            self.order = sorted(names, key=lambda n: traced.cuts[n])
            self.cache_mode = "prefix"
        except Untraceable as err:
            self.order = names  # execution order, from the hooks
            self.cache_mode = f"off (the model cannot be run from a cut: {err})"
        self.cuts = {name: (self.scorer.traced.cuts[name] if self.scorer.traced else 0) for name in self.order}

    @staticmethod
    def _find_layers(work: nn.Module) -> dict[str, _LayerInfo]:
        layers = {}
        for name, module in work.named_modules():
            if isinstance(module, QuantLayer):
                raise ValueError(f"qcnn.search.fixed_point: the model must be a float model; {name!r} is already a "
                                 f"{type(module).__name__}")
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weight_peak = float(module.weight.detach().abs().max())
                bias_peak = None if module.bias is None else float(module.bias.detach().abs().max())
                if not math.isfinite(weight_peak) or (bias_peak is not None and not math.isfinite(bias_peak)):
                    raise ValueError(f"qcnn.search.fixed_point: layer {name!r} has NaN or infinite parameters")
                layers[name] = _LayerInfo(name, "conv" if isinstance(module, nn.Conv2d) else "linear",
                                          weight_peak, bias_peak)
        if not layers:
            raise ValueError("qcnn.search.fixed_point: the model has no nn.Conv2d or nn.Linear layer")
        return layers

    @torch.no_grad()
    def _calibrate(self, loader, max_batches, calibration_batches, cache_bytes) -> None:
        """One pass of the float model over the evaluation batches: float accuracy, execution order, activation
        peaks (first calibration_batches batches), input sizes and MACs per image; keeps the batches under the cap."""
        modules = dict(self.work.named_modules())
        order: list[str] = []
        state = {"batch": 0}

        def pre_hook(name):
            def hook(module, inputs):
                x = inputs[0]
                info = self.layers[name]
                if state["batch"] == 0:
                    info.calls += 1
                    if name not in order:
                        order.append(name)
                    info.act_count = x[0].numel()
                if calibration_batches is None or state["batch"] < calibration_batches:
                    peak = float(x.detach().abs().max())
                    if not math.isfinite(peak):  # max() below would drop a NaN
                        raise ValueError(f"qcnn.search.fixed_point: the input of layer {name!r} holds NaN or inf "
                                         f"(batch {state['batch']} of val_loader)")
                    info.act_peak = max(info.act_peak, peak)
            return hook

        def post_hook(name):
            def hook(module, inputs, output):
                if state["batch"] == 0:
                    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size) \
                        if isinstance(module, nn.Conv2d) else module.in_features
                    self.layers[name].macs = output[0].numel() * per_output
            return hook

        handles = []
        for name in self.layers:
            handles.append(modules[name].register_forward_pre_hook(pre_hook(name)))
            handles.append(modules[name].register_forward_hook(post_hook(name)))
        stored: list | None = []
        stored_bytes = correct = seen = 0
        try:
            for x, y in loader_batches(loader, max_batches, self.device):
                try:
                    logits = self.work(x)
                except (RuntimeError, TypeError, IndexError) as err:
                    raise ValueError(f"qcnn.search.fixed_point: the model cannot run on batch {state['batch']} of "
                                     f"val_loader (inputs of shape {tuple(x.shape)}): {err}") from err
                if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != y.shape[0]:
                    raise ValueError("qcnn.search.fixed_point: the model must return logits [batch, classes]")
                correct += int((logits.argmax(1) == y).sum())
                seen += y.numel()
                if stored is not None:
                    stored_bytes += x.numel() * x.element_size() + y.numel() * y.element_size()
                    if stored_bytes <= cache_bytes:
                        stored.append((x, y))
                    else:
                        stored = None  # over the cap: read the loader again for every candidate
                state["batch"] += 1
        finally:
            for handle in handles:
                handle.remove()
        if seen == 0:
            raise ValueError("qcnn.search.fixed_point: val_loader yielded no samples")
        for info in self.layers.values():
            if info.calls != 1:
                raise ValueError(f"qcnn.search.fixed_point: layer {info.name!r} runs {info.calls} times per forward; "
                                 "each conv/linear must run exactly once")
            if not math.isfinite(info.act_peak):
                raise ValueError(f"qcnn.search.fixed_point: the input of layer {info.name!r} holds NaN or inf")
        if correct == 0:
            raise ValueError("qcnn.search.fixed_point: the float model classifies no sample correctly; a relative "
                             "accuracy drop is undefined")
        self.layers = {name: self.layers[name] for name in order}
        self.float_correct, self.scorer.num_samples = correct, seen
        self.scorer.stored = stored
        self.calibrated_batches = state["batch"] if calibration_batches is None else \
            min(calibration_batches, state["batch"])

    def _install_quantizers(self) -> None:
        modules = dict(self.work.named_modules())
        self.formats: dict[str, dict[str, Format | None]] = {}
        for name, info in self.layers.items():
            module = modules[name]
            bits = self.start_bits
            weight_quant = FixedPointWeightQuantizer(module.weight.shape, bits, bits - 1)
            bias_quant = None if module.bias is None else FixedPointQuantizer(bits, bits - 1)
            cls = QuantConv2d if info.kind == "conv" else QuantLinear
            set_submodule(self.work, name, cls.from_float(module, weight_quant, FixedPointAct(bits, bits - 1),
                                                               bias_quant))
            self.formats[name] = {"weights": None, "biases": None, "activations": None}
        self.quant_modules = {name: self.work.get_submodule(name) for name in self.layers}

    def _set(self, name: str, component: str, fmt: Format) -> None:
        layer = self.quant_modules[name]
        if component == "weights":
            layer.weight_quant = FixedPointWeightQuantizer(layer.weight.shape, fmt[0], fmt[1]).to(self.device)
        elif component == "biases":
            layer.bias_quant.set_format(*fmt)
        else:
            layer.act_quant.set_format(*fmt)
        self.formats[name][component] = fmt

    def _min_correct(self, budget: float) -> int:
        # Accepted iff (float - correct) / float <= budget, in integer counts (1e-9 absorbs float rounding).
        return self.float_correct - math.floor(self.float_correct * budget + 1e-9)

    def _count(self, min_correct: int | None) -> tuple[int, bool]:
        correct, complete = self.scorer.count_correct(min_correct)
        self.evaluated += 1
        self.stopped_early += not complete
        return correct, complete

    def _drop(self, correct: int) -> float:
        return (self.float_correct - correct) / self.float_correct

    def _acc(self, correct: int) -> float:
        return 100.0 * correct / self.scorer.num_samples

    def start(self) -> None:
        """Step 1: the smallest of start_bits, +4, ... (at most 16) whose no-clipping formats keep the drop <= T."""
        bits = self.start_bits
        need = self._min_correct(self.budget)
        self.scorer.reset()
        while True:
            for name, info in self.layers.items():
                self._set(name, "weights", (bits, no_clipping_frac_bits(info.weight_peak, bits)))
                if info.bias_peak is not None:
                    self._set(name, "biases", (bits, no_clipping_frac_bits(info.bias_peak, bits)))
                self._set(name, "activations", (bits, no_clipping_frac_bits(info.act_peak, bits)))
            last = bits == FIXED_POINT_BITS[1]
            correct, complete = self._count(None if last else need)
            if (complete and correct >= need) or last:
                break
            bits = min(bits + 4, FIXED_POINT_BITS[1])
        if correct < need:
            warnings.warn(f"qcnn.search.fixed_point: even 16-bit formats lose {100 * self._drop(correct):.3f}% "
                          f"(relative) > budget {100 * self.budget:.3f}%; the layer searches keep what they cannot "
                          "lower within their budgets", RuntimeWarning, stacklevel=4)
        self.start_bits_used, self.state_correct, self.start_correct = bits, correct, correct
        self.log(f"start: {bits}-bit formats, val acc {self._acc(correct):.2f}% (float "
                 f"{self._acc(self.float_correct):.2f}%, relative drop {100 * self._drop(correct):.3f}%)")

    def schedule_shares(self) -> dict[str, list[float]]:
        """Per component, layer i's share s_i of T (weights T*s_i, activations T + T*s_i): i/L, or with
        schedule="size" the fraction of the component's values that layers 1..i hold."""
        count = len(self.order)
        if self.schedule == "layers":
            shares = [i / count for i in range(1, count + 1)]
            return {"weights": shares, "activations": shares}
        sizes = {"weights": [self.quant_modules[name].weight.numel() for name in self.order],
                 "activations": [self.layers[name].act_count for name in self.order]}
        return {component: [sum(values[:i]) / sum(values) for i in range(1, count + 1)]
                for component, values in sizes.items()}

    def layer_budget(self, component: str, i: int) -> float:
        if component == "biases":
            return self.budget
        share = self.shares[component][i - 1]
        return self.budget * share + (self.budget if component == "activations" else 0.0)

    def search_layer(self, name: str, component: str, budget: float) -> None:
        need = self._min_correct(budget)
        start_fmt = self.formats[name][component]
        memo: dict[Format, int | None] = {start_fmt: self.state_correct}
        evaluated_before = self.evaluated

        def accepted(fmt: Format) -> bool:
            if fmt not in memo:
                self._set(name, component, fmt)
                correct, complete = self._count(need)
                memo[fmt] = correct if complete else None
            return memo[fmt] is not None and memo[fmt] >= need

        current = start_fmt
        if accepted(current):
            while _valid_format(current[0] - 1, current[1] - 1) and accepted((current[0] - 1, current[1] - 1)):
                current = (current[0] - 1, current[1] - 1)
            while _valid_format(current[0] - 1, current[1]) and accepted((current[0] - 1, current[1])):
                current = (current[0] - 1, current[1])
            min_gain = self.local_min_gain * self.scorer.num_samples
            while True:
                bits, frac = current
                neighbours = [(b, f) for b in (bits - 1, bits) for f in (frac - 1, frac, frac + 1)
                              if (b, f) != current and _valid_format(b, f)]
                within = [fmt for fmt in neighbours if accepted(fmt)]
                if not within:
                    break
                best = min(within, key=lambda fmt: (fmt[0], -memo[fmt]))
                if best[0] < bits or memo[best] - memo[current] > min_gain:
                    current = best
                else:
                    break
        self._set(name, component, current)
        self.state_correct = memo[current]
        record = {"component": component, "layer": name, "budget": budget, "bits": current[0], "frac_bits": current[1],
                  "start_bits": start_fmt[0], "start_frac_bits": start_fmt[1], "val_acc": self._acc(self.state_correct),
                  "relative_drop": self._drop(self.state_correct), "within_budget": self.state_correct >= need,
                  "candidates": self.evaluated - evaluated_before}
        self.history.append(record)
        self.log(f"{component:11s} {name:24s} budget {100 * budget:.3f}%: ({start_fmt[0]}, {start_fmt[1]}) -> "
                 f"({current[0]}, {current[1]}), val acc {record['val_acc']:.2f}%, relative drop "
                 f"{100 * record['relative_drop']:.3f}%, {record['candidates']} candidates"
                 + ("" if record["within_budget"] else " (kept: the drop before this layer already exceeds its "
                    "budget; a higher start_bits leaves early layers room)"))

    def run(self) -> FixedPointPlan:
        t0 = time.perf_counter()
        self.start()
        self.shares = self.schedule_shares()
        for component in COMPONENTS:
            self.scorer.reset()
            for i, name in enumerate(self.order, 1):
                if self.formats[name][component] is None:
                    continue  # a layer without bias
                self.scorer.use_cut(self.cuts[name])
                self.search_layer(name, component, self.layer_budget(component, i))
        self.scorer.reset()
        final_correct, _ = self._count(None)
        if final_correct != self.state_correct:  # pragma: no cover - the evaluation is deterministic
            raise RuntimeError(f"qcnn.search.fixed_point: the final evaluation counts {final_correct} correct, the "
                               f"search tracked {self.state_correct}")
        seconds = time.perf_counter() - t0
        plan_layers = []
        for name in self.order:
            info, fmt = self.layers[name], self.formats[name]
            module = self.quant_modules[name]
            bias = fmt["biases"] or (None, None)
            plan_layers.append(LayerFixedPoint(
                name=name, kind=info.kind, w_bits=fmt["weights"][0], w_frac=fmt["weights"][1], b_bits=bias[0],
                b_frac=bias[1], a_bits=fmt["activations"][0], a_frac=fmt["activations"][1],
                weight_count=module.weight.numel(), bias_count=0 if module.bias is None else module.bias.numel(),
                act_count=info.act_count, macs=info.macs))
        stats = {
            "budget": self.budget, "schedule": self.schedule, "start_bits": self.start_bits_used,
            "start_val_acc": self._acc(self.start_correct),
            "val_acc_float": self._acc(self.float_correct), "val_acc_quantized": self._acc(final_correct),
            "val_relative_drop": self._drop(final_correct), "val_images": self.scorer.num_samples,
            "calibration_batches": self.calibrated_batches, "local_min_gain": self.local_min_gain,
            "search_seconds": seconds, "candidates_evaluated": self.evaluated,
            "candidates_stopped_early": self.stopped_early,
            "evaluations_from_prefix_cache": self.scorer.cached_evaluations, "prefix_cache": self.cache_mode,
            "history": self.history,
        }
        return FixedPointPlan(plan_layers, stats)


def fixed_point(model: nn.Module, val_loader: Iterable, budget: float = 0.005, *, start_bits: int = 8,
                max_batches: int | None = None, calibration_batches: int | None = None,
                cache_bytes: int = DEFAULT_CACHE_BYTES, local_min_gain: float = 0.0015, schedule: str = "layers",
                log: Callable[[str], None] | None = None) -> FixedPointPlan:
    """Goyal et al.'s fixed-point format search (see the module docstring) on a float, BN-folded model.

    val_loader yields (images, labels) batches (a validation split: never the test set); the first `max_batches`
    (all when None) are the evaluation data, the first `calibration_batches` of those (all when None) give the
    activation peaks. budget: T, the relative top-1 drop the weights may spend (the final drop is at most 2T).
    start_bits: the first bit width tried for everything (raised by 4 until the drop is <= T). cache_bytes: the
    memory one prefix cache, and the kept images, may take. local_min_gain: the accuracy gain (a fraction) an
    equal-bits neighbour needs to replace the current choice. schedule: "layers" (the paper's budgets, T*i/L) or
    "size" (i/L replaced by the share of the component's values in layers 1..i). log: called with one line per
    decision.
    Returns the plan; `model` is not modified (apply the plan with plan.apply(model))."""
    _check_args(model, budget, start_bits, max_batches, calibration_batches, cache_bytes, local_min_gain, schedule)
    if log is not None and not callable(log):
        raise TypeError(f"qcnn.search.fixed_point: log must be callable or None, got {type(log).__name__}")
    t0 = time.perf_counter()
    search = _Search(model, val_loader, budget, start_bits, max_batches, calibration_batches, cache_bytes,
                     local_min_gain, schedule, log)
    plan = search.run()
    plan.stats["search_seconds"] = time.perf_counter() - t0
    return plan
