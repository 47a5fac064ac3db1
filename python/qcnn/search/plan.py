"""What the searches' plans share (qcnn.search.fixed_point's FixedPointPlan, qcnn.search.accumulator's
AccumulatorPlan): per-layer records named by module and kind, a plan's layer list, and its JSON document with a
format name and version."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar


@dataclass
class PlanLayer:
    """One conv/linear layer of a plan: its module name and kind; subclasses add what their search decides."""

    name: str
    kind: str  # "conv" or "linear"

    PLAN: ClassVar[str] = "Plan"  # the owning plan's class name, for errors

    def check_identity(self) -> str:
        """Checks the name and kind; returns the layer's name for errors ("<Plan> layer 'x'")."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{self.PLAN}: a layer name must be a non-empty string, got {self.name!r}")
        where = f"{self.PLAN} layer {self.name!r}"
        if self.kind not in ("conv", "linear"):
            raise ValueError(f"{where}: kind must be 'conv' or 'linear', got {self.kind!r}")
        return where

    def check_counts(self, where: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{where}: {key} must be an int >= 0, got {value!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PlanLayer":
        """A layer from its to_dict(); unknown and missing keys are a ValueError naming them."""
        if not isinstance(data, dict):
            raise TypeError(f"{cls.PLAN}: a layer must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise ValueError(f"{cls.PLAN} layer {data.get('name')!r}: unknown keys {unknown}, missing keys {missing}")
        return cls(**data)


class Plan:
    """A search's result: `layers` (PlanLayer records, at least one, names unique) and its JSON document
    {"format": FORMAT, "version": VERSION, ...}."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    layers: list

    def check_layers(self, layer_type: type) -> None:
        owner = type(self).__name__
        if not isinstance(self.layers, list) or not all(isinstance(layer, layer_type) for layer in self.layers):
            raise TypeError(f"{owner}: layers must be a list of {layer_type.__name__}")
        names = [layer.name for layer in self.layers]
        if not names:
            raise ValueError(f"{owner}: a plan needs at least one layer")
        if len(set(names)) != len(names):
            raise ValueError(f"{owner}: layer names repeat: {names}")

    def document(self, **fields) -> dict:
        """The plan's JSON document: its format and version, then `fields`."""
        return {"format": self.FORMAT, "version": self.VERSION, **fields}

    @classmethod
    def read_document(cls, data, keys: tuple[str, ...]) -> dict:
        """`data` checked as a document of this plan's format and version with no keys beyond `keys`; its
        'layers' a list."""
        owner = cls.__name__
        if not isinstance(data, dict):
            raise TypeError(f"{owner}.from_dict: expected a mapping, got {type(data).__name__}")
        if data.get("format") != cls.FORMAT or data.get("version") != cls.VERSION:
            raise ValueError(f"{owner}.from_dict: format/version must be {cls.FORMAT!r}/{cls.VERSION}, got "
                             f"{data.get('format')!r}/{data.get('version')!r}")
        unknown = sorted(set(data) - {"format", "version", *keys})
        if unknown:
            raise ValueError(f"{owner}.from_dict: unknown keys {unknown}")
        if not isinstance(data.get("layers"), list):
            raise ValueError(f"{owner}.from_dict: 'layers' must be a list")
        return data
