"""BatchNorm folding: conv -> BN (eval-mode statistics) becomes one conv with scaled weights and a bias.

With s = gamma / sqrt(running_var + eps):  W' = W * s (per output channel),  b' = beta + (b - running_mean) * s.
For a QuantConv2d the folded weight is s times its *quantized* weight (the deployed form: a per-channel
scaling of the levels); the result is a QuantConv2d without weight quantizer that keeps the input quantizer.
"""
from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from . import engine
from .nn.layers import QuantConv2d, QuantLayer
from .quantizers.act import QuantAct


class QuantLeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps convs, linears, BatchNorms and the qcnn quantized layers whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, QuantLayer, QuantAct)) or \
            super().is_leaf_module(m, qualname)


def _opaque_functions() -> tuple:
    """Functions the graph keeps as one call: torchvision's channel_shuffle (ShuffleNet), whose view / transpose /
    view the export reads as one channel permutation."""
    try:
        from torchvision.models.shufflenetv2 import channel_shuffle
    except ImportError:
        return ()
    return (channel_shuffle,)


def trace(model: nn.Module, owner: str, purpose: str = "") -> torch.fx.Graph:
    """The model's torch.fx graph in eval mode (QuantLeafTracer), whatever mode the model is in: `if self.training`
    branches take their inference side. An untraceable model is a TypeError naming `owner`, the model's class,
    what the graph was for and fx's reason."""
    was_training = model.training
    model.eval()
    try:
        return QuantLeafTracer(autowrap_functions=_opaque_functions()).trace(model)
    except Exception as err:  # fx raises many types for untraceable control flow
        why = f" {purpose}" if purpose else ""
        raise TypeError(f"{owner}: cannot trace {type(model).__name__} with torch.fx{why} "
                        f"({type(err).__name__}: {err})") from err
    finally:
        model.train(was_training)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replaces the submodule at dotted `name` ('' parent: the model itself) by `module`."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d whose only input is a Conv2d output used by nothing else."""
    graph = trace(model, "fold_batchnorm", "to find conv-BN pairs")
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) with bn(y) = s * y + t per channel in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("the BatchNorm has no running statistics (track_running_stats=False); it cannot be folded")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to bn(conv(x)) with bn in eval mode (QuantConv2d: with its quantized weight)."""
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_conv_bn: BatchNorm has {bn.num_features} features, the conv {conv.out_channels} outputs")
    weight = conv.quantized_weight() if isinstance(conv, QuantLayer) else conv.weight
    weight = weight.detach()
    scale, shift = bn_affine(bn)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = bias * scale + shift
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=weight.device, dtype=weight.dtype)
    plain.weight.copy_(weight * scale.reshape(-1, 1, 1, 1))
    plain.bias.copy_(new_bias)
    if isinstance(conv, QuantConv2d):
        return QuantConv2d.from_float(plain, None, copy.deepcopy(conv.act_quant))
    return plain


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv -> BatchNorm2d pair folded into the conv (the BN becomes
    nn.Identity). The copy computes what `model.eval()` computes; `model` is left unchanged. Of a torch.compile
    or data-parallel wrapper, the module it wraps is folded (and returned, unwrapped)."""
    folded = copy.deepcopy(engine.unwrap(model)).eval()
    for conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        set_submodule(folded, conv_name, fold_conv_bn(conv, bn))
        set_submodule(folded, bn_name, nn.Identity())
    return folded
