"""Input adapters: fit a network built for 3-channel 224x224 images (torchvision's) to other inputs."""
from __future__ import annotations

from torch import nn

from ..fold import set_submodule, trace


def _stem(model: nn.Module) -> tuple[list[str], str | None]:
    """(module names in the order the fx graph calls them, the name of the first conv that reads the input)."""
    graph = trace(model, "adapt_to_gray28", "to find its stem")
    modules = dict(model.named_modules())
    order = [str(n.target) for n in graph.nodes if n.op == "call_module"]
    stem = next((name for name in order if isinstance(modules.get(name), nn.Conv2d)), None)
    return order, stem


def adapt_to_gray28(model: nn.Module) -> nn.Module:
    """A CIFAR-style stem for 1-channel 28x28 images, in place: the first conv reads 1 channel, and when it
    downsamples (ResNet's 7x7 stride 2, MobileNet's 3x3 stride 2) becomes a 3x3 stride-1 conv with padding 1;
    a max pooling right after it (ResNet's) is removed. So a 28x28 image keeps enough resolution for the
    net's later stride-2 stages. Returns `model`."""
    order, stem = _stem(model)
    if stem is None:
        raise ValueError(f"adapt_to_gray28: {type(model).__name__} has no nn.Conv2d reading its input")
    conv = model.get_submodule(stem)
    downsamples = max(conv.stride) > 1
    kernel, new_stride, padding = ((3, 3), (1, 1), (1, 1)) if downsamples else (conv.kernel_size, conv.stride,
                                                                                 conv.padding)
    new = nn.Conv2d(1, conv.out_channels, kernel, stride=new_stride, padding=padding, dilation=1 if downsamples
                    else conv.dilation, groups=1, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    set_submodule(model, stem, new.to(conv.weight.device, conv.weight.dtype))
    if downsamples:
        modules = dict(model.named_modules())
        for name in order[order.index(stem) + 1:]:
            module = modules.get(name)
            if isinstance(module, nn.Conv2d):
                break
            if isinstance(module, nn.MaxPool2d):
                set_submodule(model, name, nn.Identity())
                break
    return model


INPUT_ADAPTERS = {"gray28": adapt_to_gray28}

__all__ = ["adapt_to_gray28", "INPUT_ADAPTERS"]
