"""The engine cross-built for aarch64 (`make arm`: static executables in build/aarch64) runs under qemu-aarch64 on
three CPU models (cortex-a53: ARMv8.0 NEON only; cortex-a76: the dot product; max: every extension, i8mm), picks
each one's best kernel path (neon, neondot, i8mm) and gives the x86 engine's logits bit for bit: every weight format
and kernel family of test_engine.py's models, the fuzzer's hand-built files, torchvision nets with
squeeze-excitation, lookup tables and global pooling, at 1 and 2 threads; every path forced with QCNN_ISA on `max`.

Skipped without the aarch64 build or qemu-aarch64, unless QCNN_REQUIRE_ARM=1 (make test sets it once it has built
them): then their absence fails."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qcnn
from qcnn.quantize import calibrate_activations

from export_helpers import (FASHION_INPUT, MODELS, QCNN_INFER, export_model_set, random_pixels, run_embed_example,
                            run_infer, run_infer_report)

ROOT = Path(__file__).resolve().parents[2]
ARM_INFER = ROOT / "build" / "aarch64" / "qcnn-infer"
QEMU = shutil.which("qemu-aarch64")
# Each CPU model and the path the engine picks there from the kernel's hardware capabilities.
BEST_PATH = {"cortex-a53": "neon", "cortex-a76": "neondot", "max": "i8mm"}
ARM_PATHS = ("scalar", "neon", "neondot", "i8mm")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("QCNN_REQUIRE_ARM") != "1" and not (ARM_INFER.is_file() and QCNN_INFER.is_file() and QEMU),
    reason="needs build/aarch64/qcnn-infer (make arm), build/qcnn-infer and qemu-aarch64 (make setup)")]


def qemu(cpu: str) -> tuple:
    return (QEMU, "-cpu", cpu, ARM_INFER)


def assert_arm_equals_x86(model: Path, pixels: torch.Tensor, directory: Path, threads=(1, 2)) -> None:
    assert ARM_INFER.is_file() and QCNN_INFER.is_file() and QEMU, "the aarch64 build, the x86 one and qemu-aarch64"
    want = run_infer(model, pixels, directory, "--threads", "1")
    for cpu, path in BEST_PATH.items():
        for t in threads:
            got, report = run_infer_report(model, pixels, directory, "--threads", str(t), command=qemu(cpu))
            assert report["isa"] == path, f"{cpu} picked {report['isa']}"
            assert np.array_equal(got, want), f"{model.name} on {cpu} ({path}), {t} threads"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_model_set(tmp_path_factory.mktemp("arm"))


@pytest.mark.parametrize("name", sorted(MODELS) + ["resnet_small"])
def test_exported_models(model_dir, tmp_path, name):
    model = model_dir / f"{name}.qcnn"
    assert_arm_equals_x86(model, random_pixels(5, qcnn.load(model).input_shape, seed=21), tmp_path)


@pytest.mark.parametrize("name", ["uniform_w8", "resnet_small"])
def test_every_path_forced(model_dir, tmp_path, name):
    model = model_dir / f"{name}.qcnn"
    pixels = random_pixels(3, qcnn.load(model).input_shape, seed=5)
    want = run_infer(model, pixels, tmp_path, "--threads", "1")
    for path in ARM_PATHS:
        got, report = run_infer_report(model, pixels, tmp_path, "--threads", "2", command=qemu("max"),
                                       env={"QCNN_ISA": path})
        assert report["isa"] == path
        assert np.array_equal(got, want), f"{name} on QCNN_ISA={path}"


@pytest.mark.parametrize("cpu, path", [("cortex-a53", "neondot"), ("cortex-a53", "i8mm"), ("cortex-a76", "i8mm"),
                                       ("max", "avx2")])
def test_a_path_the_cpu_lacks_is_refused(model_dir, tmp_path, cpu, path):
    model = model_dir / "uniform_w8.qcnn"
    with pytest.raises(AssertionError, match=f"QCNN_ISA={path}: this CPU cannot run that path"):
        run_infer_report(model, random_pixels(1, qcnn.load(model).input_shape), tmp_path, command=qemu(cpu),
                         env={"QCNN_ISA": path})


ARM_EMBED_EXAMPLE = ROOT / "build" / "aarch64" / "qcnn-embed-example"
INSN_PLUGIN = ROOT / "build" / "qemu_insn_count.so"


# aarch64 encodings (mask, value) of the instructions the quad GEMMs are built on: SDOT by element (any Q, any lane)
# and USMMLA; and the binary popcount kernel's CNT (16 bytes).
ENCODINGS = {"sdot": (0xBFC0F400, 0x0F80E000), "usmmla": (0xFFE0FC00, 0x4E80AC00), "cnt": (0xFFFFFC00, 0x4E205800)}


def executed(model: Path, pixels: torch.Tensor, directory: Path, path: str) -> tuple[int, dict[str, int]]:
    """Instructions executed by qcnn-infer on `path` under the counting plugin: all, and those of ENCODINGS."""
    out = directory / f"counts_{path}.txt"
    run_infer_report(model, pixels, directory, "--threads", "1", "--batch", "1",
                     command=(QEMU, "-cpu", "max", "-plugin", f"{INSN_PLUGIN},out={out}", ARM_INFER),
                     env={"QCNN_ISA": path})
    total, named = 0, dict.fromkeys(ENCODINGS, 0)
    for line in out.read_text().splitlines():
        _, count, word = line.split(" ", 3)[:3]
        total += int(count)
        for name, (mask, value) in ENCODINGS.items():
            named[name] += int(count) if int(word, 16) & mask == value else 0
    return total, named


def test_instruction_counts(model_dir, tmp_path):
    """The counting plugin of benchmarks/bench_arm_insns.py: the quad GEMM's dot-product and matrix instructions cover
    its layers' MACs (16 per SDOT, 32 per USMMLA, padding only adds), the scalar path runs none, and every NEON path
    runs fewer instructions than the scalar one (load included: this small model's load weighs as much as its run)."""
    assert INSN_PLUGIN.is_file(), "build/qemu_insn_count.so (make setup)"
    model = model_dir / "uniform_w8.qcnn"
    pixels = random_pixels(1, qcnn.load(model).input_shape, seed=3)
    report = run_infer_report(model, pixels, tmp_path, "--profile", command=qemu("max"), env={"QCNN_ISA": "neondot"})[1]
    quad_macs = sum(layer["macs_per_image"] for layer in report["layers"] if layer["kernel"] == "gemm sdot")
    assert quad_macs > 0
    totals, counts = {}, {}
    for path in ARM_PATHS:
        totals[path], counts[path] = executed(model, pixels, tmp_path, path)
    assert totals["scalar"] > max(totals["neon"], totals["neondot"], totals["i8mm"]), totals
    assert counts["scalar"]["sdot"] == counts["scalar"]["usmmla"] == counts["neondot"]["usmmla"] == 0
    assert quad_macs <= 16 * counts["neondot"]["sdot"] <= 4 * quad_macs
    assert quad_macs <= 32 * counts["i8mm"]["usmmla"] <= 4 * quad_macs


def test_binary_popcount(model_dir, tmp_path):
    """Binary weights against 1-bit activations run on the popcount kernel on every NEON path (2-bit ones on the
    tables): its CNTs cover the layers' MACs, 128 each (16 channels x 8 input channels), padding only adds."""
    assert INSN_PLUGIN.is_file(), "build/qemu_insn_count.so (make setup)"
    kernels = {}
    for bits in (1, 2):
        model = model_dir / f"binary_a{bits}.qcnn"
        pixels = random_pixels(1, qcnn.load(model).input_shape, seed=4)
        for path in ("neon", "neondot", "i8mm"):
            report = run_infer_report(model, pixels, tmp_path, "--profile", command=qemu("max"),
                                      env={"QCNN_ISA": path})[1]
            kernels[bits, path] = [layer["kernel"] for layer in report["layers"] if layer["op"] in ("conv2d", "linear")]
    for path in ("neon", "neondot", "i8mm"):
        assert kernels[1, path][1:] == ["binary popcount a1"] * 2, kernels[1, path]
        assert kernels[2, path][1:] == ["binary a2"] * 2, kernels[2, path]
    model = model_dir / "binary_a1.qcnn"
    pixels = random_pixels(1, qcnn.load(model).input_shape, seed=4)
    report = run_infer_report(model, pixels, tmp_path, "--profile", command=qemu("max"), env={"QCNN_ISA": "neon"})[1]
    binary_macs = sum(layer["macs_per_image"] for layer in report["layers"] if layer["kernel"].startswith("binary"))
    assert binary_macs > 0
    cnt = executed(model, pixels, tmp_path, "neon")[1]["cnt"]
    assert binary_macs <= 128 * cnt <= 4 * binary_macs, (binary_macs, cnt)


def test_embedding_example(model_dir, tmp_path):
    """The embedding example (tests/c_api/run_model.c on the C interface, the model loaded from memory), cross-built,
    gives qcnn.load's logits on every CPU model."""
    model = model_dir / "residual_add_global_avg.qcnn"
    pixels = random_pixels(4, qcnn.load(model).input_shape, seed=8)
    want = qcnn.load(model)(pixels).numpy()
    for cpu in BEST_PATH:
        got = run_embed_example((QEMU, "-cpu", cpu, ARM_EMBED_EXAMPLE), model, pixels, tmp_path, 2)
        assert np.array_equal(got, want), cpu


def test_hand_built_files(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
    import make_seeds
    for name, data in make_seeds.hand_built().items():
        model = tmp_path / name
        model.write_bytes(data)
        shape = qcnn.load(model).input_shape
        if shape[0] != 1:
            continue  # IDX images carry one channel
        assert_arm_equals_x86(model, random_pixels(4, shape, seed=len(name)), tmp_path)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_nets(tmp_path, name):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = qcnn.quantize_(qcnn.models.create(f"torchvision.{name}", input_adapter="gray28", num_classes=10).eval(),
                           {"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}})
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    calibrate_activations(model, [((pixels.float() / 255 - FASHION_INPUT["mean"][0]) / FASHION_INPUT["std"][0],)], 1)
    path = tmp_path / f"{name}.qcnn"
    qcnn.export(model, path, verbose=False, **FASHION_INPUT)
    assert_arm_equals_x86(path, pixels, tmp_path, threads=(2,))
