"""Codebook weights live on their deployable integer grid (docs/FORMAT.md section 3): after every fit and
in every forward with trained centroids, c = scale * level with |level| <= L (64 up to 6 bits, else 127),
and the exporter stores exactly these levels and scales, so the integer program computes with the weights
the model was trained with."""
from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.exporter import Graph, Node, QParams, QuantWeight, lower_graph, read_qcnn, to_graph
from qcnn._ops.int_ops import huffman_decode, unpack_bits
from qcnn.quantize import calibrate_activations
from qcnn.quantizers import CodebookWeightQuantizer
from qcnn.weight_format import codebook_grid, codebook_level_limit, snap_to_grid

from export_helpers import FASHION_INPUT, FASHION, read_idx

METHODS = ("kmeans", "kmeans_optimal", "lloyd_max", "kde_kmeans", "kde_lloyd_max")
MEAN, STD = 0.2860, 0.3530


def assert_on_grid(q: CodebookWeightQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The effective codebook is exactly scale * level, |level| <= L, the largest |level| of a table is L."""
    book = q.effective_codebook().detach()
    scale, levels = q.integer_codebook()
    limit = codebook_level_limit(q.bits)
    rows, lv = book.reshape(-1, book.shape[-1]), levels.reshape(-1, book.shape[-1])
    s = scale.reshape(-1).double()
    assert torch.equal(rows.double(), s[:, None] * lv)
    assert int(lv.abs().max()) <= limit
    nonzero = rows.abs().amax(1) > 0
    assert torch.equal(lv.abs().amax(1)[nonzero], torch.full_like(lv[:, 0], limit)[nonzero])
    peak = rows.double().abs().amax(1)
    torch.testing.assert_close(s[nonzero], peak[nonzero] / limit, rtol=2 ** -16, atol=0)
    return scale, levels


def test_level_limit():
    assert [codebook_level_limit(b) for b in range(1, 9)] == [64] * 6 + [127] * 2
    assert 2 * 255 * 64 < 2 ** 15  # vpmaddubsw pair sums of u8 x s8 with |level| <= 64 fit int16
    for bad in (0, 9, 4.0, True):
        with pytest.raises(ValueError, match="bits"):
            codebook_level_limit(bad)
    with pytest.raises(ValueError, match="limit"):
        codebook_grid(torch.ones(4), 128)
    with pytest.raises(ValueError, match="codebook"):
        codebook_grid(torch.tensor([0.0, float("nan")]), 64)


def test_snap_is_exact_monotone_and_idempotent():
    gen = torch.Generator().manual_seed(0)
    for limit in (1, 5, 64, 127):
        magnitude = 10.0 ** torch.randint(-6, 4, (6, 1), generator=gen).float()
        book = torch.sort(torch.randn(6, 32, generator=gen) * magnitude, dim=1).values
        book[0] = 0.0  # an all-zero table: scale 1, levels 0
        scale, levels = codebook_grid(book, limit)
        snapped = snap_to_grid(book, limit)
        assert scale[0] == 1.0 and not levels[0].any()
        assert torch.equal(snapped.double(), scale.double()[:, None] * levels)  # exact in float32
        assert (snapped[:, 1:] >= snapped[:, :-1]).all()                         # still sorted
        again_scale, again_levels = codebook_grid(snapped, limit)
        assert torch.equal(again_scale, scale) and torch.equal(again_levels, levels)
        assert ((snapped - book).abs() <= 0.5 * scale[:, None] * (1 + 2 ** -16)).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 7])
def test_fit_puts_the_codebook_on_the_grid(method, per_channel, bits):
    w = torch.randn(6, 4, 3, 3) * 0.1
    q = CodebookWeightQuantizer(w.shape, bits, method=method, per_channel=per_channel)
    out = q(w)
    scale, levels = assert_on_grid(q)
    assert torch.equal(q.codebook, q.effective_codebook())  # a fitted codebook is stored snapped
    # Every quantized weight is exactly scale * an integer level of its table, and its nearest entry.
    s = scale.reshape(-1, 1, 1, 1) if per_channel else scale
    assert torch.equal(out.double(), s.double() * torch.round(out.double() / s.double()))
    book = q.codebook if per_channel else q.codebook.expand(6, -1)
    dist = (w.reshape(6, -1, 1) - book[:, None, :]).abs()
    torch.testing.assert_close((w.reshape(6, -1) - out.reshape(6, -1)).abs(), dist.min(2).values)


def test_trained_centroids_stay_on_the_grid():
    torch.manual_seed(1)
    w = (torch.randn(8, 3, 3, 3) * 0.2).requires_grad_()
    q = CodebookWeightQuantizer(w.shape, 4, per_channel=True, train_centroids=True)
    target = torch.randn(8, 3, 3, 3) * 0.2
    opt = torch.optim.SGD([w, q.codebook], lr=0.05)
    first = None
    for _ in range(20):
        opt.zero_grad()
        out = q(w)
        if first is None:
            first = q.integer_codebook()[1].clone()
        (out - target).square().sum().backward()
        assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0  # straight through the snap
        opt.step()
        assert_on_grid(q)
        scale, _ = q.integer_codebook()
        # the forward's weights are scale * level, level an integer in [-L, L]
        w_int = q(w).detach().double() / scale.double().reshape(-1, 1, 1, 1)
        assert torch.equal(w_int, torch.round(w_int)) and int(w_int.abs().max()) <= 64
    assert not torch.equal(q.integer_codebook()[1], first)  # the centroids did move on the grid
    assert not torch.equal(q.codebook.detach(), q.effective_codebook().detach())  # latent centroids stay float


def test_incremental_rounds_use_the_grid():
    torch.manual_seed(2)
    w = torch.randn(4, 200) * 0.3
    q = CodebookWeightQuantizer(w.shape, 3, per_channel=False)
    q.refit(w)
    q.freeze(w, 0.5)
    w2 = w + 0.05 * torch.randn_like(w)
    q.refit(w2)  # INQ round: refit, the frozen weights follow the new codebook
    q.freeze(w2, 1.0)
    assert_on_grid(q)
    scale, levels = q.integer_codebook()
    out = q(w2)
    assert set(torch.round(out.double() / scale.double()).unique().tolist()) <= set(levels.tolist())


def test_duplicate_entries_after_snapping():
    """An 8-bit table holds 256 entries in 255 levels, and close central centroids share a level: the
    nearest-centroid search tolerates equal (sorted) entries."""
    torch.manual_seed(3)
    w = torch.cat([torch.randn(1, 2000) * 0.01, torch.randn(1, 2000)], 1).reshape(2, 2000)
    q = CodebookWeightQuantizer(w.shape, 8, per_channel=True)
    out = q(w)
    _, levels = assert_on_grid(q)
    assert (levels[0, 1:] == levels[0, :-1]).any()  # duplicates exist
    book = q.codebook
    dist = (w[:, :, None] - book[:, None, :]).abs()
    torch.testing.assert_close((w - out).abs(), dist.min(2).values)
    idx = q.nearest(w)
    assert torch.equal(book.gather(1, idx), out)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 7 * 7, 10)
        self.relu, self.pool, self.flat = nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        return self.fc(self.flat(x))


@functools.lru_cache(maxsize=1)
def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train pixels, train labels, test pixels): 6000 + 2000 Fashion-MNIST images, or random pixels and
    labels without the dataset."""
    if (FASHION / "train-images-idx3-ubyte.gz").exists():
        train = torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:6000].copy())[:, None]
        labels = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:6000].astype(np.int64))
        test = torch.from_numpy(read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:2000].copy())[:, None]
        return train, labels, test
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (6000, 1, 28, 28), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (6000,), generator=gen),
            torch.randint(0, 256, (2000, 1, 28, 28), generator=gen, dtype=torch.uint8))


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return Graph((1, 28, 28), [MEAN], [STD]).normalize(pixels)


@functools.lru_cache(maxsize=1)
def _float_state() -> dict:
    torch.manual_seed(0)
    model = SmallNet()
    train, labels, _ = _data()
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for start in range(0, 6000, 100):
        opt.zero_grad()
        F.cross_entropy(model(_normalize(train[start:start + 100])), labels[start:start + 100]).backward()
        opt.step()
    return model.state_dict()


def _quantized_net(weight: dict, act_bits: int = 2, train_steps: int = 0) -> nn.Module:
    """SmallNet trained in float, quantized (8-bit signed input, `act_bits` PACT activations), calibrated,
    weights fitted, then `train_steps` steps of quantization-aware training; in eval mode."""
    torch.manual_seed(0)
    model = SmallNet()
    model.load_state_dict(_float_state())
    qcnn.quantize_(model, {"weight": weight, "act": {"bits": act_bits, "method": "pact"},
                           "input_act": {"bits": 8, "signed": True, "method": "lsq"}})
    train, labels, _ = _data()
    calibrate_activations(model, [(_normalize(train[:500]), None)], 1)
    with torch.no_grad():
        model.eval()
        model(_normalize(train[:100]))  # fits the weight quantizers
    if train_steps:
        model.train()
        # weights and centroids only: the activation clips stay as calibrated
        opt = torch.optim.Adam([p for n, p in model.named_parameters() if "act_quant" not in n], 1e-3)
        for i in range(train_steps):
            batch = slice(100 * i % 6000, 100 * i % 6000 + 100)
            opt.zero_grad()
            F.cross_entropy(model(_normalize(train[batch])), labels[batch]).backward()
            opt.step()
    return model.eval()


def _weight_quantizers(model: nn.Module) -> dict[str, CodebookWeightQuantizer]:
    return {name.removesuffix(".weight_quant"): m for name, m in model.named_modules()
            if isinstance(m, CodebookWeightQuantizer)}


@pytest.mark.parametrize("weight", [
    {"kind": "codebook", "bits": 4, "granularity": "channel"},
    {"kind": "codebook", "bits": 3, "granularity": "tensor"},
    {"kind": "codebook", "bits": 8, "granularity": "channel", "method": "kmeans_optimal"},
    {"kind": "codebook", "bits": 4, "granularity": "channel", "train_centroids": True},
], ids=["c4", "t3", "c8", "c4_trained"])
def test_exported_levels_and_scales_are_the_trained_ones(weight):
    model = _quantized_net(weight, act_bits=8, train_steps=5 if weight.get("train_centroids") else 0)
    graph = to_graph(model, **FASHION_INPUT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no accumulator cap, no other rounding
        _, tensors, _ = lower_graph(graph)
    quantizers = _weight_quantizers(model)
    by_layer = {n.name: n for n in graph.nodes if n.weight is not None}
    assert len(by_layer) == len(quantizers) == 3
    for name, q in quantizers.items():
        node = by_layer[name]
        scale, levels = assert_on_grid(q)
        m = node.weight.out_channels
        stored_levels = tensors[f"{node.name}.weight.levels"]
        stored_scale = tensors[f"{node.name}.weight.scale"]
        assert torch.equal(stored_levels.to(torch.int64), levels.reshape(-1, levels.shape[-1]))
        assert torch.equal(stored_scale, scale.reshape(-1).expand(m))
        # the stored integer weights times the stored scale are exactly the fake-quant weights
        layer = model.get_submodule(name)
        w_q = layer.weight_quant(layer.weight).detach().reshape(m, -1)
        idx = node.weight.indices.reshape(m, -1).long()
        w_int = stored_levels.to(torch.int64).expand(m, -1).gather(1, idx)
        assert torch.equal(w_q.double(), stored_scale.double()[:, None] * w_int)


def test_accumulator_bound_caps_levels_with_a_warning():
    gen = torch.Generator().manual_seed(0)
    k = 1100  # int16 input codes: K * 32767 * 64 >= 2**31, the bound allows |level| <= 59
    w = QuantWeight.from_codebook(torch.randint(0, 16, (4, k), generator=gen, dtype=torch.uint8),
                                  snap_to_grid(torch.sort(torch.randn(16, generator=gen)).values, 64))
    graph = Graph((1, 1, k), [MEAN], [STD], [
        Node("flat", "flatten", ["input"]),
        Node("fc", "linear", ["flat"], weight=w, act=QParams(1e-4, 0, -32767, 32767))])
    with pytest.warns(UserWarning, match="caps the codebook levels at 59"):
        _, tensors, _ = lower_graph(graph)
    assert int(tensors["fc.weight.levels"].abs().max()) == 59


# Integer semantics of docs/FORMAT.md sections 4-5, evaluated exactly (float64 holds every integer sum here):
# an independent check of the exported program while qcnn.load's engine interface is being rewritten.
def _rs(v: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """v / 2^shift to nearest, ties to even (docs/FORMAT.md section 2)."""
    pos = shift > 0
    half = torch.where(pos, (torch.ones_like(shift) << (shift - 1).clamp(min=0)) - 1, torch.zeros_like(shift))
    odd = torch.where(pos, (v >> shift) & 1, torch.zeros_like(v))
    return (v + half + odd) >> shift


def _decode(tensors: dict, node: dict) -> torch.Tensor:
    info, prefix = node["weight"], f"{node['name']}.weight"
    data = tensors[f"{prefix}.indices"]
    if info["coding"] == "huffman":
        flat = huffman_decode(data, tensors[f"{prefix}.code_lengths"], info["count"])
    else:
        flat = unpack_bits(data, info["bits"], info["count"])
    return flat.reshape(node["out_channels"], -1).long()


def integer_forward(doc: dict, tensors: dict, pixels: torch.Tensor) -> torch.Tensor:
    lut = tensors[doc["input"]["lut"]].long()
    values = {"input": lut[torch.arange(lut.shape[0])[None, :, None, None], pixels.long()]}
    for node in doc["nodes"]:
        x, op, name = values[node["inputs"][0]], node["op"], node["name"]
        if op in ("conv2d", "linear"):
            m, n = node["out_channels"], x.shape[0]
            levels = tensors[f"{name}.weight.levels"].long().expand(m, -1)
            w_int = levels.gather(1, _decode(tensors, node)).reshape(m, node["in_channels"], *node["kernel"])
            xi = (x.reshape(n, -1, 1, 1) if op == "linear" else x) - node["input_zero_point"]
            acc = F.conv2d(xi.double(), w_int.double(), stride=node["stride"], padding=node["padding"])
            acc = acc.round().long()
            if node["qparams"] is None:
                y = acc.float() * tensors[f"{name}.output.scale"][None, :, None, None] \
                    + tensors[f"{name}.output.bias"][None, :, None, None]
            else:
                mult = tensors[f"{name}.requant.multiplier"].long()[None, :, None, None]
                shift = tensors[f"{name}.requant.shift"].long()[None, :, None, None]
                bias = tensors[f"{name}.requant.bias"][None, :, None, None]
                y = (node["qparams"]["zero_point"] + _rs(acc * mult + bias, shift)).clamp(*node["clamp"])
            values[name] = y.reshape(n, -1) if op == "linear" else y
        elif op == "requantize":
            shift = torch.tensor(node["shift"])
            y = node["qparams"]["zero_point"] + _rs((x - node["input_zero_point"]) * node["multiplier"], shift)
            values[name] = y.clamp(*node["clamp"])
        elif op == "relu":
            values[name] = x.clamp(*node["clamp"])
        elif op == "max_pool2d":
            values[name] = F.max_pool2d(x.double(), node["kernel"], node["stride"], node["padding"]).long()
        elif op == "global_max_pool":
            values[name] = x.amax((2, 3), keepdim=True)
        elif op == "flatten":
            values[name] = x.reshape(x.shape[0], -1)
        else:
            raise NotImplementedError(f"integer_forward: op {op!r}")
    return values[doc["output"]]


def _engine_available() -> bool:
    try:
        torch.classes.qcnn.Engine  # noqa: B018
        return True
    except (RuntimeError, AttributeError):
        return False


@pytest.fixture(scope="module")
def exported_2bit(tmp_path_factory):
    """SmallNet with 4-bit per-channel trained codebooks and 2-bit activations, its .qcnn file, and
    inputs (2000 Fashion-MNIST test images, 500 random images) with the fake-quant model's logits."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed: predictions on random data are too uniform to compare")
    model = _quantized_net({"kind": "codebook", "bits": 4, "granularity": "channel", "train_centroids": True},
                           act_bits=2, train_steps=30)
    path = tmp_path_factory.mktemp("grid") / "w4a2.qcnn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qcnn.export(model, path, verbose=False, **FASHION_INPUT)
    noise = torch.randint(0, 256, (500, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    pixels = torch.cat([_data()[2], noise])
    with torch.no_grad():
        expected = model(_normalize(pixels))
    return pixels, path, expected


def _agreement(logits: torch.Tensor, expected: torch.Tensor) -> float:
    return float((logits.argmax(1) == expected.argmax(1)).float().mean())


def test_integer_program_agrees_with_the_fake_quant_model(exported_2bit):
    pixels, path, expected = exported_2bit
    assert len(expected.argmax(1).unique()) >= 5  # the predictions do vary
    doc, tensors = read_qcnn(path)
    agree = _agreement(integer_forward(doc, tensors, pixels), expected)
    assert agree >= 0.999, f"integer program agrees on {agree:.2%} of {len(pixels)} predictions"


@pytest.mark.skipif(not _engine_available(), reason="qcnn._C has no torch.classes.qcnn.Engine (rebuild pending)")
def test_engine_agrees_with_the_fake_quant_model(exported_2bit):
    pixels, path, expected = exported_2bit
    agree = _agreement(qcnn.load(path)(pixels), expected)
    assert agree >= 0.999, f"qcnn.load agrees on {agree:.2%} of {len(pixels)} predictions"
