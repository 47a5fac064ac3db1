"""Builders of export graphs for the tests: random graphs and a small trained Fashion-MNIST model
quantized post-training (independent of qcnn.nn, so the export path is tested on its own)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import qcnn
from qcnn import models
from qcnn.quantize import calibrate_activations

from qcnn.data import write_idx  # noqa: F401  (the tests import it from here)
from qcnn._ops import int_ops as _ops
from qcnn.exporter import Graph, Node, QParams, QuantWeight
from qcnn.weight_format import codebook_level_limit, snap_to_grid

FASHION = Path("/usr/share/datasets/fashion-mnist")
QCNN_INFER = Path(__file__).resolve().parents[2] / "build" / "qcnn-infer"
MEAN, STD = 0.2860, 0.3530
# What qcnn.export needs to know of a module trained on Fashion-MNIST (the model records nothing by itself).
FASHION_INPUT = {"input_shape": (1, 28, 28), "mean": [MEAN], "std": [STD]}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def decode_indices(tensors: dict, node: dict) -> torch.Tensor:
    """Weight indices [M, K] (uint8) of a conv2d / linear node of a .qcnn file, decoded with the inverses of
    the exporter's coding ops (a check of the file layout; inference reads files only through the engine)."""
    info = node["weight"]
    data = tensors[f"{node['name']}.weight.indices"]
    if info["coding"] == "huffman":
        flat = _ops.huffman_decode(data, tensors[f"{node['name']}.weight.code_lengths"], info["count"])
    else:
        flat = _ops.unpack_bits(data, info["bits"], info["count"])
    return flat.reshape(node["out_channels"], -1)


def kmeans_codebook(w: torch.Tensor, bits: int, iters: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D Lloyd k-means over all weights (linear init); returns (sorted codebook, uint8 indices)."""
    flat = w.detach().reshape(-1).double()
    k = 2 ** bits
    cb = torch.linspace(float(flat.min()), float(flat.max()), k, dtype=torch.float64)
    for _ in range(iters):
        idx = torch.argmin((flat[:, None] - cb[None]).abs(), dim=1)
        for j in range(k):
            sel = flat[idx == j]
            if sel.numel():
                cb[j] = sel.mean()
        cb = torch.sort(cb).values
    idx = torch.argmin((flat[:, None] - cb[None]).abs(), dim=1)
    return cb.float(), idx.to(torch.uint8).reshape(w.shape)


def quantize_weight(w: torch.Tensor, kind: str, bits: int, per_channel: bool = False) -> QuantWeight:
    """per_channel: one codebook per output channel (kind "codebook"; the other kinds have per-channel scales).
    Codebooks are snapped to the integer grid CodebookWeightQuantizer trains on (the exporter stores them
    as scale * level), so that the graph computes what the file does."""
    if kind == "codebook":
        fits = [kmeans_codebook(row, bits) for row in w] if per_channel else [kmeans_codebook(w, bits)]
        cbs, idxs = zip(*fits)
        codebook = snap_to_grid(torch.stack(cbs), codebook_level_limit(bits))
        return QuantWeight.from_codebook(torch.stack(idxs) if per_channel else idxs[0], codebook)
    if kind == "binary":
        alpha = w.abs().reshape(w.shape[0], -1).mean(1)
        return QuantWeight.binary(torch.where(w >= 0, 1.0, -1.0), alpha)
    if kind == "fixed":
        top = 2 ** (bits - 1) - 1
        frac = bits - 1 - int(np.ceil(np.log2(float(w.abs().max()) + 1e-12)))
        q = torch.clamp(torch.round(w * 2.0 ** frac), -top, top)
        return QuantWeight.from_integers("fixed", q, torch.tensor(2.0 ** -frac), -top, top)
    # uniform, symmetric, per channel
    top = max(1, 2 ** (bits - 1) - 1)
    scale = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-8) / top
    q = torch.clamp(torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1)))), -top, top)
    return QuantWeight.from_integers("uniform", q, scale, -top, top)


def act_qparams(x: torch.Tensor, bits: int, signed: bool = False) -> QParams:
    if signed:
        top = 2 ** (bits - 1) - 1
        return QParams(float(x.abs().max()) / top + 1e-8, 0, -top - 1, top)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / (2 ** bits - 1) + 1e-8
    return QParams(scale, int(round(-lo / scale)), 0, 2 ** bits - 1)


def random_cnn_graph(kind: str, bits: int, act_bits: int = 8, seed: int = 0, residual: bool = False,
                     avg: bool = False, per_channel: bool = False, avg_pool: bool = False) -> Graph:
    """A random conv net: conv-bn-relu, maxpool (avg_pool: 2x2 average pooling), conv(-add), pool (avg: global
    average pooling), linear. Activation quantizers are calibrated on random inputs so that the codes use their
    range."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(8, 1, 3, 3, generator=gen) * 0.4
    w2 = torch.randn(8, 8, 3, 3, generator=gen) * 0.15
    w3 = torch.randn(10, 8 * 4 * 4 if not avg else 8, generator=gen) * 0.2
    nodes = []
    x = (torch.randint(0, 256, (32, 1, 16, 16), generator=gen).float() / 255 - MEAN) / STD
    q1 = act_qparams(x, 8)
    nodes.append(Node("conv1", "conv2d", ["input"], weight=quantize_weight(w1, kind, bits, per_channel),
                      bias=torch.randn(8, generator=gen) * 0.1, act=q1, relu=True, padding=(1, 1)))
    h = F.relu(F.conv2d(q1.fake_quant(x), nodes[-1].weight.dequantize(), nodes[-1].bias, padding=1))
    nodes.append(Node("pool1", "avg_pool2d" if avg_pool else "max_pool2d", ["conv1"], kernel_size=(2, 2),
                      stride=(2, 2)))
    h = F.avg_pool2d(h, 2) if avg_pool else F.max_pool2d(h, 2)
    q2 = act_qparams(h, act_bits)
    bn_scale = torch.rand(8, generator=gen) + 0.5
    bn_shift = torch.randn(8, generator=gen) * 0.1
    nodes.append(Node("conv2", "conv2d", ["pool1"], weight=quantize_weight(w2, kind, bits, per_channel),
                      bn_scale=bn_scale, bn_shift=bn_shift, act=q2, relu=not residual, padding=(1, 1)))
    h2 = F.conv2d(q2.fake_quant(h), nodes[-1].weight.dequantize(), padding=1) * bn_scale[:, None, None] \
        + bn_shift[:, None, None]
    last = "conv2"
    if residual:
        nodes.append(Node("add", "add", ["conv2", "pool1"], relu=True))
        h2 = F.relu(h2 + h)
        last = "add"
    else:
        h2 = F.relu(h2)
    if avg:
        nodes.append(Node("gap", "global_avg_pool", [last]))
        h3 = h2.mean((2, 3), keepdim=True)
    else:
        nodes.append(Node("pool2", "max_pool2d", [last], kernel_size=(2, 2), stride=(2, 2)))
        h3 = F.max_pool2d(h2, 2)
    nodes.append(Node("flat", "flatten", [nodes[-1].name]))
    q3 = act_qparams(h3, act_bits)
    nodes.append(Node("fc", "linear", ["flat"], weight=quantize_weight(w3, kind, bits, per_channel),
                      bias=torch.randn(10, generator=gen) * 0.1, act=q3))
    return Graph((1, 16, 16), [MEAN], [STD], nodes)


def random_pixels(n: int, shape=(1, 16, 16), seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8)


# name -> (random_cnn_graph arguments, entropy coding)
MODELS = {
    "codebook_w4_channel": (dict(kind="codebook", bits=4, per_channel=True, seed=1), False),
    "codebook_w4_tensor": (dict(kind="codebook", bits=4, seed=2), False),
    "codebook_w4_huffman": (dict(kind="codebook", bits=4, seed=3), True),
    "codebook_w2": (dict(kind="codebook", bits=2, act_bits=4, seed=4), False),
    "binary_a2": (dict(kind="binary", bits=1, act_bits=2, seed=5), False),
    "binary_a1": (dict(kind="binary", bits=1, act_bits=1, seed=10), False),
    "uniform_w8": (dict(kind="uniform", bits=8, seed=6), False),
    "fixed_w6": (dict(kind="fixed", bits=6, seed=7), False),
    "residual_add_global_avg": (dict(kind="codebook", bits=4, residual=True, avg=True, seed=8), False),
    "avg_pool": (dict(kind="uniform", bits=4, avg_pool=True, seed=9), False),
}


def export_resnet(path: Path) -> None:
    """qcnn's resnet_small (28x28, stride-2 convs, residual adds), 4-bit per-channel k-means weights, 2-bit PACT
    activations and a signed 8-bit input quantizer, calibrated on random images."""
    gen = torch.Generator().manual_seed(0)
    model = models.create("resnet_small", width=8)
    qcnn.quantize_(model, {"weight": {"kind": "codebook", "bits": 4, "method": "kmeans", "granularity": "channel"},
                           "act": {"bits": 2, "method": "pact"}, "input_act": {"bits": 8, "signed": True}})
    x = Graph((1, 28, 28), [0.286], [0.353]).normalize(
        torch.randint(0, 256, (64, 1, 28, 28), generator=gen, dtype=torch.uint8))
    calibrate_activations(model, [(x, None)], 1)
    model.eval()
    with torch.no_grad():
        model(x)  # fits the weight quantizers
    qcnn.export(model, path, verbose=False, **FASHION_INPUT)


def export_model_set(directory: Path) -> Path:
    """Every model of MODELS and resnet_small exported into `directory` (NAME.qcnn)."""
    for name, (graph_args, entropy_coding) in MODELS.items():
        qcnn.export(random_cnn_graph(**graph_args), directory / f"{name}.qcnn", entropy_coding=entropy_coding,
                    verbose=False)
    export_resnet(directory / "resnet_small.qcnn")
    return directory


def run_infer(model: Path, pixels: torch.Tensor, directory: Path, *extra: str, command=(QCNN_INFER,)) -> np.ndarray:
    """The logits of qcnn-infer (`command`: the program and what runs it, e.g. qemu) on single-channel `pixels`,
    through IDX files in `directory`."""
    return run_infer_report(model, pixels, directory, *extra, command=command)[0]


def run_infer_report(model: Path, pixels: torch.Tensor, directory: Path, *extra: str, command=(QCNN_INFER,),
                     env: dict[str, str] | None = None) -> tuple[np.ndarray, dict]:
    """run_infer's logits and qcnn-infer's closing JSON line (its "isa", "images", ...), with `env` added to the
    environment."""
    images, labels, logits = directory / "images.idx", directory / "labels.idx", directory / "logits.npy"
    write_idx(images, pixels[:, 0].numpy())  # [N, H, W], magic 0x00000803
    write_idx(labels, np.zeros(len(pixels), np.uint8))  # [N], magic 0x00000801
    res = subprocess.run([*map(str, command), str(model), "--images", str(images), "--labels", str(labels),
                          "--logits", str(logits), *extra], capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["images"] == len(pixels)
    return np.load(logits), report


def run_embed_example(command: tuple, model: Path, pixels: torch.Tensor, directory: Path, threads: int) -> np.ndarray:
    """The logits of the embedding example (tests/c_api/run_model.c: the C interface from C99, the model loaded from
    memory) run by `command` (the program and what runs it, e.g. qemu), through raw files in `directory`."""
    (directory / "images.raw").write_bytes(pixels.numpy().tobytes())
    res = subprocess.run([*map(str, command), str(model), str(directory / "images.raw"), str(directory / "logits.raw"),
                          str(threads)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    n = pixels.shape[0]
    assert res.stdout.startswith(f"{n} images, ")
    return np.fromfile(directory / "logits.raw", dtype=np.float32).reshape(n, -1)
