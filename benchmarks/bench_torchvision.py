"""The engine on torchvision networks: the deployed MobileNetV2 and ResNet-18 runs of docs/RESULTS.md against
onnxruntime int8 and fp32 and torch fp32 on their float baselines, and onnxruntime on qcnn's own ONNX export.

For each run (default: tv_mobilenetv2_w4, tv_resnet18_w4; make them with training/retrain.py and
training/deploy.py, which write runs/<name>/model.qcnn and model.onnx), on the same uint8 test images:
- qcnn.load(model.qcnn): the integer engine (depthwise convs, ReLU6 clamps, residual adds, global pooling and
  the classifier all on integer codes);
- onnxruntime int8: the float baseline (runs/<its baseline>/model.pt) exported to ONNX and quantized by
  onnxruntime's own static QDQ quantization (per channel, calibrated on 512 training images), which its default
  session runs on its int8 kernels; onnxruntime fp32 and torch fp32 eager run the same float baseline;
- onnxruntime on qcnn's ONNX export (model.onnx, the same quantized model as the .qcnn file): its default session
  does not fuse that graph into int8 kernels (each conv's bias is an Add after it and ReLU6 a Clip before the
  QuantizeLinear, outside the DequantizeLinear -> Conv -> QuantizeLinear pattern it fuses), so it runs float
  convs between QuantizeLinear / DequantizeLinear pairs: what a user deploying that file gets.

Rows: seconds per image at batch 256 over the first --images test images, 1 and 2 threads; ratio = anchor_s /
qcnn_s (above 1: qcnn is faster). The op table: qcnn.load's profile at 1 thread (images one after another),
the time of each kind of node (convs by the kernel the engine chose) summed over the net, its share, and the
G MACs/s of the conv kernels.

  python benchmarks/bench_torchvision.py [--runs tv_mobilenetv2_w4 ...] [--images N] [--repeats N] [--json PATH]
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from bench_engine import (BATCH, THREADS, PixelNet, calibration_set, export_onnx_fp32, load_float,
                          measure_inprocess, ort_runner, qcnn_load_runner, quantize_onnx_int8, torch_runner)
from common import parser, report, row
from qcnn import config as qconfig, data
from qcnn.export import Graph

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = ("tv_mobilenetv2_w4", "tv_resnet18_w4")
PROFILE_IMAGES = 64
ORT_INT8, ORT_FP32, TORCH_FP32 = "onnxruntime int8", "onnxruntime fp32", "torch fp32"
ORT_QCNN_ONNX = "onnxruntime on qcnn's ONNX"


def run_files(runs_dir: Path, name: str) -> tuple[Path, Path, Path, qconfig.RunConfig]:
    """(model.qcnn, model.onnx, the baseline's run directory, the run's config) of a deployed run."""
    run_dir = runs_dir / name
    cfg = qconfig.load(run_dir / "config.yaml")
    qcnn_file, onnx_file = run_dir / "model.qcnn", run_dir / "model.onnx"
    for path in (qcnn_file, onnx_file):
        if not path.is_file():
            raise SystemExit(f"bench_torchvision: {path} not found; run python training/deploy.py --run {run_dir}")
    if not cfg.baseline:
        raise SystemExit(f"bench_torchvision: {run_dir / 'config.yaml'} names no float baseline")
    baseline_dir = Path(cfg.baseline).parent
    return qcnn_file, onnx_file, baseline_dir if baseline_dir.is_absolute() else ROOT / baseline_dir, cfg


def op_table(name: str, model, pixels: torch.Tensor) -> list[dict]:
    """qcnn.load's profile grouped by node kind (conv2d / linear by kernel)."""
    seconds, macs, nodes = defaultdict(float), defaultdict(int), defaultdict(int)
    for layer in model.profile(pixels):
        kind = f"{layer.op} ({layer.kernel})" if layer.kernel else layer.op
        seconds[kind] += layer.seconds
        macs[kind] += layer.macs_per_image
        nodes[kind] += 1
    total = sum(seconds.values())
    rows = []
    for kind in sorted(seconds, key=seconds.get, reverse=True):
        per_image = seconds[kind] / pixels.shape[0]
        rows.append({"net": name, "node kind": kind, "nodes": nodes[kind], "us per image": 1e6 * per_image,
                     "share %": 100.0 * seconds[kind] / total,
                     "G MACs/s": macs[kind] / per_image / 1e9 if macs[kind] else "-"})
    return rows


def bench_run(runs_dir: Path, name: str, images: torch.Tensor, labels: torch.Tensor, repeats: int, tmp: Path):
    qcnn_file, onnx_file, baseline_dir, cfg = run_files(runs_dir, name)
    spec = data.FASHION_MNIST_INPUT
    graph = Graph(spec.shape, list(spec.mean), list(spec.std))
    float_model, _ = load_float(baseline_dir)
    net = PixelNet(float_model).eval()
    fp32_onnx = export_onnx_fp32(net, tmp / f"{name}.fp32.onnx")
    int8_onnx = quantize_onnx_int8(fp32_onnx, tmp / f"{name}.int8.onnx", calibration_set(cfg)[0].unsqueeze(1))
    rows, ops = [], []
    for threads in THREADS:
        torch.set_num_threads(threads)
        model, native, isa = qcnn_load_runner(qcnn_file, threads, None)
        ours = measure_inprocess(model, native, images, labels, BATCH, repeats)
        anchors = {
            ORT_INT8: measure_inprocess(*ort_runner(int8_onnx, threads), images, labels, BATCH, repeats),
            ORT_FP32: measure_inprocess(*ort_runner(fp32_onnx, threads), images, labels, BATCH, repeats),
            TORCH_FP32: measure_inprocess(*torch_runner(net), images, labels, BATCH, repeats),
            ORT_QCNN_ONNX: measure_inprocess(ort_runner(onnx_file, threads, input_name="input")[0],
                                             lambda t: graph.normalize(t).numpy(), images, labels, BATCH, repeats),
        }
        for anchor, result in anchors.items():
            rows.append(row(f"{name} batch {BATCH} t{threads}", ours["s_per_image"], anchor, result["s_per_image"],
                            threads=threads, isa=isa, **{"qcnn acc %": ours["acc"], "anchor acc %": result["acc"]}))
        if threads == 1:
            ops = op_table(name, model, images[:PROFILE_IMAGES])
    return rows, ops, {"model": {"name": cfg.model.name, **cfg.model.kwargs}, "baseline": str(baseline_dir)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="deployed runs under --runs-dir")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    p.add_argument("--images", type=int, default=1024, help="test images per timed pass")
    args = p.parse_args()
    if args.images < 1 or args.repeats < 1:
        raise SystemExit("bench_torchvision: --images and --repeats must be >= 1")
    load_at_start = os.getloadavg()  # the ratios hold only on a quiet machine
    images, labels = data.load_fashion_mnist(split="test")
    images, labels = images[:args.images].unsqueeze(1), labels[:args.images]
    rows, ops, nets = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench_torchvision_") as tmp:
        for name in tqdm(args.runs, desc="nets"):
            run_rows, run_ops, nets[name] = bench_run(args.runs_dir, name, images, labels, args.repeats, Path(tmp))
            rows += run_rows
            ops += run_ops
    settings = {"test_images": args.images, "batch": BATCH, "threads": list(THREADS), "repeats": args.repeats,
                "profile_images": PROFILE_IMAGES, "nets": nets, "load_average_at_start": load_at_start,
                "load_average_at_end": os.getloadavg()}
    report("torchvision", rows, args.json, {"ops": ops, "settings": settings})


if __name__ == "__main__":
    main()
