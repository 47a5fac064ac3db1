"""The integer engine on five torchvision nets at 3x224x224 against onnxruntime int8 and fp32, torch fp32, OpenVINO.

Nets: torchvision resnet18, resnet50, mobilenet_v2, mobilenet_v3_large, efficientnet_b0 (weights=None, 1000 classes),
randomly initialised with a fixed seed; their BatchNorm running statistics are the plain average over a few
train-mode passes on random normalised images (so the activations have realistic ranges), then eval(). Random
weights are fine for speed; accuracy and agreement on trained nets are the 28x28 runs of docs/RESULTS.md. Every
engine takes the same uint8 pixels [N, 3, 224, 224]; the float ones normalise them in their graph (ImageNet mean and
std), as the .qcnn file does.
- qcnn: qcnn.quantize_ per-channel uniform W8A8, activations calibrated on 16 random images
  (qcnn.quantize.calibrate_activations), qcnn.export, run by qcnn.load(path, threads=t): on the machine's own kernel
  path and, as separate rows ("... avx2"), loaded with QCNN_ISA=avx2 (skipped where that is the own path already);
- onnxruntime int8: the float net exported to ONNX fp32 and quantized by onnxruntime's own static QDQ quantization
  (per channel, QUInt8 activations, QInt8 weights, MinMax-calibrated on the same 16 images), default session
  (graph optimizations on), intra_op_num_threads = t; onnxruntime fp32 runs the fp32 ONNX, torch fp32 the float net
  eagerly with torch.set_num_threads(t);
- OpenVINO (PyPI `openvino`, where it imports; else its rows are skipped with a note): onnxruntime's int8 QDQ model of
  the same net and the fp32 ONNX, reshaped to the batch and compiled for CPU with INFERENCE_NUM_THREADS = t and
  INFERENCE_PRECISION_HINT = f32 (so its float parts stay float32, as onnxruntime's, instead of bf16 on CPUs that
  have it).

Rows: ms per image, the best of --repeats passes after one warm-up pass, each pass running 8 batches of 8 images
(batch 8) or 16 single images (batch 1), at 1 and 2 threads; one row per anchor; ratio = anchor_s / qcnn_s (above 1:
qcnn is faster). rel_err: ||logits - torch fp32 logits|| / ||torch fp32 logits|| on the first batch. The summary:
per net and (batch, threads) the ratio against onnxruntime int8 (20 cells for the five nets) and its geometric mean.
The op table: qcnn.load's profile at 1 thread over 8 images (run image by image), per node kind (conv2d / linear by
the kernel the engine chose): us per image, share %, G MACs/s against the measured int8 MAC peak at 1 thread
(torch.ops.qcnn.int8_peak_gmacs, best of 3) and GB/s against the measured copy bandwidth (a 64 MB NumPy copy, best of 5,
counting read + write). The bytes of a node are estimated from the .qcnn file: its inputs and output at the
engine's storage (1 byte a value whose codes span at most 256 levels, 4 bytes otherwise and for the float logits)
plus its weight indices (1 byte each); tables, multipliers and biases are left out, as is the scratch traffic of
im2col and requantization inside a node. A node that the engine fuses into the node producing its input (kernel
"fused": it runs on each tile that node writes) reports no time of its own; its time and its bytes count in the kind
of the node that runs it. A share of the copy bandwidth above 100% means the node's data
came from cache (the weights of the classifier, small activations).

--quick: one net (mobilenet_v3_large unless --nets), one timed pass of 2 single images or one batch of 8: proves
that every code path runs; its timings mean nothing. --no-avx2 leaves out the QCNN_ISA=avx2 rows.

  python benchmarks/bench_torchvision.py [--nets resnet18 ...] [--quick] [--no-avx2] [--repeats N] [--json PATH]
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import qcnn
from bench_engine import isa_env, ort_runner, quantize_onnx_int8
from common import cpu_flags, parser, report, row
from qcnn.exporter.qfile import read_qcnn
from qcnn.quantize import calibrate_activations

NETS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0")
QUICK_NET = "mobilenet_v3_large"  # the smallest net with every kind of node (lookup tables, gates, residual adds)
INPUT_SHAPE = (3, 224, 224)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCHES, THREADS = (1, 8), (1, 2)
SEED = 0
BN_PASSES, BN_BATCH = 4, 8
CALIB_IMAGES = 16
PROFILE_BATCH = 8
PEAK_SECONDS = 0.5
COPY_BYTES = 64 << 20

W8A8 = {"weight": {"kind": "uniform", "bits": 8, "granularity": "channel"}, "act": {"bits": 8}}
ORT_INT8, ORT_FP32, TORCH_FP32 = "onnxruntime int8", "onnxruntime fp32", "torch fp32"
OV_INT8, OV_FP32 = "openvino int8", "openvino fp32"


# ------------------------------------------------------------------------------------------------ inputs
def pixels(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, *INPUT_SHAPE), dtype=torch.uint8, generator=generator)


def normalize(px: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (px.float() / 255.0 - mean) / std


class PixelNet(nn.Module):
    """uint8 pixels -> logits: the float net behind the ImageNet normalisation the .qcnn file applies to its input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, px: torch.Tensor) -> torch.Tensor:
        return self.model((px.float() / 255.0 - self.mean) / self.std)


@torch.no_grad()
def float_net(name: str, bn_passes: int) -> nn.Module:
    """The torchvision net with random weights (seed SEED) and BatchNorm statistics averaged over `bn_passes`
    train-mode passes on random normalised images."""
    torch.manual_seed(SEED)
    model = qcnn.models.create(f"torchvision.{name}", weights=None, num_classes=1000)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # the cumulative average over the passes, not an exponential one from (0, 1)
    model.train()
    g = torch.Generator().manual_seed(SEED + 1)
    for _ in range(bn_passes):
        model(normalize(pixels(BN_BATCH, g)))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    return model.eval()


# ------------------------------------------------------------------------------------------------ engines
def quantize_w8a8(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """A copy of the float net quantized W8A8, its activations calibrated on the pixels `calib`, in eval mode."""
    q = copy.deepcopy(model)
    qcnn.quantize_(q, W8A8)
    calibrate_activations(q, [normalize(calib)], 1)
    return q.eval()


def export_qcnn(model: nn.Module, calib: torch.Tensor, path: Path) -> Path:
    qcnn.export(quantize_w8a8(model, calib), path, input_shape=INPUT_SHAPE, mean=list(IMAGENET_MEAN),
                std=list(IMAGENET_STD), verbose=False)
    return path


def export_onnx_fp32(net: PixelNet, path: Path) -> Path:
    example = torch.zeros(1, *INPUT_SHAPE, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (example,), str(path), dynamo=False, input_names=["pixels"], output_names=["logits"],
                          dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    return path


def openvino_core():
    """An openvino.Core, or None with the reason where openvino does not import."""
    try:
        import openvino as ov
    except ImportError as err:
        return None, f"openvino is not installed ({err}); pip install openvino adds its columns"
    return ov.Core(), None


def ov_runner(core, path: Path, batch: int, threads: int):
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): [batch, *INPUT_SHAPE]})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                 "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    output = compiled.outputs[0]
    return lambda x: request.infer({0: x})[output], lambda t: t.numpy()


def torch_runner(net: nn.Module, threads: int):
    def run(x):
        with torch.inference_mode():
            return net(x)
    torch.set_num_threads(threads)
    return run, lambda t: t


def qcnn_runner(path: Path, threads: int, isa: str | None):
    with isa_env(isa):  # the engine chooses its kernels at load
        model = qcnn.load(path, threads=threads)
    return model, (lambda t: t), model.isa


# ------------------------------------------------------------------------------------------------ timing
def measure(run, native, batches: list[torch.Tensor], repeats: int) -> tuple[float, np.ndarray]:
    """(best seconds per image over `repeats` passes after a warm-up pass, the logits of the first batch)."""
    inputs = [native(b) for b in batches]
    n = sum(b.shape[0] for b in batches)
    first = np.asarray(run(inputs[0]))
    for x in inputs[1:]:
        run(x)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in inputs:
            run(x)
        best = min(best, time.perf_counter() - t0)
    return best / n, first


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def copy_bandwidth_gbs(nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """GB/s of a NumPy copy of an `nbytes` array (read + write counted), best of `repeats`."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


# -------------------------------------------------------------------------------------------- op table
def _value_bytes(node: dict) -> int:
    lo, hi = node.get("clamp") or (node["qparams"]["qmin"], node["qparams"]["qmax"])
    return 1 if hi - lo <= 255 else 4


def node_bytes(path: Path) -> dict[str, int]:
    """Per node of the .qcnn file: bytes read and written per image (see the module docstring)."""
    doc, _ = read_qcnn(path)
    sizes = {"input": (math.prod(doc["input"]["shape"]), 1)}
    out = {}
    for i, node in enumerate(doc["nodes"]):
        width = 4 if i == len(doc["nodes"]) - 1 else _value_bytes(node)
        sizes[node["name"]] = (math.prod(node["shape"]), width)
        read = sum(math.prod(sizes[name]) for name in node["inputs"])
        weights = node["weight"]["count"] if isinstance(node.get("weight"), dict) else 0
        out[node["name"]] = read + math.prod(sizes[node["name"]]) + weights
    return out


def node_hosts(path: Path, layers: list) -> dict[str, str]:
    """Per node of the profile, the node whose step runs it: itself, or for a node fused into another (kernel
    "fused") the latest step that produces one of its inputs (its other inputs exist before that step)."""
    doc, _ = read_qcnn(path)
    inputs = {node["name"]: node["inputs"] for node in doc["nodes"]}
    order = {layer.name: i for i, layer in enumerate(layers)}
    host = {"input": "input"}
    for layer in layers:
        if layer.kernel == "fused":
            host[layer.name] = max((host[name] for name in inputs[layer.name]), key=lambda h: order.get(h, -1))
        else:
            host[layer.name] = layer.name
    return host


def op_table(net_name: str, path: Path, px: torch.Tensor, repeats: int, peak: float | None,
             copy_gbs: float) -> list[dict]:
    """qcnn.load's profile at 1 thread grouped by node kind (conv2d / linear by kernel), median over `repeats`.
    A node fused into another takes no time of its own: its bytes count in the kind of the node that runs it."""
    model = qcnn.load(path, threads=1)
    model.profile(px)  # warm-up
    runs = [model.profile(px) for _ in range(repeats)]
    bytes_of, host = node_bytes(path), node_hosts(path, runs[0])
    kind_of = {layer.name: f"{layer.op} ({layer.kernel})" if layer.kernel else layer.op for layer in runs[0]}
    seconds, macs, nbytes, nodes = defaultdict(float), defaultdict(int), defaultdict(int), defaultdict(int)
    for layers in zip(*runs):
        layer = layers[0]
        kind = kind_of[layer.name]
        seconds[kind] += float(np.median([p.seconds for p in layers]))
        macs[kind] += layer.macs_per_image
        nbytes[kind_of[host[layer.name]]] += bytes_of.get(layer.name, 0)
        nodes[kind] += 1
    total = sum(seconds.values())
    rows = []
    for kind in sorted(seconds, key=lambda k: (seconds[k], nodes[k]), reverse=True):
        per_image = seconds[kind] / px.shape[0]
        gmacs = macs[kind] / per_image / 1e9 if macs[kind] and per_image > 0 else None
        gbs = nbytes[kind] / per_image / 1e9 if nbytes[kind] and per_image > 0 else None  # fused; a view: no time
        rows.append({"net": net_name, "node kind": kind, "nodes": nodes[kind], "us per image": 1e6 * per_image,
                     "share %": 100.0 * seconds[kind] / total, "G MACs/s": gmacs if gmacs is not None else "-",
                     "% int8 peak": 100.0 * gmacs / peak if gmacs is not None and peak else "-",
                     "MB per image": nbytes[kind] / 1e6 if nbytes[kind] else "-",
                     "GB/s": gbs if gbs is not None else "-",
                     "% copy bw": 100.0 * gbs / copy_gbs if gbs is not None else "-"})
    return rows


# ------------------------------------------------------------------------------------------------- bench
def bench_net(name: str, args, tmp: Path, core, peak: float | None, copy_gbs: float) -> tuple[list, list, dict]:
    quick = args.quick
    model = float_net(name, 1 if quick else BN_PASSES)
    g = torch.Generator().manual_seed(SEED + 2)
    calib = pixels(CALIB_IMAGES, g)
    net = PixelNet(copy.deepcopy(model)).eval()
    qfile = export_qcnn(model, calib, tmp / f"{name}.qcnn")
    fp32_onnx = export_onnx_fp32(net, tmp / f"{name}.fp32.onnx")
    int8_onnx = quantize_onnx_int8(fp32_onnx, tmp / f"{name}.int8.onnx", calib)
    per_pass = {1: 2 if quick else 16, 8: 1 if quick else 8}  # batches per pass
    data = {b: list(pixels(b * per_pass[b], g).split(b)) for b in BATCHES}

    own_isa = qcnn.load(qfile, threads=1).isa
    isas = [None] + (["avx2"] if args.avx2 and own_isa not in ("avx2", "scalar") else [])
    anchors = {ORT_INT8: lambda b, t: ort_runner(int8_onnx, t), ORT_FP32: lambda b, t: ort_runner(fp32_onnx, t),
               TORCH_FP32: lambda b, t: torch_runner(net, t)}
    if core is not None:
        anchors[OV_INT8] = lambda b, t: ov_runner(core, int8_onnx, b, t)
        anchors[OV_FP32] = lambda b, t: ov_runner(core, fp32_onnx, b, t)
    cases = [(b, t) for t in THREADS for b in BATCHES]
    rows = []
    bar = tqdm(total=len(cases) * (len(isas) + len(anchors)), desc=name, unit="run", leave=False)
    for b, t in cases:
        torch.set_num_threads(t)
        ref_s, ref = measure(*torch_runner(net, t), data[b], args.repeats)
        ours = {}
        for isa in isas:
            run, native, chosen = qcnn_runner(qfile, t, isa)
            s, out = measure(run, native, data[b], args.repeats)
            ours[isa] = (s, rel_err(out, ref), chosen)
            del run
            bar.update()
        for anchor, build in anchors.items():
            if anchor == TORCH_FP32:
                anchor_s, anchor_out = ref_s, ref
            else:
                run, native = build(b, t)
                anchor_s, anchor_out = measure(run, native, data[b], args.repeats)
                del run, native
            bar.update()
            for isa, (s, err, chosen) in ours.items():
                case = f"{name} b{b} t{t}" + ("" if isa is None else f" {isa}")
                rows.append(row(case, s, anchor, anchor_s, qcnn_ms=1e3 * s, anchor_ms=1e3 * anchor_s,
                                rel_err=err, anchor_rel_err=rel_err(anchor_out, ref), isa=chosen, net=name,
                                batch=b, threads=t, forced_isa=isa or ""))
    bar.close()
    torch.set_num_threads(1)
    ops = op_table(name, qfile, data[8][0][:PROFILE_BATCH] if not quick else data[8][0][:2], args.repeats, peak,
                   copy_gbs)
    info = {"own_isa": own_isa, "qcnn_bytes": qfile.stat().st_size, "macs_per_image": qcnn.load(qfile).macs_per_image}
    return rows, ops, info


def summary(rows: list[dict], nets: list[str], forced_isa: str = "") -> tuple[list[dict], float | None]:
    """Per net, the ratio against onnxruntime int8 per (batch, threads), and the geometric mean of all cells."""
    cells = {(r["net"], r["batch"], r["threads"]): r["ratio"] for r in rows
             if r["anchor"] == ORT_INT8 and r["forced_isa"] == forced_isa}
    table = []
    for net in nets:
        r = {"net": net, "path": forced_isa or "own"}
        r.update({f"b{b} t{t}": cells[net, b, t] for b in BATCHES for t in THREADS if (net, b, t) in cells})
        table.append(r)
    values = [v for v in cells.values() if v > 0]
    geomean = math.exp(sum(map(math.log, values)) / len(values)) if values else None
    return table, geomean


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(repeats=3)
    p._option_string_actions["--repeats"].help = "timed passes per case (the best is reported; default 3)"
    p.add_argument("--nets", nargs="+", choices=NETS, default=None,
                   help=f"a subset of {', '.join(NETS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help=f"one net ({QUICK_NET} unless --nets), one timed pass of 2 images (batch 1) or one batch of 8, "
                        "one BN pass, a short peak measurement: proves every code path runs")
    p.add_argument("--no-avx2", dest="avx2", action="store_false", help="skip the QCNN_ISA=avx2 rows")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("bench_torchvision: --repeats must be >= 1")
    nets = args.nets or ([QUICK_NET] if args.quick else list(NETS))
    if args.quick:
        args.repeats = 1
    load_at_start = os.getloadavg()  # the ratios hold only on a quiet machine
    try:
        import onnxruntime
        import torchvision
    except ImportError as err:  # a machine that brought its own torch may have no torchvision: nothing to measure
        note = f"{err}: bench_torchvision needs torchvision and onnxruntime (make setup, make bench install them)"
        print(f"note: {note}")
        report("torchvision", [], args.json, {"settings": {"quick": args.quick, "notes": [note]}})
        return
    core, ov_note = openvino_core()
    if ov_note:
        print(f"note: {ov_note}", flush=True)
    peak_fn = getattr(torch.ops.qcnn, "int8_peak_gmacs", None)
    # the best of 3 measurements: a neighbour's burst of work lowers one, never raises it
    peak = max(peak_fn(0.05 if args.quick else PEAK_SECONDS, 1) for _ in range(3)) if peak_fn is not None else None
    copy_gbs = copy_bandwidth_gbs(COPY_BYTES // 8 if args.quick else COPY_BYTES, 2 if args.quick else 5)
    print(f"int8 MAC peak at 1 thread: {peak if peak is None else round(peak, 1)} G MACs/s; "
          f"copy bandwidth: {copy_gbs:.1f} GB/s", flush=True)
    rows, ops, info = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench_torchvision_") as tmp:
        for name in tqdm(nets, desc="nets", unit="net"):
            net_rows, net_ops, info[name] = bench_net(name, args, Path(tmp), core, peak, copy_gbs)
            rows += net_rows
            ops += net_ops
    table, geomean = summary(rows, nets)
    avx2_table, avx2_geomean = summary(rows, nets, "avx2")
    if avx2_geomean is not None:
        table += avx2_table
    settings = {"quick": args.quick, "nets": info, "input_shape": list(INPUT_SHAPE), "batches": list(BATCHES),
                "threads": list(THREADS), "repeats": args.repeats, "calibration_images": CALIB_IMAGES,
                "quant": W8A8, "int8_peak_gmacs_1_thread": peak, "copy_gbs": copy_gbs,
                "geomean_vs_onnxruntime_int8": geomean, "geomean_vs_onnxruntime_int8_avx2": avx2_geomean,
                "onnxruntime": onnxruntime.__version__, "torchvision": torchvision.__version__,
                "openvino": None if core is None else __import__("openvino").__version__,
                "cpu_flags": cpu_flags(), "load_average_at_start": load_at_start,
                "load_average_at_end": os.getloadavg()}
    notes = [n for n in (ov_note, None if peak_fn else "torch.ops.qcnn.int8_peak_gmacs is not in this build: "
                         "the % int8 peak column is left out") if n]
    if notes:
        settings["notes"] = notes
    report("torchvision", rows, args.json, {"summary": table, "ops": ops, "settings": settings})
    print(f"\ngeometric mean of the ratio against onnxruntime int8 ({len(nets) * len(BATCHES) * len(THREADS)} cells): "
          f"{geomean:.3g}" + ("" if avx2_geomean is None else f"; with QCNN_ISA=avx2: {avx2_geomean:.3g}"))
    print(f"load average at start {load_at_start}, at end {settings['load_average_at_end']}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
