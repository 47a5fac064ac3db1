"""qcnn.quantize_(model, cfg): swap nn.Conv2d / nn.Linear for QuantConv2d / QuantLinear in place, and the
model-wide operations of the retraining loop (activation calibration, refits, INQ freezing)."""
from __future__ import annotations

import fnmatch
import operator
import re
import warnings

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from . import engine
from .config import ConfigError, QuantConfig, resolve_act, resolve_weight
from .fold import set_submodule, trace
from .nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .quantizers.act import QuantAct, build_act_quantizer
from .quantizers.weight import bind_accumulator_input, build_weight_quantizer
from .quantizers.weight_codebook import CodebookWeightQuantizer


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


# Ops through which a layer still reads the network input's values: views, copies, subsets, paddings, and
# elementwise arithmetic with constants (an in-model normalisation).
_INPUT_KEEPING_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten, nn.ZeroPad2d,
                          nn.ConstantPad2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_INPUT_KEEPING_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                            torch.transpose, operator.getitem, F.pad, F.dropout, F.max_pool2d, operator.add,
                            operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_INPUT_KEEPING_METHODS = {"view", "reshape", "flatten", "contiguous", "float", "to", "clone", "permute",
                          "transpose", "squeeze", "unsqueeze", "add", "sub", "mul", "div"}


def _keeps_input(node: torch.fx.Node, modules: dict[str, nn.Module], from_input: set) -> bool:
    tensors = list(node.all_input_nodes)
    if not tensors or any(a not in from_input for a in tensors):
        return False  # a combination with another computed tensor is no longer the input
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _INPUT_KEEPING_MODULES)
    if node.op == "call_function":
        return node.target in _INPUT_KEEPING_FUNCTIONS
    return node.op == "call_method" and node.target in _INPUT_KEEPING_METHODS


def input_readers(model: nn.Module, layer_names: list[str]) -> tuple[list[str], str | None]:
    """The layers of `layer_names` (conv/linear modules of `model`) that read the network input, found on the
    model's torch.fx graph (when the input reaches none through the ops followed, the first layer the graph
    calls); and None, or why the graph could not be traced (then the first layer in registration order)."""
    try:
        graph = trace(model, "quantize_")
    except TypeError as err:
        return layer_names[:1], f"{type(err.__cause__).__name__}: {err.__cause__}"
    modules = dict(model.named_modules())
    wanted, from_input, readers, called = set(layer_names), set(), set(), []
    for node in graph.nodes:
        if node.op == "placeholder":
            from_input.add(node)
        elif node.op == "call_module" and node.target in wanted:
            called.append(node.target)
            if node.args and isinstance(node.args[0], torch.fx.Node) and node.args[0] in from_input:
                readers.add(node.target)
        elif _keeps_input(node, modules, from_input):
            from_input.add(node)
    if not readers and called:  # the image reaches the layers through ops not followed: the first one called
        readers.add(called[0])
    return [name for name in layer_names if name in readers], None


def quantize_(model: nn.Module, cfg: QuantConfig | dict) -> nn.Module:
    """Replaces every nn.Conv2d and nn.Linear of `model` in place by its quantized counterpart; returns `model`.

    Each layer gets cfg.weight and, on its input, cfg.act; every layer that reads the network input (found on
    the torch.fx graph, through views, dropout, padding and arithmetic with constants) gets cfg.input_act
    instead, signed, since it sees the normalized image. Activation quantizers with signed: auto (the
    default) become signed at calibration when their data has negative values. Overrides (glob or 're:'
    regex on the module name, applied in order) change fields or set null for float. A pattern that matches
    no layer is a ConfigError naming quant.overrides[i].pattern. Layers left with neither quantizer stay float
    modules. Parameters are shared, so an existing optimizer keeps working. quant_report(model) lists what
    each layer got. A torch.compile or data-parallel wrapper is quantized through the module it wraps (names
    are that module's); the wrapper is returned.
    """
    if isinstance(cfg, dict):
        cfg = QuantConfig.from_dict(cfg, _path="quant")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"quantize_: cfg must be a qcnn.config.QuantConfig or dict, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_: model must be a torch.nn.Module, got {type(model).__name__}")
    wrapper, model = model, engine.unwrap(model)
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantLayer)]
    if not layers:
        raise ValueError("quantize_: the model has no nn.Conv2d or nn.Linear layer left to quantize")
    if any(type(m) not in (nn.Conv2d, nn.Linear) for _, m in layers):
        odd = sorted({type(m).__name__ for _, m in layers} - {"Conv2d", "Linear"})
        raise TypeError(f"quantize_: unsupported subclasses of Conv2d/Linear: {odd}")
    readers, untraceable = input_readers(model, [name for name, _ in layers])
    if untraceable is not None:
        warnings.warn(f"quantize_: cannot trace {type(model).__name__} with torch.fx ({untraceable}); the input "
                      f"quantizer goes to the first layer in registration order, {readers[0]!r}", RuntimeWarning,
                      stacklevel=2)
    used = [False] * len(cfg.overrides)
    input_default = cfg.input_act if cfg.input_act is not None else (
        cfg.act.replace(signed=True, bits=max(cfg.act.bits, 2)) if cfg.act is not None else None)
    replaced: dict[str, QuantLayer] = {}
    aliases: dict[int, list[str]] = {}  # a module reachable under several names (s.b = s.a) is one layer
    for alias, m in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(alias)
    for name, module in layers:
        weight_cfg = cfg.weight
        act_cfg = input_default if name in readers else cfg.act
        for i, override in enumerate(cfg.overrides):
            if _matches(override.pattern, name):
                used[i] = True
                weight_cfg = resolve_weight(weight_cfg, override.weight, f"quant.overrides[{i}].weight")
                act_cfg = resolve_act(act_cfg, override.act, f"quant.overrides[{i}].act")
        if weight_cfg is None and act_cfg is None:
            continue
        weight_quant = build_weight_quantizer(weight_cfg, module.weight.shape) if weight_cfg is not None else None
        act_quant = build_act_quantizer(act_cfg) if act_cfg is not None else None
        bind_accumulator_input(weight_quant, act_quant, name)  # weight.accumulator_bits: its input's code range
        cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        new = cls.from_float(module, weight_quant, act_quant)
        new.reads_input = name in readers
        for alias in aliases[id(module)]:  # the first name's config, for every name of the module
            set_submodule(model, alias, new)
        replaced[name] = new
    for i, hit in enumerate(used):
        if not hit:
            names = [n for n, _ in layers]
            raise ConfigError(f"quant.overrides[{i}].pattern",
                              f"{cfg.overrides[i].pattern!r} matches no Conv2d/Linear layer (layers: {names})")
    return wrapper


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: m for name, m in engine.unwrap(model).named_modules() if isinstance(m, QuantLayer)}


def act_quantizers(model: nn.Module) -> list[QuantAct]:
    return [m for m in engine.unwrap(model).modules() if isinstance(m, QuantAct)]


def _forward_batches(model: nn.Module, loader, batches: int, what: str) -> int:
    """Runs the model on the inputs of the first `batches` batches of `loader` (tensors or (x, ...) tuples);
    returns how many it ran."""
    seen = 0
    for batch in loader:
        model(engine.to_model_input(engine.batch_input(batch, what), model))
        seen += 1
        if seen >= batches:  # stop before drawing another batch (its augmentation would consume the RNG)
            break
    return seen


@torch.no_grad()
def calibrate_activations(model: nn.Module, loader, batches: int) -> int:
    """Initializes every QuantAct's clip from an observer over the first `batches` batches of `loader`
    (tensors or (x, ...) tuples: labels are not needed; model in eval mode; quantizers upstream stay float
    while observing). Returns the batch count."""
    acts = act_quantizers(model)
    if not acts:
        return 0
    was_training = model.training
    model.eval()
    for act in acts:
        act.start_calibration()
    seen = _forward_batches(model, loader, batches, "calibration loader")
    names = {id(m): name for name, m in engine.unwrap(model).named_modules()}
    for act in acts:
        try:
            act.finish_calibration()
        except ValueError as err:
            raise ValueError(f"calibrate_activations: {names.get(id(act), '?')}: {err}") from None
    model.train(was_training)
    return seen


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, loader, batches: int) -> int:
    """Recomputes every BatchNorm's running mean and variance as the plain average over the first `batches`
    batches of `loader` (labels not needed), with the weights as the model quantizes them now. Only the
    BatchNorm layers run in train mode (dropout and the quantizers stay in eval); their affine parameters and
    momentum are kept. Returns the batch count (0 when the model has no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0:
        return 0
    was_training = model.training
    model.eval()
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every batch weighs the same
        bn.train()
    try:
        seen = _forward_batches(model, loader, batches, "BatchNorm re-estimation loader")
        if seen == 0:
            raise ValueError("reestimate_batchnorm: the loader yielded no batches")
    except BaseException:
        for bn, (_, mean, var, count) in zip(norms, saved):  # a failed pass leaves the old statistics
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        raise
    finally:
        for bn, (momentum, *_) in zip(norms, saved):
            bn.momentum = momentum
        model.train(was_training)
    return seen


@torch.no_grad()
def refit_weights(model: nn.Module, refit: bool = True, layers=None) -> dict:
    """Refits every weight quantizer on its latent weights (refit=False: only reassigns), or those of the
    quantized layers named in `layers`. Returns {'change_fraction': weight-count-weighted mean over the layers
    (None on the first fit), 'layer_change': {name: fraction}}."""
    changes, total, weighted = {}, 0, 0.0
    chosen = quant_layers(model)
    if layers is not None:
        unknown = sorted(set(layers) - set(chosen))
        if unknown:
            raise ValueError(f"refit_weights: no quantized layer named {', '.join(map(repr, unknown))}")
        chosen = {name: chosen[name] for name in layers}
    for name, layer in chosen.items():
        if layer.weight_quant is None:
            continue
        change = layer.refit(fit=refit)
        changes[name] = change
        if change is not None:
            total += layer.weight.numel()
            weighted += change * layer.weight.numel()
    return {"change_fraction": weighted / total if total else None, "layer_change": changes}


@torch.no_grad()
def freeze_weights(model: nn.Module, fraction: float) -> float:
    """INQ step on every codebook-quantized layer; returns the frozen share of all their weights."""
    frozen, total = 0.0, 0
    for layer in quant_layers(model).values():
        if isinstance(layer.weight_quant, CodebookWeightQuantizer):
            share = layer.weight_quant.freeze(layer.weight, fraction)
            frozen += share * layer.weight.numel()
            total += layer.weight.numel()
    if total == 0:
        raise ValueError("freeze_weights: incremental mode needs codebook weight quantizers (kind: codebook)")
    return frozen / total


def quant_report(model: nn.Module) -> dict:
    """Per quantized layer: the weight quantizer's state (codebooks, scales), the input quantizer's (bits, step,
    signed and whether the sign came from the config or from the calibration data), and whether the layer reads
    the network input."""
    out = {}
    for name, layer in quant_layers(model).items():
        entry = {"reads_input": bool(getattr(layer, "reads_input", False))}
        if layer.weight_quant is not None:
            entry["weight"] = layer.weight_quant.describe()
        if layer.act_quant is not None:
            entry["act"] = layer.act_quant.describe()
        out[name] = entry
    return out


def default_histogram_layer(model: nn.Module) -> str:
    """The quantized layer with the most weights (the one a histogram says most about)."""
    layers = {n: m for n, m in quant_layers(model).items() if m.weight_quant is not None}
    if not layers:
        raise ValueError("default_histogram_layer: no layer has a weight quantizer")
    return max(layers, key=lambda n: layers[n].weight.numel())


def histogram_data(layer: QuantLayer) -> tuple[torch.Tensor, list[float]]:
    """(latent weights, quantization levels) of a layer; for per-channel quantizers those of channel 0."""
    wq = layer.weight_quant
    if wq is None:
        return layer.weight.detach().flatten(), []
    per_channel = getattr(wq, "per_channel", False)
    weights = layer.weight.detach()[0] if per_channel else layer.weight.detach()
    return weights.flatten().cpu(), [float(v) for v in wq.levels(0)]
