"""The engine cross-built for aarch64 (`make arm`: static executables in build/aarch64) runs under qemu-aarch64 on
three CPU models (cortex-a53: ARMv8.0 NEON only; cortex-a76: the dot product; max: every extension, i8mm) and gives
the x86 engine's logits bit for bit: every weight format and kernel family of test_engine.py's models, the fuzzer's
hand-built files, torchvision nets with squeeze-excitation, lookup tables and global pooling, at 1 and 2 threads.

Skipped without the aarch64 build or qemu-aarch64, unless QCNN_REQUIRE_ARM=1 (make test sets it once it has built
them): then their absence fails."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import qcnn
from qcnn.quantize import calibrate_activations

from export_helpers import FASHION_INPUT, MODELS, export_model_set, random_pixels, write_idx

ROOT = Path(__file__).resolve().parents[2]
X86_INFER = ROOT / "build" / "qcnn-infer"
ARM_INFER = ROOT / "build" / "aarch64" / "qcnn-infer"
QEMU = shutil.which("qemu-aarch64")
CPUS = ("cortex-a53", "cortex-a76", "max")

pytestmark = pytest.mark.skipif(
    os.environ.get("QCNN_REQUIRE_ARM") != "1" and not (ARM_INFER.is_file() and X86_INFER.is_file() and QEMU),
    reason="needs build/aarch64/qcnn-infer (make arm), build/qcnn-infer and qemu-aarch64 (make setup)")


def infer(command: list[str], model: Path, images: Path, labels: Path, logits: Path, threads: int) -> dict:
    res = subprocess.run([*command, str(model), "--images", str(images), "--labels", str(labels), "--logits",
                          str(logits), "--threads", str(threads)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def assert_arm_equals_x86(model: Path, pixels: torch.Tensor, directory: Path, threads=(1, 2)) -> None:
    assert ARM_INFER.is_file() and X86_INFER.is_file() and QEMU, "the aarch64 build, the x86 one and qemu-aarch64"
    images, labels = directory / f"{model.stem}.images.idx", directory / f"{model.stem}.labels.idx"
    write_idx(images, pixels[:, 0].numpy())
    write_idx(labels, np.zeros(len(pixels), np.uint8))
    reference = directory / f"{model.stem}.x86.npy"
    infer([str(X86_INFER)], model, images, labels, reference, 1)
    want = np.load(reference)
    for cpu in CPUS:
        for t in threads:
            out = directory / f"{model.stem}.{cpu}.{t}.npy"
            report = infer([QEMU, "-cpu", cpu, str(ARM_INFER)], model, images, labels, out, t)
            assert report["images"] == len(pixels)
            assert np.array_equal(np.load(out), want), f"{model.name} on {cpu}, {t} threads ({report['isa']})"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_model_set(tmp_path_factory.mktemp("arm"))


@pytest.mark.parametrize("name", sorted(MODELS) + ["resnet_small"])
def test_exported_models(model_dir, tmp_path, name):
    model = model_dir / f"{name}.qcnn"
    assert_arm_equals_x86(model, random_pixels(5, qcnn.load(model).input_shape, seed=21), tmp_path)


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
