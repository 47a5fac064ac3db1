"""onnxruntime on qcnn's ONNX export against onnxruntime on its own static-QDQ int8 model of the same float net.

Nets: the demo net (make demo's float baseline, VGGSmall on Fashion-MNIST, 1x28x28), quantized post-training as
bench_engine.py does it (demo-W4: 4-bit k-means codebooks, demo-W8: 8-bit uniform, demo-binary-A2: binary weights
with 2-bit activations), and the torchvision nets of bench_torchvision.py (random weights, BatchNorm statistics from
random images, qcnn W8A8, 3x224x224).
- onnxruntime int8 (the anchor): the float net (its normalisation in the graph) exported to fp32 ONNX and quantized by
  onnxruntime's quantize_static (QDQ, per channel, QUInt8 activations, QInt8 weights, MinMax) on the calibration
  images of the qcnn model (bench_engine.quantize_onnx_int8);
- qcnn onnx: qcnn.exporter.onnx_export.export_onnx of the qcnn model, calibrated on the same images (the values that
  qcnn keeps wider than 8 bits get 8-bit grids, so that every layer fuses); with --exact also the export without
  calibration (those values stay float, their producers on float kernels). Its input is the normalised image,
  computed from the pixels inside each timed call.
Both run in onnxruntime's default session (all graph optimizations), intra_op_num_threads = t.

Rows: ms per image, the best of --repeats passes after a warm-up pass (bench_torchvision.measure), each pass running
16 single images (batch 1) or 8 batches of 8 (batch 8), at 1 and 2 threads; ratio = anchor_s / qcnn_s (above 1:
qcnn's ONNX is faster). agreement: share of top-1 predictions of qcnn's ONNX equal to qcnn.load's (the integer
engine, the same .qcnn model) on the agreement images (the demo net: the first 2000 Fashion-MNIST test images; the
torchvision nets: the timed batch-8 images); anchor_agreement: the same for onnxruntime's own int8 model.
float_layers / layers: Conv, Gemm and MatMul nodes of the optimized graph that onnxruntime's default session left on
float kernels, against the Conv and Gemm nodes of qcnn's ONNX. Timings mean something only on a quiet machine.

  python benchmarks/bench_onnx.py [--nets demo-W4 resnet18 ...] [--repeats N] [--exact] [--json PATH]
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import qcnn
from bench_engine import (SCHEMES, baseline_dir, calibration_set, load_float, ort_runner, quantize_onnx_int8,
                          quantize_post_training)
from bench_engine import PixelNet as DemoPixelNet, export_onnx_fp32 as demo_onnx_fp32
from bench_torchvision import (BATCHES, BN_PASSES, CALIB_IMAGES, IMAGENET_MEAN, IMAGENET_STD, INPUT_SHAPE, NETS, SEED,
                               THREADS, PixelNet, export_onnx_fp32, float_net, measure, pixels, quantize_w8a8)
from common import cpu_flags, parser, report, row
from qcnn import data
from qcnn.exporter import to_graph
from qcnn.exporter.onnx_export import export_onnx

DEMO_NETS = tuple(f"demo-{scheme}" for scheme in SCHEMES)
ANCHOR = "onnxruntime int8"
PER_PASS = {1: 16, 8: 8}  # batches per timed pass
AGREEMENT_IMAGES = 2000
DEMO_CALIB_IMAGES = 256  # of bench_engine's 512 calibration images: what qcnn's ONNX export calibrates on
FLOAT_LAYER_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


@dataclass
class Net:
    """One net as both exports see it."""
    name: str
    quantized: nn.Module          # the qcnn model
    graph_options: dict           # input_shape, mean, std for qcnn.export / to_graph
    calib: torch.Tensor           # uint8 calibration pixels of both quantizations
    ort_int8: Path                # onnxruntime's own int8 model (input "pixels")
    timed: dict                   # batch -> list of uint8 pixel batches
    agreement_pixels: torch.Tensor


def demo_nets(names: list[str], tmp: Path) -> list[Net]:
    float_model, cfg = load_float(baseline_dir(False, tmp))
    calib = calibration_set(cfg)
    calib_pixels = calib[0].unsqueeze(1)
    fp32 = demo_onnx_fp32(DemoPixelNet(float_model).eval(), tmp / "demo.fp32.onnx")
    int8 = quantize_onnx_int8(fp32, tmp / "demo.int8.onnx", calib_pixels)
    images, _ = data.load_fashion_mnist(cfg.data.path, "test")
    images = images[:AGREEMENT_IMAGES].unsqueeze(1)
    timed = {b: list(images[:b * PER_PASS[b]].split(b)) for b in BATCHES}
    options = dict(input_shape=(1, 28, 28), mean=[data.FASHION_MEAN], std=[data.FASHION_STD])
    return [Net(name, quantize_post_training(float_model, SCHEMES[name.removeprefix("demo-")](), calib), options,
                calib_pixels[:DEMO_CALIB_IMAGES], int8, timed, images) for name in names]


def nets(names: list[str], tmp: Path):
    """The Nets named, the demo ones first (built together: they share onnxruntime's model), the others one by one."""
    demo = [name for name in names if name in DEMO_NETS]
    yield from demo_nets(demo, tmp) if demo else []
    for name in names:
        if name in NETS:
            yield torchvision_net(name, tmp)


def torchvision_net(name: str, tmp: Path) -> Net:
    model = float_net(name, BN_PASSES)
    g = torch.Generator().manual_seed(SEED + 2)
    calib = pixels(CALIB_IMAGES, g)
    fp32 = export_onnx_fp32(PixelNet(model).eval(), tmp / f"{name}.fp32.onnx")
    int8 = quantize_onnx_int8(fp32, tmp / f"{name}.int8.onnx", calib)
    timed = {b: list(pixels(b * PER_PASS[b], g).split(b)) for b in BATCHES}
    options = dict(input_shape=INPUT_SHAPE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return Net(name, quantize_w8a8(model, calib), options, calib, int8, timed, torch.cat(timed[8]))


def float_layers(path: Path) -> tuple[int, int]:
    """(the Conv / Gemm / MatMul nodes that onnxruntime's default session leaves on float kernels, the Conv and Gemm
    nodes of the file)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3  # its notice that an NCHWc-optimized model is specific to this machine
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    layers = sum(n.op_type in ("Conv", "Gemm") for n in onnx.load(str(path)).graph.node)
    return sum(n.op_type in FLOAT_LAYER_OPS for n in optimized.graph.node), layers


def qcnn_onnx_runner(path: Path, graph, threads: int):
    """onnxruntime on qcnn's ONNX: uint8 pixels in, normalised as Graph.normalize does inside the timed call, in
    NumPy (torch's thread pool would compete with onnxruntime's)."""
    run, _ = ort_runner(path, threads, input_name="input")
    mean = np.asarray(graph.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(graph.std, dtype=np.float32)[:, None, None]
    return (lambda px: run((px.astype(np.float32) / np.float32(255) - mean) / std)), (lambda t: t.numpy())


def predictions(run, native, px: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(run(native(chunk)))).argmax(1) for chunk in px.split(256)])


def bench_net(net: Net, exports: list[str], repeats: int, tmp: Path) -> tuple[list[dict], list[dict]]:
    graph = to_graph(net.quantized, **net.graph_options)
    qfile = tmp / f"{net.name}.qcnn"
    qcnn.export(graph, qfile, verbose=False)
    engine = qcnn.load(qfile).eval()
    reference = predictions(engine, lambda t: t, net.agreement_pixels)
    anchor_agreement = float((predictions(*ort_runner(net.ort_int8, 2), net.agreement_pixels) == reference)
                             .float().mean())
    rows, summary = [], []
    for export in exports:
        path = export_onnx(graph, tmp / f"{net.name}.{export}.onnx",
                           calibration=net.calib if export == "calibrated" else None)
        agreement = float((predictions(*qcnn_onnx_runner(path, graph, 2), net.agreement_pixels) == reference)
                          .float().mean())
        n_float, layers = float_layers(path)
        ratios = {}
        for t in THREADS:
            for b in BATCHES:
                s, _ = measure(*qcnn_onnx_runner(path, graph, t), net.timed[b], repeats)
                anchor_s, _ = measure(*ort_runner(net.ort_int8, t), net.timed[b], repeats)
                ratios[f"b{b} t{t}"] = anchor_s / s
                rows.append(row(f"{net.name} {export} b{b} t{t}", s, ANCHOR, anchor_s, qcnn_ms=1e3 * s,
                                anchor_ms=1e3 * anchor_s, agreement=agreement, anchor_agreement=anchor_agreement,
                                float_layers=n_float, layers=layers, net=net.name, export=export, batch=b,
                                threads=t))
        geomean = math.exp(sum(map(math.log, ratios.values())) / len(ratios))
        summary.append({"net": net.name, "export": export, **ratios, "geomean": geomean, "agreement": agreement,
                        "anchor_agreement": anchor_agreement, "float_layers": n_float, "layers": layers})
    return rows, summary


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(repeats=3)
    p._option_string_actions["--repeats"].help = "timed passes per case (the best is reported; default 3)"
    choices = DEMO_NETS + NETS
    p.add_argument("--nets", nargs="+", choices=choices, default=list(choices),
                   help=f"a subset of {', '.join(choices)} (default: all)")
    p.add_argument("--exact", action="store_true", help="also measure the export without calibration")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("bench_onnx: --repeats must be >= 1")
    try:
        import onnxruntime
        import torchvision  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"bench_onnx needs onnxruntime and torchvision ({err})") from None
    exports = ["calibrated"] + (["exact"] if args.exact else [])
    load_at_start = os.getloadavg()  # the ratios hold only on a quiet machine
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp_name, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime's quantizer's advice to pre-process, torch.onnx's notices
        for net in nets(args.nets, Path(tmp_name)):
            print(f"{net.name} ...", flush=True)
            net_rows, net_summary = bench_net(net, exports, args.repeats, Path(tmp_name))
            rows += net_rows
            summary += net_summary
    settings = {"nets": args.nets, "exports": exports, "batches": list(BATCHES), "threads": list(THREADS),
                "repeats": args.repeats, "agreement_images": AGREEMENT_IMAGES, "onnxruntime": onnxruntime.__version__,
                "cpu_flags": cpu_flags(), "load_average_at_start": load_at_start,
                "load_average_at_end": os.getloadavg()}
    report("onnx", rows, args.json, {"summary": summary, "settings": settings})
    print(f"load average at start {load_at_start}, at end {settings['load_average_at_end']}")


if __name__ == "__main__":
    main()
