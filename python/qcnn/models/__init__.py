"""CNNs for 28x28 single-channel images, and a registry: qcnn.models.create(name, **kwargs)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .nets import LeNet5, ResNetSmall, SequentialNet, VGGSmall

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "sequential": SequentialNet,
    "resnet_small": ResNetSmall,
    "vgg_small": VGGSmall,
}
DEFAULT_MODEL = "vgg_small"


def names() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
    """Builds a registered model; unknown names and keyword arguments are errors."""
    if name not in _REGISTRY:
        raise ValueError(f"qcnn.models.create: unknown model {name!r}; known: {names()}")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise TypeError(f"qcnn.models.create({name!r}): bad keyword arguments {sorted(kwargs)}: {err}") from err


__all__ = ["LeNet5", "ResNetSmall", "SequentialNet", "VGGSmall", "create", "names", "DEFAULT_MODEL"]
