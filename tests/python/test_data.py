import gzip
import struct

import numpy as np
import pytest
import torch

from qcnn import data
from qcnn.config import DataConfig

ROOT = data.DEFAULT_ROOT


def _write_idx(path, array, magic_type=0x08, compress=False):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip(tmp_path, compress):
    arr = np.random.default_rng(1).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(path, arr, compress=compress)
    out = data.read_idx(path, expected_ndim=3)
    assert out.dtype == torch.uint8
    np.testing.assert_array_equal(out.numpy(), arr)


def test_read_idx_errors_name_file_and_offset(tmp_path):
    arr = np.zeros((4, 2), dtype=np.uint8)
    bad_magic = tmp_path / "magic.idx"
    _write_idx(bad_magic, arr)
    raw = bytearray(bad_magic.read_bytes()); raw[0] = 1; bad_magic.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"magic\.idx.*offset 0"):
        data.read_idx(bad_magic)
    bad_type = tmp_path / "type.idx"
    _write_idx(bad_type, arr, magic_type=0x0D)
    with pytest.raises(ValueError, match=r"type\.idx.*offset 2"):
        data.read_idx(bad_type)
    short = tmp_path / "short.idx"
    _write_idx(short, arr)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"short\.idx.*from offset 12"):
        data.read_idx(short)
    with pytest.raises(ValueError, match="dimensions at offset 3"):
        data.read_idx(short, expected_ndim=3)
    with pytest.raises(FileNotFoundError, match="nope"):
        data.read_idx(tmp_path / "nope.idx")


@pytest.mark.parametrize("images, message", [
    (np.zeros((0, 28, 28), np.uint8), "holds no images"),
    (np.zeros((3, 1, 1), np.uint8), "holds 1x1 images, smaller than 8x8"),
])
def test_a_dataset_the_nets_cannot_use_is_refused_by_file(tmp_path, images, message):
    _write_idx(tmp_path / "train-images-idx3-ubyte", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(len(images), np.uint8))
    with pytest.raises(ValueError, match=f"train-images-idx3-ubyte {message}"):
        data.load_fashion_mnist(tmp_path, "train")


def test_test_images_of_another_size_are_refused(tmp_path):
    for split, n, size in (("train", 20, 28), ("t10k", 4, 14)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", np.zeros((n, size, size), np.uint8))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    cfg = DataConfig(path=str(tmp_path), val_size=4)
    with pytest.raises(ValueError, match=r"the test images are \[14, 14\], the training images \[28, 28\]"):
        data.build_loaders(cfg)


def test_fashion_mnist_real_files():
    images, labels = data.load_fashion_mnist(ROOT, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist(ROOT, "val")


def test_split_is_fixed_disjoint_and_complete():
    tr, va = data.train_val_indices(1000, 100, seed=3)
    tr2, va2 = data.train_val_indices(1000, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(set(tr.tolist()) | set(va.tolist())) == 1000
    assert not set(tr.tolist()) & set(va.tolist())
    _, va3 = data.train_val_indices(1000, 100, seed=4)
    assert not torch.equal(va, va3)


def _toy_loader(**kw):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 6, 5), dtype=torch.uint8, generator=g)
    return data.TensorLoader(images, torch.arange(50), batch_size=8, **kw)


def test_loader_order_depends_only_on_seed_and_epoch():
    a, b = _toy_loader(shuffle=True, augment=True, seed=5), _toy_loader(shuffle=True, augment=True, seed=5)
    a.set_epoch(3); b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))
    labels = torch.cat([y for _, y in a])
    assert sorted(labels.tolist()) == list(range(50))  # a permutation: every sample once


def test_loader_normalization_without_augmentation():
    loader = _toy_loader()
    x, y = next(iter(loader))
    expected = (loader.images[:8].float() / 255 - data.FASHION_MEAN) / data.FASHION_STD
    torch.testing.assert_close(x[:, 0], expected)
    assert x.shape == (8, 1, 6, 5) and len(loader) == 7


def test_augmentation_is_a_padded_crop_or_its_mirror():
    loader = _toy_loader(augment=True, crop_padding=2, hflip=True, seed=1)
    x, y = next(iter(loader))
    raw = torch.round((x[:, 0] * data.FASHION_STD + data.FASHION_MEAN) * 255).to(torch.int64)
    for img, label in zip(raw, y):
        src = torch.nn.functional.pad(loader.images[label].long(), (2, 2, 2, 2))
        candidates = [src[dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img, c) or torch.equal(img, c.flip(-1)) for c in candidates)


def test_distributed_shards_are_disjoint_and_equal_sized():
    shards = [_toy_loader(shuffle=True, seed=2, rank=r, world_size=3, drop_last=True) for r in range(3)]
    seen = [torch.cat([y for _, y in s]).tolist() for s in shards]
    assert len({len(s) for s in seen}) == 1
    assert not set(seen[0]) & set(seen[1]) and not set(seen[1]) & set(seen[2])


def test_loader_rejects_bad_arguments():
    with pytest.raises(TypeError, match="uint8"):
        data.TensorLoader(torch.zeros(4, 2, 2), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.TensorLoader(torch.zeros(4, 2, 2, dtype=torch.uint8), torch.zeros(4), 0)
    with pytest.raises(ValueError, match="rank"):
        data.TensorLoader(torch.zeros(4, 2, 2, dtype=torch.uint8), torch.zeros(4), 2, rank=2, world_size=2)


def test_build_loaders_subsets():
    cfg = DataConfig(train_subset=300, val_subset=200, test_subset=100, batch_size=64)
    splits = data.build_loaders(cfg)
    assert splits.train.num_samples == 300 and splits.val.num_samples == 200 and splits.test.num_samples == 100


def test_read_idx_refuses_trailing_data(tmp_path):
    path = tmp_path / "long.idx"
    _write_idx(path, np.zeros((4, 2), dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"long\.idx: trailing data at offset 20, after the 8 data bytes"):
        data.read_idx(path)


def test_read_idx_stops_reading_a_gzip_bomb(tmp_path, monkeypatch):
    path = tmp_path / "bomb.idx.gz"
    header = bytes([0, 0, 0x08, 3]) + b"".join(struct.pack(">I", d) for d in (10, 28, 28))
    path.write_bytes(gzip.compress(header + bytes(50 << 20), compresslevel=1))
    read = []

    class Counting(gzip.GzipFile):
        def read(self, size=-1):
            out = super().read(size)
            read.append(len(out))
            return out

    monkeypatch.setattr(gzip, "open", lambda p, mode: Counting(p, mode))
    with pytest.raises(ValueError, match=r"bomb\.idx\.gz: trailing data at offset 7856"):
        data.read_idx(path, expected_ndim=3)
    assert sum(read) == 16 + 10 * 28 * 28 + 1
