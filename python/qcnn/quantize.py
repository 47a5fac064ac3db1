"""qcnn.quantize_(model, cfg): swap nn.Conv2d / nn.Linear for QuantConv2d / QuantLinear in place, and the
model-wide operations of the retraining loop (activation calibration, refits, INQ freezing)."""
from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn

from .config import ConfigError, QuantConfig, resolve_act, resolve_weight
from .nn.layers import QuantConv2d, QuantLayer, QuantLinear
from .quantizers.act import QuantAct, build_act_quantizer
from .quantizers.weight import CodebookWeightQuantizer, bind_accumulator_input, build_weight_quantizer


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantize_(model: nn.Module, cfg: QuantConfig | dict) -> dict[str, QuantLayer]:
    """Replaces every nn.Conv2d and nn.Linear of `model` in place by its quantized counterpart.

    Each layer gets cfg.weight and, on its input, cfg.act (the first layer: cfg.input_act, signed, since it
    sees the normalized image); overrides (glob or 're:' regex on the module name, applied in order) change
    fields or set null for float. A pattern that matches no layer is a ConfigError naming
    quant.overrides[i].pattern. Layers left with neither quantizer stay float modules. Returns the
    quantized layers by name. Parameters are shared, so an existing optimizer keeps working.
    """
    if isinstance(cfg, dict):
        cfg = QuantConfig.from_dict(cfg, _path="quant")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"quantize_: cfg must be a qcnn.config.QuantConfig or dict, got {type(cfg).__name__}")
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantLayer)]
    if not layers:
        raise ValueError("quantize_: the model has no nn.Conv2d or nn.Linear layer left to quantize")
    if type(layers[0][1]) not in (nn.Conv2d, nn.Linear) or any(type(m) not in (nn.Conv2d, nn.Linear) for _, m in layers):
        odd = sorted({type(m).__name__ for _, m in layers} - {"Conv2d", "Linear"})
        raise TypeError(f"quantize_: unsupported subclasses of Conv2d/Linear: {odd}")
    used = [False] * len(cfg.overrides)
    input_default = cfg.input_act if cfg.input_act is not None else (
        cfg.act.replace(signed=True, bits=max(cfg.act.bits, 2)) if cfg.act is not None else None)
    replaced: dict[str, QuantLayer] = {}
    for position, (name, module) in enumerate(layers):
        weight_cfg = cfg.weight
        act_cfg = input_default if position == 0 else cfg.act
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
        _set_submodule(model, name, new)
        replaced[name] = new
    for i, hit in enumerate(used):
        if not hit:
            names = [n for n, _ in layers]
            raise ConfigError(f"quant.overrides[{i}].pattern",
                              f"{cfg.overrides[i].pattern!r} matches no Conv2d/Linear layer (layers: {names})")
    return replaced


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    model = getattr(model, "module", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}


def act_quantizers(model: nn.Module) -> list[QuantAct]:
    return [m for m in getattr(model, "module", model).modules() if isinstance(m, QuantAct)]


@torch.no_grad()
def calibrate_activations(model: nn.Module, loader, batches: int) -> int:
    """Initializes every QuantAct's clip from an observer over the first `batches` batches of `loader`
    (model in eval mode; quantizers upstream stay float while observing). Returns the batch count."""
    acts = act_quantizers(model)
    if not acts:
        return 0
    was_training = model.training
    model.eval()
    for act in acts:
        act.start_calibration()
    device = next(model.parameters()).device
    seen = 0
    for x, _ in loader:
        model(x.to(device))
        seen += 1
        if seen >= batches:
            break
    for act in acts:
        act.finish_calibration()
    model.train(was_training)
    return seen


@torch.no_grad()
def refit_weights(model: nn.Module, refit: bool = True) -> dict:
    """Refits every weight quantizer on its latent weights (refit=False: only reassigns). Returns
    {'change_fraction': weight-count-weighted mean over layers (None on the first fit), 'layers': {...}}."""
    changes, total, weighted = {}, 0, 0.0
    for name, layer in quant_layers(model).items():
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


def describe(model: nn.Module) -> dict:
    """Per layer: the weight quantizer's state (codebooks, scales) and the input quantizer's step."""
    out = {}
    for name, layer in quant_layers(model).items():
        entry = {}
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
