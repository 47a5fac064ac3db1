"""Quantized layers: drop-in subclasses of nn.Conv2d / nn.Linear, and QuantAct for activations."""
from .layers import QuantConv2d, QuantLinear, QuantLayer
from ..quantizers.act import QuantAct

__all__ = ["QuantConv2d", "QuantLinear", "QuantLayer", "QuantAct"]
