"""CNNs for 28x28 single-channel images, and a registry: qcnn.models.create(name, **kwargs)."""
from __future__ import annotations

import importlib
import inspect
import typing
from typing import Callable

from torch import nn

from .adapters import INPUT_ADAPTERS, adapt_to_gray28
from .nets import LeNet5, ResNetSmall, SequentialNet, VGGSmall

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "sequential": SequentialNet,
    "resnet_small": ResNetSmall,
    "vgg_small": VGGSmall,
}
DEFAULT_MODEL = "vgg_small"


def names() -> list[str]:
    """The registered names; create() also takes 'torchvision.<builder>' and 'package.module:Class'."""
    return sorted(_REGISTRY)


def check_name(name) -> None:
    """ValueError unless `name` is one create() can build (a registered one or the form of the others)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"qcnn.models.create: model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY or name.startswith("torchvision.") and ":" not in name:
        return
    module, colon, attr = name.partition(":")
    if colon and module and attr and all(part.isidentifier() for part in module.split(".") + attr.split(".")):
        return
    raise ValueError(f"qcnn.models.create: unknown model {name!r}; known: {names()}, 'torchvision.<builder>' "
                     "(any torchvision.models builder, e.g. torchvision.resnet18) or 'package.module:Class'")


def builder(name: str) -> Callable[..., nn.Module]:
    """The function that builds the model `name` (a registered name, or a torchvision one), before any call."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("torchvision.") and ":" not in name:
        try:
            import torchvision.models
        except ImportError as err:
            raise ImportError(f"qcnn.models.create({name!r}) needs torchvision (pip install torchvision==0.29.1 "
                              f"with torch==2.14.1): {err}") from err
        torchvision_name = name[len("torchvision."):]
        try:
            return torchvision.models.get_model_builder(torchvision_name)
        except ValueError:
            raise ValueError(f"qcnn.models.create: torchvision has no model builder {torchvision_name!r}; known: "
                             f"{sorted(torchvision.models.list_models())}") from None
    module_name, _, attr = name.partition(":")
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"qcnn.models.create({name!r}): cannot import {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"qcnn.models.create({name!r}): {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not _builds_a_module(target):
        # a config names the code it runs: only model builders, never an arbitrary callable (os:system)
        raise TypeError(f"qcnn.models.create({name!r}): {attr!r} must be an nn.Module subclass or a function "
                        f"annotated to return one (def build(...) -> nn.Module), got {type(target).__name__} "
                        f"{getattr(target, '__qualname__', target)!r}")
    return target


def _builds_a_module(target) -> bool:
    if isinstance(target, type):
        return issubclass(target, nn.Module)
    if not inspect.isfunction(target):
        return False
    try:
        returned = typing.get_type_hints(target).get("return")
    except Exception:  # an annotation that does not resolve
        return False
    return isinstance(returned, type) and issubclass(returned, nn.Module)


def create(name: str, input_adapter: str | None = None, **kwargs) -> nn.Module:
    """Builds a model: a registered name, 'torchvision.<builder>' (kwargs go to the builder, e.g.
    num_classes=10; no pretrained weights unless asked for) or 'package.module:Class' (an nn.Module subclass,
    or a function annotated to return one). input_adapter='gray28' fits a net built for 3-channel 224x224 images
    to 1-channel 28x28 ones (adapt_to_gray28). Unknown names and keyword arguments are errors."""
    check_name(name)
    builder_fn = builder(name)
    try:
        model = builder_fn(**kwargs)
    except TypeError as err:
        raise TypeError(f"qcnn.models.create({name!r}): bad keyword arguments {sorted(kwargs)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"qcnn.models.create({name!r}) returned a {type(model).__name__}, not a torch.nn.Module")
    if input_adapter is not None:
        if input_adapter not in INPUT_ADAPTERS:
            raise ValueError(f"qcnn.models.create: input_adapter must be one of {sorted(INPUT_ADAPTERS)}, "
                             f"got {input_adapter!r}")
        INPUT_ADAPTERS[input_adapter](model)
    return model


__all__ = ["LeNet5", "ResNetSmall", "SequentialNet", "VGGSmall", "create", "names", "adapt_to_gray28", "check_name", "INPUT_ADAPTERS",
           "DEFAULT_MODEL"]
