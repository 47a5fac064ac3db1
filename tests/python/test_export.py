"""Export / load round trips, integer runtime agreement (qcnn.load and build/qcnn-infer), file size."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.exporter import Graph, Node, QParams, lower_graph, read_qcnn, reference_forward, write_qcnn

from export_helpers import (FASHION, MEAN, STD, act_qparams, decode_indices, quantize_weight, random_cnn_graph,
                            random_pixels, read_idx, write_idx)

ROOT = Path(__file__).resolve().parents[2]
QCNN_INFER = ROOT / "build" / "qcnn-infer"

KINDS_BITS = [("binary", 1)] + [("codebook", b) for b in (1, 2, 3, 4, 5, 6, 7, 8)] + \
             [("uniform", b) for b in (2, 4, 8)] + [("fixed", b) for b in (3, 6)]


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(1) == b.argmax(1)).float().mean().item()


@pytest.mark.parametrize("kind,bits", KINDS_BITS)
def test_round_trip_matches_reference(tmp_path, kind, bits):
    graph = random_cnn_graph(kind, bits, act_bits=4 if bits < 4 else 8, seed=bits)
    path = tmp_path / "m.qcnn"
    qcnn.export(graph, path, verbose=False)
    doc, tensors = read_qcnn(path)
    for node in doc["nodes"]:
        if node["op"] in ("conv2d", "linear"):
            assert node["weight"]["bits"] == bits and node["weight"]["kind"] == kind
    model = qcnn.load(path)
    px = random_pixels(256)
    ref = reference_forward(graph, graph.normalize(px))
    out = model(px)
    # Integer rounding differs from float rounding only on ties / one code step somewhere.
    assert agreement(out, ref) >= 0.98
    scale = ref.abs().max().item()
    assert (out - ref).abs().median().item() <= 0.02 * scale


def test_indices_round_trip_exactly(tmp_path):
    for kind, bits in KINDS_BITS:
        graph = random_cnn_graph(kind, bits, seed=3)
        for coding in (False, True):
            doc, tensors, _ = lower_graph(graph, entropy_coding=coding)
            path = tmp_path / f"{kind}{bits}{coding}.qcnn"
            write_qcnn(path, doc, tensors)
            doc2, tensors2 = read_qcnn(path)
            for node, gnode in zip([n for n in doc2["nodes"] if n["op"] in ("conv2d", "linear")],
                                   [n for n in graph.nodes if n.weight is not None]):
                idx = decode_indices(tensors2, node)
                assert torch.equal(idx.reshape(-1), gnode.weight.indices.reshape(-1))


def test_residual_avgpool_and_requantize_nodes(tmp_path):
    graph = random_cnn_graph("codebook", 4, seed=11, residual=True, avg=True)
    path = tmp_path / "res.qcnn"
    qcnn.export(graph, path, verbose=False)
    doc, _ = read_qcnn(path)
    ops = [n["op"] for n in doc["nodes"]]
    assert "add" in ops and "requantize" in ops and "global_avg_pool" in ops
    px = random_pixels(256, seed=5)
    ref = reference_forward(graph, graph.normalize(px))
    out = qcnn.load(path)(px)
    assert agreement(out, ref) >= 0.98
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())


def test_entropy_coding_shrinks_peaked_indices(tmp_path):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, 3, 3, generator=gen) * 0.1   # Gaussian weights: central centroids dominate
    nodes = [Node("flat", "flatten", ["input"]),
             Node("fc", "linear", ["flat"], weight=quantize_weight(w.reshape(64, -1)[:, :256], "codebook", 5),
                  act=QParams(0.02, 0, 0, 255))]
    graph = Graph((1, 16, 16), [MEAN], [STD], nodes)
    plain = qcnn.export(graph, tmp_path / "p.qcnn", verbose=False)
    coded = qcnn.export(graph, tmp_path / "h.qcnn", entropy_coding=True, verbose=False)
    assert coded.huffman_index_bytes < plain.packed_index_bytes
    assert coded.file_bytes < plain.file_bytes
    px = random_pixels(16)
    assert torch.equal(qcnn.load(tmp_path / "p.qcnn")(px), qcnn.load(tmp_path / "h.qcnn")(px))


def test_size_ratio_of_a_4bit_model(tmp_path):
    gen = torch.Generator().manual_seed(0)
    nodes, c_in = [], 1
    # Per output channel the file holds ~17 bytes besides the indices (multiplier, shift, bias, scale),
    # so the ratio approaches 8x only when K = C*kh*kw is large: a VGG-style stack.
    for i, c_out in enumerate([64, 128, 128, 128, 128]):
        w = torch.randn(c_out, c_in, 3, 3, generator=gen) * 0.1
        nodes.append(Node(f"conv{i}", "conv2d", [nodes[-1].name if nodes else "input"],
                          weight=quantize_weight(w, "uniform", 4), bias=torch.zeros(c_out),
                          bn_scale=torch.ones(c_out), bn_shift=torch.zeros(c_out),
                          act=QParams(0.05, 0, 0, 255), relu=True, padding=(1, 1)))
        c_in = c_out
    nodes += [Node("gmp", "global_max_pool", [nodes[-1].name]), Node("flat", "flatten", ["gmp"]),
              Node("fc", "linear", ["flat"], weight=quantize_weight(torch.randn(10, 128, generator=gen), "uniform", 4),
                   bias=torch.zeros(10), act=QParams(0.05, 0, 0, 255))]
    graph = Graph((1, 16, 16), [MEAN], [STD], nodes)
    report = qcnn.export(graph, tmp_path / "m.qcnn", verbose=False)
    assert report.file_bytes == (tmp_path / "m.qcnn").stat().st_size
    assert report.ratio >= 7.5, str(report)
    assert f"{report.ratio:.2f}x smaller than float32" in str(report)


def test_report_says_larger_when_the_file_outgrows_float32(tmp_path):
    """A 3-weight net: the header and per-channel tables outweigh 12 float32 bytes, and the report says so."""
    w = torch.tensor([[[[0.5]]], [[[-0.25]]], [[[0.125]]]])
    graph = Graph((1, 4, 4), [MEAN], [STD], [
        Node("conv", "conv2d", ["input"], weight=quantize_weight(w, "uniform", 4), bias=None,
             bn_scale=torch.ones(3), bn_shift=torch.zeros(3), act=QParams(0.05, 0, 0, 255))])
    report = qcnn.export(graph, tmp_path / "tiny.qcnn", verbose=False)
    assert report.ratio < 1
    assert f"{report.file_bytes / report.float32_bytes:.2f}x larger than float32" in str(report)
    assert "smaller" not in str(report)


def test_per_channel_codebook_stores_int16_levels_and_scale_only(tmp_path):
    """Every kind stores levels I16 [G, k] and scale F32 [M] (real weight = scale[m] * levels[g(m), i]) and
    no float codebook: a per-channel 4-bit layer's tables take 2*M*16 + 4*M bytes, not 8*M*16 as with
    the former I32 levels + F32 codebook."""
    graph = random_cnn_graph("codebook", 4, seed=7, per_channel=True)
    path = tmp_path / "pc.qcnn"
    report = qcnn.export(graph, path, verbose=False)
    doc, tensors = read_qcnn(path)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    table_bytes = old_table_bytes = 0
    for gnode in (n for n in graph.nodes if n.weight is not None):
        w, m, prefix = gnode.weight, gnode.weight.out_channels, f"{gnode.name}.weight"
        assert w.groups == m and w.codes == 16
        assert {n for n in tensors if n.startswith(prefix)} == {f"{prefix}.{t}" for t in ("indices", "levels", "scale")}
        levels, scale = tensors[f"{prefix}.levels"], tensors[f"{prefix}.scale"]
        assert levels.dtype == torch.int16 and tuple(levels.shape) == (m, 16)
        assert scale.dtype == torch.float32 and tuple(scale.shape) == (m,)
        step = scale.double()[:, None]
        assert ((step * levels.double() - w.codebook.double()).abs() <= 0.51 * step).all()
        assert nbytes(levels) + nbytes(scale) == 2 * m * 16 + 4 * m
        table_bytes += nbytes(levels) + nbytes(scale)
        old_table_bytes += 8 * m * 16
    header_bytes = int.from_bytes(path.read_bytes()[:8], "little")
    assert report.file_bytes == 8 + header_bytes + sum(nbytes(t) for t in tensors.values())
    assert old_table_bytes - table_bytes == sum(6 * 16 * n.weight.out_channels - 4 * n.weight.out_channels
                                                for n in graph.nodes if n.weight is not None)
    px = random_pixels(256, seed=2)
    ref = reference_forward(graph, graph.normalize(px))
    assert agreement(qcnn.load(path)(px), ref) >= 0.98


@pytest.mark.parametrize("case,message", [
    ("levels I32", "tensor 'conv2.weight.levels' has dtype I32, expected I16"),
    ("levels shape", "tensor 'conv2.weight.levels' has shape [1, 16], expected [1, 15]"),
    ("level -32768", "tensor 'conv2.weight.levels': entries must be within +-32767"),
    ("scale missing", "tensor 'conv2.weight.scale' is missing"),
    ("scale F64", "tensor 'conv2.weight.scale' has dtype F64, expected F32"),
    ("scale shape", "tensor 'conv2.weight.scale' has shape [1], expected [8]"),
])
def test_load_rejects_bad_weight_tables(tmp_path, case, message):
    doc, tensors, _ = lower_graph(random_cnn_graph("uniform", 4, seed=4))
    levels, scale = tensors["conv2.weight.levels"], tensors["conv2.weight.scale"]
    if case == "levels I32":
        tensors["conv2.weight.levels"] = levels.to(torch.int32)
    elif case == "levels shape":
        tensors["conv2.weight.levels"] = torch.cat([levels, levels[:, :1]], 1)
    elif case == "level -32768":
        tensors["conv2.weight.levels"][0, 0] = -32768
    elif case == "scale missing":
        del tensors["conv2.weight.scale"]
    elif case == "scale F64":
        tensors["conv2.weight.scale"] = scale.double()
    else:
        tensors["conv2.weight.scale"] = scale[:1]
    path = tmp_path / "bad.qcnn"
    write_qcnn(path, doc, tensors)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        qcnn.load(path)


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'missing.qcnn'}: cannot open")):
        qcnn.load(tmp_path / "missing.qcnn")
    bad = tmp_path / "bad.qcnn"
    bad.write_bytes(len(b"{not json}").to_bytes(8, "little") + b"{not json}")
    with pytest.raises(ValueError, match=re.escape(f"{bad}: ") + ".*JSON"):
        qcnn.load(bad)
    graph = random_cnn_graph("codebook", 3)
    good = tmp_path / "good.qcnn"
    qcnn.export(graph, good, verbose=False)
    data = good.read_bytes()
    (tmp_path / "cut.qcnn").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'cut.qcnn'}: ")):
        qcnn.load(tmp_path / "cut.qcnn")
    with pytest.raises(TypeError, match="weight_path"):  # the engine has one weight path
        qcnn.load(good, weight_path="dense")
    loaded = qcnn.load(good)
    with pytest.raises(ValueError, match="pixels must be uint8"):
        loaded(torch.zeros(1, 1, 16, 16))
    for not_pixels in ([[0, 1]], "image.png", None):
        with pytest.raises(TypeError, match="pixels must be a uint8 torch.Tensor or NumPy array"):
            loaded(not_pixels)
    pixels = torch.randint(0, 256, (3, *graph.input_shape), dtype=torch.uint8)
    strided = np.repeat(pixels.numpy(), 2, axis=0)[::2]  # not contiguous
    assert torch.equal(loaded(strided), loaded(pixels))
    checked = qcnn.load(good, count_overflows=True)
    assert checked.count_overflows(pixels.numpy()) == checked.count_overflows(pixels)


def test_graph_validation_errors():
    with pytest.raises(ValueError, match="zero_point"):
        QParams(0.1, 300, 0, 255)
    with pytest.raises(ValueError, match="op must be one of"):
        Node("x", "softmax", ["input"])
    graph = random_cnn_graph("codebook", 2)
    graph.nodes[0].act = None
    with pytest.raises(ValueError, match="conv1.*no input quantizer"):
        lower_graph(graph)


# --- a trained model: agreement with the fake-quant torch model ------------------------------------

class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(torch.flatten(x, 1))


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed")
    torch.manual_seed(0)
    images = torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:12000].copy())[:, None]
    labels = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:12000].astype(np.int64))
    norm = lambda px: (px.float() / 255 - MEAN) / STD  # noqa: E731
    net = SmallNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for start in range(0, 12000, 100):
        opt.zero_grad()
        F.cross_entropy(net(norm(images[start:start + 100])), labels[start:start + 100]).backward()
        opt.step()
    net.eval()
    calib = norm(images[:500])
    with torch.no_grad():
        h1 = F.max_pool2d(F.relu(net.bn1(net.conv1(calib))), 2)
        h2 = torch.flatten(F.max_pool2d(F.relu(net.bn2(net.conv2(h1))), 2), 1)
    s1, b1 = bn_affine(net.bn1)
    s2, b2 = bn_affine(net.bn2)
    graph = Graph((1, 28, 28), [MEAN], [STD], [
        Node("conv1", "conv2d", ["input"], weight=quantize_weight(net.conv1.weight, "codebook", 4),
             bias=net.conv1.bias.detach(), bn_scale=s1, bn_shift=b1, act=act_qparams(calib, 8), relu=True,
             padding=(1, 1)),
        Node("pool1", "max_pool2d", ["conv1"], kernel_size=(2, 2), stride=(2, 2)),
        Node("conv2", "conv2d", ["pool1"], weight=quantize_weight(net.conv2.weight, "codebook", 4),
             bias=net.conv2.bias.detach(), bn_scale=s2, bn_shift=b2, act=act_qparams(h1, 4), relu=True,
             padding=(1, 1)),
        Node("pool2", "max_pool2d", ["conv2"], kernel_size=(2, 2), stride=(2, 2)),
        Node("flat", "flatten", ["pool2"]),
        Node("fc", "linear", ["flat"], weight=quantize_weight(net.fc.weight, "codebook", 4),
             bias=net.fc.bias.detach(), act=act_qparams(h2, 4)),
    ])
    out = tmp_path_factory.mktemp("trained")
    path = out / "net.qcnn"
    report = qcnn.export(graph, path, entropy_coding=True, verbose=False)
    test_px = torch.from_numpy(read_idx(FASHION / "t10k-images-idx3-ubyte.gz")[:2000].copy())[:, None]
    test_labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")[:2000]
    with torch.no_grad():
        ref = reference_forward(graph, graph.normalize(test_px))
    return dict(graph=graph, path=path, report=report, px=test_px, labels=test_labels, ref=ref, dir=out)


@pytest.mark.slow


def test_trained_model_agreement_python(trained):
    acc_ref = (trained["ref"].argmax(1).numpy() == trained["labels"]).mean()
    assert acc_ref > 0.75  # the model did learn
    out = qcnn.load(trained["path"])(trained["px"])
    assert agreement(out, trained["ref"]) >= 0.995


@pytest.mark.skipif(not QCNN_INFER.exists(), reason="build/qcnn-infer not built (run the CMake build first)")
def test_trained_model_agreement_qcnn_infer(trained):
    d = trained["dir"]
    ref_pred = trained["ref"].argmax(1).numpy().astype(np.uint8)
    write_idx(d / "images.gz", trained["px"][:, 0].numpy())
    write_idx(d / "ref-labels", ref_pred)  # labels = the fake-quant model's predictions: accuracy = agreement
    res = subprocess.run([str(QCNN_INFER), str(trained["path"]), "--images", str(d / "images.gz"),
                          "--labels", str(d / "ref-labels"), "--batch", "100", "--threads", "2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert line["images"] == 2000
    assert line["accuracy"] >= 0.995


@pytest.mark.skipif(not QCNN_INFER.exists(), reason="build/qcnn-infer not built")
def test_qcnn_infer_errors(tmp_path, trained):
    cut = tmp_path / "cut.qcnn"
    data = trained["path"].read_bytes()
    cut.write_bytes(data[:-10])
    write_idx(tmp_path / "l", np.zeros(3, np.uint8))
    write_idx(tmp_path / "i", np.zeros((3, 28, 28), np.uint8))
    res = subprocess.run([str(QCNN_INFER), str(cut), "--images", str(tmp_path / "i"), "--labels", str(tmp_path / "l")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "data section" in res.stderr
    res = subprocess.run([str(QCNN_INFER), str(trained["path"]), "--images", str(tmp_path / "l"),
                          "--labels", str(tmp_path / "l")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "pixels" in res.stderr
    res = subprocess.run([str(QCNN_INFER), str(trained["path"]), "--batch", "0"], capture_output=True, text=True)
    assert res.returncode == 1


def test_trained_model_size(trained):
    report = trained["report"]
    assert report.huffman_index_bytes < report.packed_index_bytes
    assert report.ratio >= 5.0  # tiny model: per-layer metadata weighs more


@pytest.mark.parametrize("pruned", ["one channel", "every channel"])
def test_a_pruned_output_channel_keeps_its_bias_in_the_engine(tmp_path, pruned):
    """All-zero weights give a channel the weight scale FLT_MIN: its requantization took the largest shift, the
    bias no longer fitted beside it and the engine output 0 where the model outputs its bias."""
    from qcnn.quantize import calibrate_activations
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        rows = [3] if pruned == "one channel" else list(range(16))
        m[2].weight[rows] = 0.0
        m[2].bias[rows] = 0.5
    qcnn.quantize_(m, {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}})
    px = torch.randint(0, 256, (64, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = (px.float() / 255 - MEAN) / STD
    calibrate_activations(m, [x], 1)
    qcnn.export(m, tmp_path / "p.qcnn", input_shape=(1, 28, 28), mean=[MEAN], std=[STD], verbose=False)
    with torch.no_grad():
        ref = m(x)
    out = qcnn.load(tmp_path / "p.qcnn")(px)
    assert (out - ref).abs().max() <= 1e-5 * (ref.max() - ref.min())
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_export_to_a_path_it_cannot_write_names_the_path(tmp_path):
    graph = random_cnn_graph("codebook", 4, seed=7)
    with pytest.raises(FileNotFoundError, match=r"the directory of '.*nodir/x.qcnn' does not exist"):
        qcnn.export(graph, tmp_path / "nodir" / "x.qcnn", verbose=False)
    for path in (tmp_path, ""):
        with pytest.raises(IsADirectoryError, match="is a directory, not a file path"):
            qcnn.export(graph, path, verbose=False)
