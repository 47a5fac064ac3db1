"""Dynamic instruction counts of the aarch64 engine under qemu (no times: emulation is not cycle-accurate): per image,
end to end and per kernel family, on each aarch64 kernel path, and the MACs per instruction of the quad GEMMs.

Models: bench_kernels.py's, on make demo's float baseline quantized post-training (W8: the int32-accumulator GEMM on
every layer; binary-A1 / A2: binary weights, 1- / 2-bit activations; acc16: qcnn.search.accumulator's P = 16 plan, which
declares 16-bit accumulators, and the same file with accumulator_bits removed), or runs/acc16_demo/model.qcnn (the
retrained acc16 model of training/search_accumulator.py) where it exists.

Each (model, path) runs build/aarch64/qcnn-infer under `qemu-aarch64 -cpu max` with QCNN_ISA forcing the path, on one
thread at batch 1, under the counting plugin (build/qemu_insn_count.so), on 1 and on 1 + N images: the difference
divided by N is the count per image, without the load. Each executed address is attributed to its function by the
binary's symbol table, and each function to a kernel family by its name. One more run per (model, path), without the
plugin, with --profile, names each layer's kernel and MACs: "quad GEMM MACs/insn" divides the MACs of the layers on
the quad GEMM (gemm neon / sdot / i8mm) by the instructions executed in its microkernels (padding included).

Rows: ratio = anchor_insns / qcnn_insns per image (above 1: fewer instructions). Cases: each path against the scalar
path on the same file; acc16 against its stripped file on the same path; binary-A1 and A2 against W8 on the same path.

  python benchmarks/bench_arm_insns.py [--json PATH] [--quick] [--images N]
"""
from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

import qcnn
from bench_engine import SCHEMES, baseline_dir, calibration_set, load_float, quantize_post_training
from bench_kernels import acc16_model, strip_accumulator_bits
from common import parser, report
from qcnn import config as qconfig, data

ROOT = Path(__file__).resolve().parent.parent
ARM_INFER = ROOT / "build" / "aarch64" / "qcnn-infer"
PLUGIN = ROOT / "build" / "qemu_insn_count.so"
ACC16_RUN = ROOT / "runs" / "acc16_demo" / "model.qcnn"
PATHS = ("scalar", "neon", "neondot", "i8mm")
QUAD_GEMM_KERNELS = ("gemm neon", "gemm sdot", "gemm i8mm")
# Kernel families by the demangled names of their functions, first match wins.
FAMILIES = (
    ("quad GEMM", r"WideningPass|DotPass|MatmulPass|quad_microkernel"),
    ("acc16 GEMM", r"Acc16|acc16"),
    ("int16-pair GEMM", r"microkernel_scalar"),
    ("conv epilogue", r"requantize_rows|requantize_f64|epilogue|output_code|thresholds"),
    ("binary", r"bit_|[Bb]inary|quad_values|widen_words"),
    ("depthwise", r"depthwise"),
    ("elementwise and pooling", r"_codes|positions|pool|lookup|rounded_mean"),
    ("image copy", r"pad_image|gather_panel|convert_run|image_rows|row_offsets"),
    ("memory", r"mem(cpy|set|move)"),
)


def symbols(binary: Path) -> tuple[list[int], list[str]]:
    """The binary's function symbols sorted by address (a static executable: the addresses qemu reports)."""
    out = subprocess.run(["aarch64-linux-gnu-nm", "-C", "-n", "--defined-only", str(binary)], capture_output=True,
                         text=True, check=True).stdout
    starts, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            starts.append(int(parts[0], 16))
            names.append(parts[2])
    return starts, names


def family(function: str) -> str:
    return next((name for name, pattern in FAMILIES if re.search(pattern, function)), "other")


def count(model: Path, images: Path, labels: Path, n: int, path: str, out: Path) -> dict[int, int]:
    """Executed instructions per address of one qcnn-infer run on the first n images."""
    cmd = ["qemu-aarch64", "-cpu", "max", "-plugin", f"{PLUGIN},out={out}", str(ARM_INFER), str(model), "--images",
           str(images), "--labels", str(labels), "--limit", str(n), "--batch", "1", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QCNN_ISA": path}, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"{model.name} on {path}: {res.stderr[-500:]}")
    counts = {}
    for line in out.read_text().splitlines():
        address, executed = line.split(" ", 2)[:2]
        counts[int(address, 16)] = int(executed)
    return counts


def layers(model: Path, images: Path, labels: Path, path: str) -> list[dict]:
    cmd = ["qemu-aarch64", "-cpu", "max", str(ARM_INFER), str(model), "--images", str(images), "--labels", str(labels),
           "--limit", "1", "--threads", "1", "--profile"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QCNN_ISA": path}, timeout=3600,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["layers"]


def per_image(model: Path, images: Path, labels: Path, extra: int, path: str, syms, tmp: Path) -> dict:
    """Instructions per image, end to end, by family and in the quad GEMM, with the quad GEMM's MACs."""
    one = count(model, images, labels, 1, path, tmp / "one.txt")
    more = count(model, images, labels, 1 + extra, path, tmp / "more.txt")
    starts, names = syms
    by_family: dict[str, float] = defaultdict(float)
    total = 0.0
    for address in set(one) | set(more):
        executed = (more.get(address, 0) - one.get(address, 0)) / extra
        i = bisect.bisect_right(starts, address) - 1
        by_family[family(names[i]) if i >= 0 else "other"] += executed
        total += executed
    quad_macs = sum(layer["macs_per_image"] for layer in layers(model, images, labels, path)
                    if layer["kernel"] in QUAD_GEMM_KERNELS)
    return {"total": total, "families": dict(by_family), "quad_gemm_macs": quad_macs}


def build_models(quick: bool, tmp: Path) -> dict[str, Path]:
    float_model, cfg = load_float(baseline_dir(quick, tmp))
    calib = calibration_set(cfg)
    files = {}
    built = {"W8": quantize_post_training(float_model, SCHEMES["W8"](), calib)}
    for bits in (1, 2):
        binary = qconfig.load(ROOT / "configs" / f"binary_study_a{bits}.yaml").quant
        built[f"binary-A{bits}"] = quantize_post_training(float_model, binary, calib)
    if not ACC16_RUN.is_file():
        built["acc16"] = acc16_model(float_model, calib)
    for name, model in built.items():
        files[name] = tmp / f"{name}.qcnn"
        qcnn.export(model, files[name], verbose=False)
    if ACC16_RUN.is_file():
        files["acc16"] = ACC16_RUN
    files["acc16 stripped"] = strip_accumulator_bits(files["acc16"], tmp / "acc16_stripped.qcnn")
    return files, cfg


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the tiny --quick baseline and 1 extra image")
    p.add_argument("--images", type=int, default=2, help="extra images whose count is divided out (default 2)")
    args = p.parse_args()
    for need in (ARM_INFER, PLUGIN):
        if not need.is_file():
            raise SystemExit(f"missing {need}: run make setup (make arm builds the aarch64 engine)")
    if not shutil.which("qemu-aarch64"):
        raise SystemExit("missing qemu-aarch64: run make setup")
    extra = 1 if args.quick else args.images
    syms = symbols(ARM_INFER)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files, cfg = build_models(args.quick, tmp)
        test_images, test_labels = data.load_fashion_mnist(cfg.data.path, "test")
        images, labels = tmp / "images.idx", tmp / "labels.idx"
        data.write_idx(images, test_images[:1 + extra].numpy())
        data.write_idx(labels, test_labels[:1 + extra].numpy().astype(np.uint8))
        results = {}
        for name, path in tqdm([(n, p) for n in files for p in PATHS], desc="qemu runs", unit="run"):
            results[name, path] = per_image(files[name], images, labels, extra, path, syms, tmp)
    rows, family_rows = [], []

    def row(case: str, got: dict, anchor: str, ref: dict, path: str) -> None:
        quad = got["families"].get("quad GEMM", 0.0)
        rows.append({"case": case, "path": path, "qcnn_insns": round(got["total"]), "anchor": anchor,
                     "anchor_insns": round(ref["total"]), "ratio": ref["total"] / got["total"],
                     "quad_gemm_macs": got["quad_gemm_macs"],
                     "quad_gemm_macs_per_insn": got["quad_gemm_macs"] / quad if quad else None})

    for name in files:
        for path in PATHS:
            got = results[name, path]
            family_rows.append({"model": name, "path": path, "total": round(got["total"]),
                                **{f: round(got["families"].get(f, 0.0)) for f, _ in FAMILIES + (("other", ""),)}})
            if path != "scalar":
                row(f"{name} on {path}", got, f"{name} on scalar", results[name, "scalar"], path)
    for path in PATHS:
        row(f"acc16 on {path}", results["acc16", path], f"acc16 stripped on {path}", results["acc16 stripped", path],
            path)
        for binary in ("binary-A1", "binary-A2"):
            row(f"{binary} on {path}", results[binary, path], f"W8 on {path}", results["W8", path], path)
    qemu_version = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    report("arm_insns", rows, args.json,
           extra={"instructions per image by kernel family": family_rows, "qemu": qemu_version,
                  "cpu_model": "qemu -cpu max", "images_divided_out": extra,
                  "acc16_model": "runs/acc16_demo/model.qcnn" if files["acc16"] == ACC16_RUN
                  else "post-training (bench_kernels.acc16_model)"})


if __name__ == "__main__":
    main()
