"""Fashion-MNIST from IDX files, held in memory as uint8 tensors and batched without a Dataset.

The IDX format: a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data. Images are type 0x08 (uint8) with 3 dimensions,
labels type 0x08 with 1 dimension.
"""
from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import atomic
from .engine import unwrap

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
# Mean and standard deviation of the Fashion-MNIST training pixels (in [0, 1]).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
NUM_CLASSES = 10
MIN_IMAGE_SIZE = 8  # the nets pool three times


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: one image's shape (C, H, W) and the per-channel normalisation of its pixels,
    x = (pixel / 255 - mean[c]) / std[c]. Exported into the .qcnn file, so the runtimes take raw pixels."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
            raise ValueError(f"InputSpec: shape must be (C, H, W) of positive ints, got {self.shape!r}")
        mean, std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if len(mean) != shape[0] or len(std) != shape[0]:
            raise ValueError(f"InputSpec: mean and std need one entry per channel ({shape[0]}), got "
                             f"{len(mean)} and {len(std)}")
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise ValueError(f"InputSpec: mean must be finite and std finite and positive, got {mean}, {std}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


FASHION_MNIST_INPUT = InputSpec((1, 28, 28), (FASHION_MEAN,), (FASHION_STD,))


def set_input_spec(model: torch.nn.Module, spec: InputSpec) -> torch.nn.Module:
    """Records on `model` the input it reads, for qcnn.export; qcnn.retrain.run does it from its loader."""
    if not isinstance(spec, InputSpec):
        raise TypeError(f"set_input_spec: spec must be a qcnn.data.InputSpec, got {type(spec).__name__}")
    unwrap(model).qcnn_input_spec = spec
    return model

_IDX_TYPE_UINT8 = 0x08
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> torch.Tensor:
    """Reads one IDX file (gzip-compressed when the name ends in .gz) into a uint8 tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_idx: no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return _read_idx(f, path, expected_ndim)
    except (OSError, EOFError) as err:
        raise ValueError(f"read_idx: {path}: cannot read ({err})") from err


def _read_idx(f, path: Path, expected_ndim: int | None) -> torch.Tensor:
    raw = f.read(4)
    if len(raw) < 4:
        raise ValueError(f"read_idx: {path}: file holds {len(raw)} bytes, shorter than the 4-byte magic at offset 0")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"read_idx: {path}: bad magic at offset 0: bytes 0-1 are {raw[0]:#04x} {raw[1]:#04x}, expected 0x00 0x00")
    if raw[2] != _IDX_TYPE_UINT8:
        raise ValueError(f"read_idx: {path}: unsupported data type {raw[2]:#04x} at offset 2 (only 0x08, unsigned byte)")
    ndim = raw[3]
    if ndim == 0 or (expected_ndim is not None and ndim != expected_ndim):
        want = f"expected {expected_ndim}" if expected_ndim is not None else "expected at least 1"
        raise ValueError(f"read_idx: {path}: {ndim} dimensions at offset 3, {want}")
    header = 4 + 4 * ndim
    raw += f.read(header - 4)
    if len(raw) < header:
        raise ValueError(f"read_idx: {path}: truncated header: {len(raw)} bytes, dimension sizes end at offset {header}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    # At most the declared size and one byte more (a gzip bomb stops there), in chunks so that a huge declared
    # size allocates no more than the file holds.
    payload = bytearray()
    while len(payload) <= count:
        chunk = f.read(min(count + 1 - len(payload), 1 << 24))
        if not chunk:
            break
        payload += chunk
    if len(payload) < count:
        raise ValueError(
            f"read_idx: {path}: dimensions {dims} need {count} data bytes from offset {header}, "
            f"the file has {len(payload)}"
        )
    if len(payload) > count:
        raise ValueError(f"read_idx: {path}: trailing data at offset {header + count}, after the {count} data bytes "
                         f"dimensions {dims} need")
    return torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).reshape(dims))


def write_idx(path: str | Path, array) -> Path:
    """Writes a uint8 array as an IDX file (gzip-compressed when the name ends in .gz), as read_idx reads it."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_TYPE_UINT8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    content = header + array.tobytes()
    atomic.write_file(path, gzip.compress(content) if path.suffix == ".gz" else content)
    return path


def find_idx(root: str | Path, stem: str) -> Path:
    """The IDX file `stem` under `root`, gzip-compressed (as Debian ships it) or raw."""
    root = Path(root)
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"fashion-mnist: neither {root / stem}.gz nor {root / stem} exists")


def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (images uint8 [N, 28, 28], labels int64 [N]) of the 'train' or 'test' split."""
    if split not in IDX_FILES:
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    image_path, label_path = (find_idx(root, stem) for stem in IDX_FILES[split])
    images = read_idx(image_path, expected_ndim=3)
    labels = read_idx(label_path, expected_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"fashion-mnist: {image_path} holds {images.shape[0]} images but {label_path} {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError(f"fashion-mnist: {image_path} holds no images")
    if min(images.shape[1:]) < MIN_IMAGE_SIZE:
        raise ValueError(f"fashion-mnist: {image_path} holds {images.shape[1]}x{images.shape[2]} images, smaller than "
                         f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    if int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"fashion-mnist: {label_path} holds label {int(labels.max())}, expected 0..9")
    return images, labels.long()


def train_val_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random split of range(n) into (train, validation) indices."""
    if not 0 <= val_size < n:
        raise ValueError(f"train_val_indices: val_size must be in [0, {n}), got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


class TensorLoader:
    """Batches (image, label) pairs from in-memory uint8 tensors.

    The order and the augmentation of epoch e depend only on (seed, e): call set_epoch(e) and the
    batches are reproducible, which is what checkpoint resumption and DistributedDataParallel
    (every rank draws the same permutation and takes its own slice) rely on.
    Images come out as float32 [B, 1, 28, 28], normalized with the Fashion-MNIST mean and std.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False,
                 augment: bool = False, crop_padding: int = 2, hflip: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise TypeError(f"TensorLoader: images must be uint8 [N, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"TensorLoader: labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if batch_size < 1:
            raise ValueError(f"TensorLoader: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"TensorLoader: rank {rank} not in [0, world_size={world_size})")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.crop_padding, self.hflip, self.seed = crop_padding, hflip, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec((1, *self.images.shape[1:]), (FASHION_MEAN,), (FASHION_STD,))

    def _rank_indices(self) -> torch.Tensor:
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        else:
            order = torch.arange(n)
        # Every rank gets the same number of samples (DDP needs equal step counts): cut the tail.
        per_rank = n // self.world_size if self.world_size > 1 else n
        return order[self.rank * per_rank:(self.rank + 1) * per_rank] if self.world_size > 1 else order

    def __len__(self) -> int:
        n = self.images.shape[0] // self.world_size if self.world_size > 1 else self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return self.images.shape[0] // self.world_size if self.world_size > 1 else self.images.shape[0]

    def __iter__(self):
        indices = self._rank_indices()
        aug_gen = torch.Generator().manual_seed(self.seed * 7_368_787 + self.epoch + 1)
        for b in range(len(self)):
            idx = indices[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = self._augment(x, aug_gen)
            x = (x.float().unsqueeze(1) / 255.0 - FASHION_MEAN) / FASHION_STD
            yield x, self.labels[idx]

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop after zero padding, and random horizontal flip, vectorized over the batch."""
        b, h, w = x.shape
        p = self.crop_padding
        if p > 0:
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
            rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]
            cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]
            x = padded[torch.arange(b)[:, None, None], rows, cols]
        if self.hflip:
            flip = torch.rand(b, generator=gen) < 0.5
            x = torch.where(flip[:, None, None], x.flip(-1), x)
        return x


@dataclass
class Splits:
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader


def build_loaders(data_cfg, rank: int = 0, world_size: int = 1) -> Splits:
    """Train/validation/test loaders for a qcnn.config.DataConfig. The validation split is carved from
    the training set with data_cfg.seed; the test set is only for final reports."""
    images, labels = load_fashion_mnist(data_cfg.path, "train")
    train_idx, val_idx = train_val_indices(images.shape[0], data_cfg.val_size, data_cfg.seed)
    if data_cfg.train_subset is not None:
        train_idx = train_idx[:data_cfg.train_subset]
    if data_cfg.val_subset is not None:
        val_idx = val_idx[:data_cfg.val_subset]
    test_images, test_labels = load_fashion_mnist(data_cfg.path, "test")
    if test_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"fashion-mnist: {data_cfg.path}: the test images are {list(test_images.shape[1:])}, the "
                         f"training images {list(images.shape[1:])}")
    if data_cfg.test_subset is not None:
        test_images, test_labels = test_images[:data_cfg.test_subset], test_labels[:data_cfg.test_subset]
    train = TensorLoader(images[train_idx], labels[train_idx], data_cfg.batch_size, shuffle=True,
                         augment=data_cfg.augment, crop_padding=data_cfg.crop_padding, hflip=data_cfg.hflip,
                         seed=data_cfg.seed, rank=rank, world_size=world_size, drop_last=world_size > 1)
    # Evaluation runs on every rank over the whole split (it is cheap), so all ranks agree.
    val = TensorLoader(images[val_idx], labels[val_idx], data_cfg.eval_batch_size)
    test = TensorLoader(test_images, test_labels, data_cfg.eval_batch_size)
    return Splits(train, val, test)
