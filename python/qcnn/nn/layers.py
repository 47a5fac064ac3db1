"""QuantConv2d and QuantLinear: nn.Conv2d / nn.Linear whose weight passes through a weight quantizer, whose
input passes through an optional activation quantizer and whose bias passes through an optional bias quantizer
(any module with a `bits` attribute, e.g. qcnn.quantizers.act.FixedPointQuantizer). They stay instances of their
float classes, with the same parameter names, so state dicts, optimizers and isinstance checks keep working;
without a bias quantizer they compute exactly what they computed before it existed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..quantizers.act import FixedPointAct, QuantAct
from ..quantizers.weight import WeightQuantizer


def _check_quantizers(cls_name: str, weight_quant, act_quant, bias_quant=None) -> None:
    if weight_quant is not None and not isinstance(weight_quant, WeightQuantizer):
        raise TypeError(f"{cls_name}: weight_quant must be a qcnn WeightQuantizer or None, got {type(weight_quant).__name__}")
    if act_quant is not None and not isinstance(act_quant, (QuantAct, FixedPointAct)):
        raise TypeError(f"{cls_name}: act_quant must be a qcnn.nn.QuantAct, a FixedPointAct or None, "
                        f"got {type(act_quant).__name__}")
    if bias_quant is not None and not (isinstance(bias_quant, nn.Module) and hasattr(bias_quant, "bits")):
        raise TypeError(f"{cls_name}: bias_quant must be an nn.Module with a `bits` attribute or None, "
                        f"got {type(bias_quant).__name__}")


class QuantLayer:
    """What QuantConv2d and QuantLinear share (a plain class beside their torch base; holds no state)."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quant: WeightQuantizer | None
    act_quant: QuantAct | FixedPointAct | None
    bias_quant: nn.Module | None

    def quantized_weight(self) -> torch.Tensor:
        return self.weight if self.weight_quant is None else self.weight_quant(self.weight)

    def quantized_bias(self) -> torch.Tensor | None:
        return self.bias if self.bias_quant is None else self.bias_quant(self.bias)

    def refit(self, fit: bool = True) -> float | None:
        """Refits the weight quantizer on the current latent weights; returns the level-change fraction."""
        return None if self.weight_quant is None else self.weight_quant.refit(self.weight, fit=fit)

    def _quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quant is None else self.act_quant(x)

    @classmethod
    def _adopt(cls, module: nn.Module, attributes: tuple[str, ...], weight_quant, act_quant, bias_quant=None):
        """A `cls` with `module`'s attributes and its parameters (the same nn.Parameter objects)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key in attributes:
            setattr(new, key, getattr(module, key))
        new.weight = module.weight
        new.bias = module.bias
        new.train(module.training)
        for quantizer in (weight_quant, act_quant, bias_quant):
            if isinstance(quantizer, nn.Module):
                quantizer.to(module.weight.device)
        new._install(weight_quant, act_quant, bias_quant)
        return new

    def _install(self, weight_quant, act_quant, bias_quant=None) -> None:
        _check_quantizers(type(self).__name__, weight_quant, act_quant, bias_quant)
        if weight_quant is not None and tuple(weight_quant.weight_shape) != tuple(self.weight.shape):
            raise ValueError(f"{type(self).__name__}: weight_quant was built for shape {weight_quant.weight_shape}, "
                             f"the weight is {tuple(self.weight.shape)}")
        if bias_quant is not None and self.bias is None:
            raise ValueError(f"{type(self).__name__}: bias_quant was given but the layer has no bias")
        self.weight_quant = weight_quant
        self.act_quant = act_quant
        self.bias_quant = bias_quant

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # A float checkpoint (the layer's weight, no state of one of its quantizers) loads into the quantized
        # layer: that quantizer keeps its configuration and is reset, to be fitted (weights) or calibrated
        # (activations) again at the next fit or forward. Part of a quantizer's state still fails a strict load.
        if prefix + "weight" in state_dict:
            for name in ("weight_quant", "act_quant", "bias_quant"):
                quantizer = getattr(self, name, None)
                sub = f"{prefix}{name}."
                if isinstance(quantizer, nn.Module) and not any(key.startswith(sub) for key in state_dict):
                    for key, value in quantizer.state_dict().items():
                        state_dict[sub + key] = value.clone()
                    for flag in ("fitted", "calibrated"):
                        if sub + flag in state_dict:
                            state_dict[sub + flag] = torch.tensor(False)
        super()._load_from_state_dict(state_dict, prefix, *args)


class QuantConv2d(QuantLayer, nn.Conv2d):
    def __init__(self, *args, weight_quant: WeightQuantizer | None = None,
                 act_quant: QuantAct | FixedPointAct | None = None, bias_quant: nn.Module | None = None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._install(weight_quant, act_quant, bias_quant)

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight_quant: WeightQuantizer | None = None,
                   act_quant: QuantAct | FixedPointAct | None = None,
                   bias_quant: nn.Module | None = None) -> "QuantConv2d":
        """A QuantConv2d sharing `module`'s parameters (the same nn.Parameter objects)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"QuantConv2d.from_float: module must be an nn.Conv2d, got {type(module).__name__}")
        if module.padding_mode != "zeros":
            raise ValueError(f"QuantConv2d.from_float: padding_mode {module.padding_mode!r} is not supported (only 'zeros')")
        return cls._adopt(module, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                                   "transposed", "output_padding", "groups", "padding_mode",
                                   "_reversed_padding_repeated_twice"), weight_quant, act_quant, bias_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self._quantized_input(x), self.quantized_weight(), self.quantized_bias(), self.stride,
                        self.padding, self.dilation, self.groups)


class QuantLinear(QuantLayer, nn.Linear):
    def __init__(self, *args, weight_quant: WeightQuantizer | None = None,
                 act_quant: QuantAct | FixedPointAct | None = None, bias_quant: nn.Module | None = None, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._install(weight_quant, act_quant, bias_quant)

    @classmethod
    def from_float(cls, module: nn.Linear, weight_quant: WeightQuantizer | None = None,
                   act_quant: QuantAct | FixedPointAct | None = None,
                   bias_quant: nn.Module | None = None) -> "QuantLinear":
        """A QuantLinear sharing `module`'s parameters (the same nn.Parameter objects)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"QuantLinear.from_float: module must be an nn.Linear, got {type(module).__name__}")
        return cls._adopt(module, ("in_features", "out_features"), weight_quant, act_quant, bias_quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quantized_input(x), self.quantized_weight(), self.quantized_bias())
