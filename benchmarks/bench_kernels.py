"""The engine's narrow-arithmetic kernels against its own int8 GEMM on the demo net: the binary table-lookup kernel
(binary weights, 2-bit activations; O'Keeffe & Villing 2017) and the int16-accumulator GEMM (layers that declare
a 16-bit accumulator; de Bruin et al. 2020).

The float baseline of `make demo` (runs/demo_baseline, trained as bench_engine.py trains it when missing) is
quantized post-training, on the same 512 calibration images: W8 (uniform 8-bit weights and activations: the
int32-accumulator GEMM on every layer), binary-A1/A2/A4/A8 (configs/binary_study_a*.yaml: binary weights with
1/2/4/8-bit hidden activations behind an 8-bit input layer; 1 and 2 bits run on the binary kernel, 4 and 8 on
the GEMM) and acc16 (qcnn.search.accumulator with P = 16 and configs/acc16_demo.yaml's search
settings: the int16-accumulator GEMM behind the signed input layer). The acc16 file is also run with its
accumulator_bits removed, which puts the same integers on the int32-accumulator GEMM: that pair isolates the
accumulator. All run through qcnn.load on the 10,000 uint8 test images.

Rows: seconds per image at batch 256 (1 / throughput), 1 and 2 threads; ratio = anchor_s / qcnn_s with the
anchor the same net on the int32-accumulator GEMM (W8 for the binary nets, the stripped file for acc16), each
on the engine's own kernel path. On a CPU with AVX-512 VNNI every pair is also run with QCNN_ISA=avx2 (rows
marked so), and one more row sets the int16-accumulator kernel (acc16 under QCNN_ISA=avx2) against the VNNI GEMM
(the stripped file on the engine's own path): where acc16 stands against each int32 kernel. Per conv layer at
batch 256: each file's profile on each path, with the kernel the engine chose. For the binary nets the theoretical
speedup of qcnn.analysis.cost (bit operations against the W8 net) stands beside the measured one; training/
results.py reads the measured one into the binary-weight study table.

  python benchmarks/bench_kernels.py [--json PATH] [--quick] [--repeats N]
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import torch

import qcnn
from bench_engine import (BASELINE_CONFIG, BATCH, SCHEMES, THREADS, baseline_dir, calibration_set, isa_env,
                          load_float, measure_inprocess, qcnn_load_runner, quantize_post_training)
from common import parser, report
from qcnn import config as qconfig, data
from qcnn.cli import search_accumulator
from qcnn.exporter import read_qcnn, write_qcnn
from qcnn.search.accumulator_search import AccumulatorSearchConfig, accumulator

ROOT = Path(__file__).resolve().parent.parent
ACC16_CONFIG = ROOT / "configs" / "acc16_demo.yaml"
BINARY_ACT_BITS = (1, 2, 4, 8)


def acc16_model(float_model, calib: tuple):
    """qcnn.search.accumulator's P = 16 plan on the float model (acc16_demo.yaml's base quantizers and search
    settings), installed with its L1 constraint and calibrated, without fine-tuning."""
    cfg, search = qconfig.load_with_search(ACC16_CONFIG, AccumulatorSearchConfig,
                                           check=search_accumulator.check_base_quant)
    plan = accumulator(float_model, quant=cfg.quant, **search.to_dict())
    return quantize_post_training(float_model, plan.quant_config(), calib)


def strip_accumulator_bits(src: Path, dst: Path) -> Path:
    doc, tensors = read_qcnn(src)
    for node in doc["nodes"]:
        node.pop("accumulator_bits", None)
    write_qcnn(dst, doc, tensors)
    return dst


def layer_rows(files: dict[str, Path], pixels: torch.Tensor, repeats: int, paths: list) -> list[dict]:
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        for isa in paths:
            for name, path in files.items():
                with isa_env(isa):
                    model = qcnn.load(path, threads=threads)
                model.profile(pixels)  # warm-up
                runs = [[p for p in model.profile(pixels) if p.kernel] for _ in range(repeats)]
                for i, layer in enumerate(runs[0]):
                    rows.append({"model": name, "isa": model.isa, "forced_isa": isa is not None, "layer": layer.name,
                                 "kernel": layer.kernel, "threads": threads, "macs_per_image": layer.macs_per_image,
                                 "us_per_image": 1e6 * statistics.median(r[i].seconds for r in runs) / pixels.shape[0]})
    return rows


def ratio_row(case: str, res: dict, ref: dict, anchor: str, threads: int, isa: str, forced: bool) -> dict:
    return {"case": f"{case} batch {BATCH} t{threads}", "qcnn_s": res["s_per_image"], "anchor": anchor,
            "anchor_s": ref["s_per_image"], "ratio": ref["s_per_image"] / res["s_per_image"], "acc": res["acc"],
            "anchor_acc": ref["acc"], "threads": threads, "isa": isa, "forced_isa": forced}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="512 test images, one timed run: proves the code paths run")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        float_model, cfg = load_float(baseline_dir(args.quick, tmp))
        calib = calibration_set(cfg)
        test_images, test_labels = data.load_fashion_mnist(cfg.data.path, "test")
        if args.quick:
            test_images, test_labels = test_images[:512], test_labels[:512]
        pixels = test_images.unsqueeze(1)
        models = {"W8": quantize_post_training(float_model, SCHEMES["W8"](), calib)}
        for bits in BINARY_ACT_BITS:
            quant = qconfig.load(ROOT / "configs" / f"binary_study_a{bits}.yaml").quant
            models[f"binary-A{bits}"] = quantize_post_training(float_model, quant, calib)
        models["acc16"] = acc16_model(float_model, calib)
        files = {}
        for name, model in models.items():
            files[name] = tmp / f"{name}.qcnn"
            qcnn.export(model, files[name], verbose=False)
        files["acc16 stripped"] = strip_accumulator_bits(files["acc16"], tmp / "acc16_stripped.qcnn")
        shape = tuple(pixels.shape[1:])
        bops = {name: qcnn.analysis.cost(model, shape).total["bops"] for name, model in models.items()}

        own_isa = qcnn.load(files["W8"]).isa
        paths = [None] + (["avx2"] if own_isa in ("avx512vnni", "amx") else [])  # None: the engine's own choice
        results, isa_of = {}, {}
        for threads in THREADS:
            torch.set_num_threads(threads)
            for isa in paths:
                for name, path in files.items():
                    run, native, isa_of[isa] = qcnn_load_runner(path, threads, isa)
                    results[name, isa, threads] = measure_inprocess(run, native, pixels, test_labels, BATCH, repeats)
        rows = []
        pairs = [(f"binary-A{bits}", "W8") for bits in BINARY_ACT_BITS] + [("acc16", "acc16 stripped")]
        for isa in paths:
            for name, anchor in pairs:
                for threads in THREADS:
                    row = ratio_row(name if isa is None else f"{name} QCNN_ISA={isa}", results[name, isa, threads],
                                    results[anchor, isa, threads], anchor, threads, isa_of[isa], isa is not None)
                    if name.startswith("binary-A"):
                        row["hidden_act_bits"] = int(name.removeprefix("binary-A"))
                        row["theoretical_speedup"] = bops["W8"] / bops[name]
                    rows.append(row)
        if "avx2" in paths:  # the int16 accumulator (AVX2) against the VNNI GEMM's int32 one, same integers
            for threads in THREADS:
                rows.append(ratio_row("acc16 QCNN_ISA=avx2 vs stripped on " + own_isa, results["acc16", "avx2", threads],
                                      results["acc16 stripped", None, threads], f"acc16 stripped ({own_isa})", threads,
                                      "avx2", True))
        layers = layer_rows(files, pixels[:BATCH], repeats, paths)
    load_at_end = os.getloadavg()
    report("kernels", rows, args.json, extra={
        "layers": layers, "load_average_start": load_at_start, "load_average_end": load_at_end,
        "baseline_config": str(BASELINE_CONFIG.relative_to(ROOT))})
    print("\nper layer, batch 256 (us per image):")
    for r in layers:
        print(f"  t{r['threads']} {r['isa']:<10} {r['model']:<15} {r['layer']:<13} {r['kernel']:<13} "
              f"{r['us_per_image']:8.2f}")


if __name__ == "__main__":
    main()
