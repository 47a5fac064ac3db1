"""qcnn.load: a .qcnn file as a torch module, run by the C++ integer engine (csrc/runtime, the engine of
qcnn-infer) through torch.classes.qcnn.Engine: same validation, same kernels, bit-identical logits."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .._ops.engine import open_engine


def _pixels(pixels) -> torch.Tensor:
    """A torch tensor of the pixels (a NumPy array is taken as one); anything else is a TypeError naming it."""
    if isinstance(pixels, torch.Tensor):
        return pixels
    if isinstance(pixels, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(pixels))
    raise TypeError(f"pixels must be a uint8 torch.Tensor or NumPy array [N, C, H, W], got {type(pixels).__name__}")


class LayerProfile(NamedTuple):
    name: str
    op: str
    kernel: str  # conv2d / linear: the integer kernel chosen at load ("gemm acc32", "gemm vnni", "gemm amx", "gemm acc16",
    # "depthwise", "binary a2")
    macs_per_image: int
    seconds: float  # summed over the images of the profiled run


class IntegerModel(nn.Module):
    """Integer inference of a .qcnn file: uint8 pixels [N, C, H, W] (a torch tensor or a NumPy array) -> float32
    logits [N, classes]."""

    def __init__(self, engine: torch.ScriptObject, path: Path, threads: int = 0, limits: dict | None = None):
        super().__init__()
        self.engine = engine
        self.path = path
        self.threads = threads
        self.limits = dict(limits or {})

    @property
    def threads(self) -> int:
        """The threads a run uses; 0: the OpenMP default, which torch.set_num_threads sets."""
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._threads = _check_int("IntegerModel", "threads", value, 0, MAX_THREADS)

    def __getstate__(self) -> dict:
        # The engine is a C++ object: a copy or a pickle holds the path and loads the file again.
        state = self.__dict__.copy()
        state.pop("engine", None)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_threads", state.pop("threads", 0))  # pickles from before threads was a property
        self.__dict__.update(state)
        self.engine = open_engine(self.path, **self.limits)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.engine.input_shape())

    @property
    def num_classes(self) -> int:
        return self.engine.num_classes()

    @property
    def isa(self) -> str:
        """The kernel path the engine chose at load (one of engine_isas(): "amx", "avx512vnni", "avx2" or "scalar";
        QCNN_ISA forces one)."""
        return self.engine.isa()

    @property
    def macs_per_image(self) -> int:
        return self.engine.macs_per_image()

    @property
    def ops_per_image(self) -> int:
        """Every operation of an image besides the MACs, as max_ops_per_image counts them."""
        return self.engine.ops_per_image()

    def peak_activation_bytes(self, batch: int) -> int:
        """Bytes of activation workspace a run of `batch` images on this model's threads holds at its peak (the engine
        runs on fewer threads where their workspace would pass max_activation_bytes_per_image)."""
        _check_int("IntegerModel.peak_activation_bytes", "batch", batch, 0, MAX_LIMIT)
        return self.engine.peak_activation_bytes(batch, self.threads)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.engine.run(_pixels(pixels), self.threads)

    def count_overflows(self, pixels: torch.Tensor) -> int:
        """The checked path (the model loaded with count_overflows=True): runs `pixels` and returns how many conv
        and linear output values had a running sum, in the engine's (ky, kx, c) order, outside the accumulator
        width their node declares (`accumulator_bits`, docs/FORMAT.md; 32 when undeclared)."""
        return self.engine.count_overflows(_pixels(pixels))

    def profile(self, pixels: torch.Tensor) -> list[LayerProfile]:
        """Runs `pixels` image by image (the threads share each node), timing every node; one entry per node,
        in order."""
        return [LayerProfile(*layer) for layer in zip(*self.engine.profile(_pixels(pixels), self.threads))]

    def extra_repr(self) -> str:
        return f"{str(self.path)!r}, input_shape={list(self.input_shape)}, classes={self.num_classes}, isa={self.isa}"


MAX_THREADS = 4096  # as qcnn-infer's --threads; OpenMP aborts the process on a pool it cannot allocate
MAX_LIMIT = 2**63 - 1  # the engine's limits are int64


def _check_int(where: str, name: str, value, lo: int, hi: int) -> int:
    """`value` if it is an int (not a bool) in [lo, hi]; else a ValueError naming `where`, `name` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{where}: {name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


def _file_path(path) -> Path:
    """`path` as a Path; a TypeError for what is not a path, a ValueError for a NUL byte (the engine's C string
    would end there and open another file)."""
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"qcnn.load: path must be a str or os.PathLike, got {type(path).__name__} {path!r}") from None
    if "\0" in text:
        raise ValueError(f"qcnn.load: path {text!r} contains a NUL byte")
    return Path(text)


def load(path: str | os.PathLike, *, threads: int = 0, max_macs_per_image: int | None = None,
         max_ops_per_image: int | None = None, max_activation_bytes_per_image: int | None = None,
         count_overflows: bool = False, fuse: bool = True) -> IntegerModel:
    """Loads a .qcnn file for integer inference (uint8 pixels -> float logits); a ValueError names the file and
    the problem if it is not a valid one.

    threads: 0 = OpenMP's default of the calling thread (what torch.set_num_threads sets).
    max_macs_per_image, max_ops_per_image, max_activation_bytes_per_image: bounds on what one image may cost, checked
    at load (None: the defaults of csrc/runtime/model.h, far above real CNNs). Ops are every operation besides the
    MACs: one per element a node reads or writes, per pooling window cell, per element of a padded conv input.
    The activation bound also caps a batch's workspace: a run takes fewer threads where it must.
    count_overflows: keep the weights for IntegerModel.count_overflows (2 more bytes per weight).
    fuse: run pointwise nodes (requantize, affine, add, mul, relu, lut) inside the node that produces their input,
    tile by tile; False runs every node on its own (the same logits, bit for bit)."""
    path = _file_path(path)
    _check_int("qcnn.load", "threads", threads, 0, MAX_THREADS)
    for name, limit in (("max_macs_per_image", max_macs_per_image), ("max_ops_per_image", max_ops_per_image),
                        ("max_activation_bytes_per_image", max_activation_bytes_per_image)):
        if limit is not None:
            _check_int("qcnn.load", name, limit, 1, MAX_LIMIT)
    for name, flag in (("count_overflows", count_overflows), ("fuse", fuse)):
        if not isinstance(flag, bool):
            raise ValueError(f"qcnn.load: {name} must be a bool, got {flag!r}")
    limits = {"max_macs_per_image": max_macs_per_image, "max_ops_per_image": max_ops_per_image,
              "max_activation_bytes_per_image": max_activation_bytes_per_image, "count_overflows": count_overflows,
              "fuse": fuse}
    return IntegerModel(open_engine(path, **limits), path, threads, limits)
