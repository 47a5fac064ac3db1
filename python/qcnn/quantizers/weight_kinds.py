"""The weight kinds: what the `kind` of a config's weight section names. Each kind's module (weight_uniform,
weight_binary, weight_fixed, weight_codebook) defines its quantizer and registers a WeightKind here: how the
quantizer is built from a WeightQuantConfig, which config options are its own and how they are checked, and how
reports label it. The config (qcnn.config), the layer swap (qcnn.quantize_), the cost model and the results
tables read the kinds from here; the exporter reads each quantizer through its deployed_weight method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class WeightKind:
    """name: the config's `kind`; quantizer: its class (a WeightQuantizer); bits: the range of `bits`;
    build(cfg, weight_shape): the quantizer for a WeightQuantConfig; label(weight): a config's weight section (a
    mapping, as summaries store it) in report tables; options: the config keys only this kind takes, each with
    whether a config sets it (a config of another kind that sets one is refused, naming the key); validate(cfg,
    path): the kind's further checks, raising ConfigError with the key path."""
    name: str
    quantizer: type
    bits: tuple[int, int]
    build: Callable[[Any, tuple[int, ...]], Any]
    label: Callable[[dict], str]
    options: dict[str, Callable[[Any], bool]] = field(default_factory=dict)
    validate: Callable[[Any, str], None] | None = None


_KINDS: dict[str, WeightKind] = {}


def register_weight_kind(kind: WeightKind) -> WeightKind:
    """Adds a kind (its module calls this once, at import); a second kind of the same name is an error."""
    if not isinstance(kind, WeightKind):
        raise TypeError(f"register_weight_kind: expected a WeightKind, got {type(kind).__name__}")
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"register_weight_kind: a weight kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def weight_kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def weight_kind(name: str) -> WeightKind:
    """The registered kind `name`; a KeyError naming the known ones otherwise."""
    if name not in _KINDS:
        raise KeyError(f"unknown weight kind {name!r}; known: {list(_KINDS)}")
    return _KINDS[name]


def kind_of(quantizer) -> str | None:
    """The name of the kind whose quantizer class `quantizer` is an instance of (the most derived one), or None."""
    matches = [k for k in _KINDS.values() if isinstance(quantizer, k.quantizer)]
    if not matches:
        return None
    return max(matches, key=lambda k: len(k.quantizer.__mro__)).name
