"""qcnn.load runs the C++ integer engine (csrc/runtime) that build/qcnn-infer runs: bit-identical logits on
exported models of every weight format, the engine's properties and profile, and its errors as ValueError."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import qcnn
from qcnn.exporter import read_qcnn, reference_forward, write_qcnn
from qcnn._ops.engine import engine_isas

from export_helpers import (MODELS, QCNN_INFER, export_model_set, random_cnn_graph, random_pixels, run_embed_example,
                            run_infer, write_idx)

ROOT = Path(__file__).resolve().parents[2]
needs_infer = pytest.mark.skipif(not QCNN_INFER.is_file(),
                                 reason=f"{QCNN_INFER} not built (make setup builds it with CMake)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_model_set(tmp_path_factory.mktemp("engine"))


@needs_infer
@pytest.mark.parametrize("name", sorted(MODELS) + ["resnet_small"])
def test_load_and_qcnn_infer_logits_are_bit_identical(model_dir, tmp_path, name):
    model = qcnn.load(model_dir / f"{name}.qcnn")
    pixels = random_pixels(203, model.input_shape, seed=11)
    expected = model(pixels).numpy()
    # Batches of 50 (the last one short) and 2 threads in qcnn-infer, one batch and the default in qcnn.load.
    got = run_infer(model_dir / f"{name}.qcnn", pixels, tmp_path, "--batch", "50", "--threads", "2")
    assert got.dtype == np.float32 and got.shape == expected.shape == (203, 10)
    assert np.array_equal(got, expected)


@needs_infer
@pytest.mark.parametrize("name", ["residual_add_global_avg", "resnet_small"])
def test_qcnn_infer_no_fuse_gives_the_same_logits(model_dir, tmp_path, name):
    pixels = random_pixels(41, qcnn.load(model_dir / f"{name}.qcnn").input_shape, seed=17)
    fused = run_infer(model_dir / f"{name}.qcnn", pixels, tmp_path, "--threads", "2")
    assert np.array_equal(run_infer(model_dir / f"{name}.qcnn", pixels, tmp_path, "--no-fuse", "--batch", "1"), fused)
    assert np.array_equal(qcnn.load(model_dir / f"{name}.qcnn", fuse=False)(pixels).numpy(), fused)


@needs_infer
@pytest.mark.parametrize("name", ["codebook_w4_channel", "uniform_w8", "residual_add_global_avg", "resnet_small"])
def test_every_kernel_path_gives_the_same_logits(model_dir, tmp_path, name):
    """QCNN_ISA=scalar (the portable reference path) and each vector path this CPU has compute the same integers."""
    pixels = random_pixels(37, qcnn.load(model_dir / f"{name}.qcnn").input_shape, seed=13)
    logits = {}
    for isa in engine_isas():
        env = dict(os.environ, QCNN_ISA=isa)
        images, labels = tmp_path / "images.idx", tmp_path / "labels.idx"
        write_idx(images, pixels[:, 0].numpy())
        write_idx(labels, np.zeros(len(pixels), np.uint8))
        out = tmp_path / f"logits_{isa}.npy"
        res = subprocess.run([str(QCNN_INFER), str(model_dir / f"{name}.qcnn"), "--images", str(images), "--labels",
                              str(labels), "--logits", str(out), "--threads", "2"],
                             capture_output=True, text=True, timeout=120, env=env)
        if isa != "scalar" and "cannot run that path" in res.stderr:
            continue  # this CPU has no such path
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["isa"] == isa
        logits[isa] = np.load(out)
    if len(logits) == 1:
        pytest.skip("this CPU has no vector path")
    for isa, got in logits.items():
        assert np.array_equal(got, logits["scalar"]), isa


EMBED_EXAMPLE = ROOT / "build" / "cmake" / "qcnn-embed-example"


@pytest.mark.skipif(not EMBED_EXAMPLE.is_file(), reason="needs the CMake build's qcnn-embed-example (make setup)")
def test_c_interface_from_c(model_dir, tmp_path):
    """The embedding example, built by CMake as C99 with -Werror against csrc/runtime/qcnn.h, loads a model from
    memory and gives qcnn.load's logits bit for bit; a truncated file is a status and a message."""
    model = model_dir / "residual_add_global_avg.qcnn"
    pixels = random_pixels(9, qcnn.load(model).input_shape, seed=23)
    logits = run_embed_example((EMBED_EXAMPLE,), model, pixels, tmp_path, 2)
    assert logits.shape == (9, 10)
    assert np.array_equal(logits, qcnn.load(model)(pixels).numpy())
    bad = tmp_path / "bad.qcnn"
    bad.write_bytes(model.read_bytes()[:100])
    res = subprocess.run([str(EMBED_EXAMPLE), str(bad), str(tmp_path / "images.raw"), str(tmp_path / "logits.raw"),
                          "1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("buffer: ")


QEMU_X86 = shutil.which("qemu-x86_64")


@needs_infer
@pytest.mark.skipif(QEMU_X86 is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64 on x86-64 (Debian's qemu-user; make setup installs it)")
@pytest.mark.parametrize("name", ["uniform_w8", "resnet_small"])
def test_qcnn_infer_runs_on_a_cpu_without_avx(model_dir, tmp_path, name):
    """On a CPU whose CPUID reports no AVX (qemu's Nehalem model) qcnn-infer picks the scalar path by itself and
    gives the logits of this CPU's own path, bit for bit. (qemu's emulator still decodes AVX instructions, so this
    checks the choice from CPUID, not that the scalar path is free of them: that is the build's target attributes.)"""
    model = model_dir / f"{name}.qcnn"
    pixels = random_pixels(6, qcnn.load(model).input_shape, seed=17)
    native = run_infer(model, pixels, tmp_path, "--threads", "1")
    out = tmp_path / "logits_nehalem.npy"
    res = subprocess.run([QEMU_X86, "-cpu", "Nehalem", str(QCNN_INFER), str(model), "--images",
                          str(tmp_path / "images.idx"), "--labels", str(tmp_path / "labels.idx"), "--logits", str(out),
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["isa"] == "scalar"
    assert np.array_equal(np.load(out), native)


def test_unknown_isa_is_an_error(model_dir, monkeypatch):
    monkeypatch.setenv("QCNN_ISA", "avx9000")
    with pytest.raises(ValueError, match="QCNN_ISA=avx9000: unknown path"):
        qcnn.load(model_dir / "codebook_w4_channel.qcnn")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_engine_agrees_with_the_fake_quant_graph(model_dir, name):
    graph_args, _ = MODELS[name]
    graph = random_cnn_graph(**graph_args)
    pixels = random_pixels(256, seed=12)
    ref = reference_forward(graph, graph.normalize(pixels))
    out = qcnn.load(model_dir / f"{name}.qcnn")(pixels)
    # Fixed-point rounding can move a value on a rounding boundary to the neighbouring code: a whole step of a
    # 2-bit activation.
    agreement = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= (0.95 if graph_args.get("act_bits") == 2 else 0.98)


def test_logits_do_not_depend_on_batching_or_threads(model_dir):
    pixels = random_pixels(61, seed=13)
    path = model_dir / "residual_add_global_avg.qcnn"
    whole = qcnn.load(path)(pixels)
    assert torch.equal(qcnn.load(path, threads=1)(pixels), whole)
    assert torch.equal(qcnn.load(path, threads=2)(pixels), whole)
    assert torch.equal(torch.cat([qcnn.load(path)(chunk) for chunk in pixels.split(8)]), whole)
    # A non-contiguous batch is read as its values.
    wide = torch.cat([pixels, pixels], 3)[..., ::2]
    assert torch.equal(qcnn.load(path)(wide), qcnn.load(path)(wide.contiguous()))


def test_empty_batch(model_dir):
    out = qcnn.load(model_dir / "codebook_w2.qcnn")(torch.zeros(0, 1, 16, 16, dtype=torch.uint8))
    assert out.dtype == torch.float32 and tuple(out.shape) == (0, 10)


def test_properties_and_profile(model_dir):
    path = model_dir / "residual_add_global_avg.qcnn"
    model = qcnn.load(path)
    doc, _ = read_qcnn(path)
    assert model.input_shape == (1, 16, 16) and model.num_classes == 10
    assert engine_isas()[model.isa]
    # conv1 8x(1*3*3) at 16x16, conv2 8x(8*3*3) at 8x8, fc 10x8
    assert model.macs_per_image == 8 * 9 * 256 + 8 * 72 * 64 + 10 * 8
    assert 0 < model.peak_activation_bytes(1) <= model.peak_activation_bytes(64)
    assert model.peak_activation_bytes(0) >= 0
    layers = model.profile(random_pixels(32, seed=14))
    assert [layer.name for layer in layers] == [node["name"] for node in doc["nodes"]]
    assert [layer.op for layer in layers] == [node["op"] for node in doc["nodes"]]
    assert sum(layer.macs_per_image for layer in layers) == model.macs_per_image
    assert all(layer.seconds >= 0 for layer in layers)
    assert "residual_add_global_avg.qcnn" in repr(model)


@pytest.mark.parametrize("name, kernels", [
    ("binary_a1", ["gemm", "binary a1", "binary a1"]),  # the 8-bit signed input stays on the GEMM
    ("binary_a2", ["gemm", "binary a2", "binary a2"]),
    ("codebook_w2", ["gemm", "gemm", "gemm"]),   # 4-bit activations, 2-bit weights
])
def test_binary_layers_with_few_bit_inputs_run_on_the_binary_kernel(model_dir, name, kernels):
    model = qcnn.load(model_dir / f"{name}.qcnn")
    layers = model.profile(random_pixels(4, seed=15))
    # int8 weights and 8-bit codes: the VNNI GEMM where the CPU has it (or AMX's tile GEMM for the layers with
    # k >= 128 and 64 channels), else the int32-accumulator GEMM
    gemms = {"amx": {"gemm vnni", "gemm amx"}, "avx512vnni": {"gemm vnni"}}.get(model.isa, {"gemm acc32"})
    got = [layer.kernel for layer in layers if layer.op in ("conv2d", "linear")]
    assert [k in gemms if want == "gemm" else k == want for k, want in zip(got, kernels)] == [True] * len(kernels)
    assert len(got) == len(kernels)
    assert all(layer.kernel == "" for layer in layers if layer.op not in ("conv2d", "linear"))


def test_int8_peak_gmacs():
    assert torch.ops.qcnn.int8_peak_gmacs(0.01, 1) > 0
    with pytest.raises(ValueError, match="seconds must be in"):
        torch.ops.qcnn.int8_peak_gmacs(0.0, 1)
    with pytest.raises(ValueError, match="threads must be in"):
        torch.ops.qcnn.int8_peak_gmacs(0.01, 0)


def test_bad_pixels_are_value_errors(model_dir):
    model = qcnn.load(model_dir / "codebook_w2.qcnn")
    with pytest.raises(ValueError, match=re.escape("pixels must be uint8 [N, 1, 16, 16], got dtype Float")):
        model(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=re.escape("pixels must have shape [N, 1, 16, 16], got [2, 1, 16, 15]")):
        model(torch.zeros(2, 1, 16, 15, dtype=torch.uint8))
    with pytest.raises(ValueError, match=re.escape("pixels must have shape [N, 1, 16, 16], got [1, 16, 16]")):
        model(torch.zeros(1, 16, 16, dtype=torch.uint8))
    for threads in (-1, 2**31 - 1):  # OpenMP aborts the process on a pool it cannot allocate
        with pytest.raises(ValueError, match=re.escape("threads must be an int in [0, 4096]")):
            qcnn.load(model_dir / "codebook_w2.qcnn", threads=threads)


def test_bad_files_are_value_errors_naming_the_file(tmp_path, model_dir):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: is a directory")):
        qcnn.load(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'missing.qcnn'}: cannot open")):
        qcnn.load(tmp_path / "missing.qcnn")
    data = (model_dir / "codebook_w4_tensor.qcnn").read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.qcnn"
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=re.escape(path.name)):
            qcnn.load(path)
    garbage = tmp_path / "garbage.qcnn"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=re.escape(garbage.name)):
        qcnn.load(garbage)


def test_load_limits(model_dir):
    path = model_dir / "codebook_w4_tensor.qcnn"
    macs = qcnn.load(path).macs_per_image
    assert qcnn.load(path, max_macs_per_image=macs).macs_per_image == macs
    with pytest.raises(ValueError, match="max_macs_per_image"):
        qcnn.load(path, max_macs_per_image=macs - 1)
    with pytest.raises(ValueError, match="exceeds the activation limit of 16 bytes per image"):
        qcnn.load(path, max_activation_bytes_per_image=16)
    with pytest.raises(ValueError, match=r"max_macs_per_image must be an int in \[1, 9223372036854775807\], got 0"):
        qcnn.load(path, max_macs_per_image=0)


def test_copy_and_pickle_reload_the_file(model_dir, tmp_path):
    import copy
    import pickle

    model = qcnn.load(model_dir / "codebook_w4_channel.qcnn", threads=1, max_macs_per_image=10 ** 9)
    pixels = random_pixels(9, model.input_shape, seed=14)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other.threads == 1 and other.limits["max_macs_per_image"] == 10 ** 9
        assert torch.equal(other(pixels), model(pixels))


def _with_accumulator_bits(source: Path, target: Path, bits) -> Path:
    doc, tensors = read_qcnn(source)
    for node in doc["nodes"]:
        if node["op"] in ("conv2d", "linear"):
            node["accumulator_bits"] = bits
    write_qcnn(target, doc, tensors)
    return target


@needs_infer
def test_count_overflows_against_the_declared_accumulator_width(model_dir, tmp_path):
    """Both runtimes count the same overflows; 32-bit accumulators never overflow on 8-bit data, and 8-bit
    ones do. (The bound itself, at and one bit past it, is tested on crafted inputs in test_qgemm.cpp.)"""
    pixels = random_pixels(16, seed=16)
    for bits, some in ((32, False), (8, True)):
        path = _with_accumulator_bits(model_dir / "uniform_w8.qcnn", tmp_path / f"acc{bits}.qcnn", bits)
        counted = qcnn.load(path, count_overflows=True).count_overflows(pixels)
        assert (counted > 0) == some
        images, labels = tmp_path / "x.idx", tmp_path / "y.idx"
        write_idx(images, pixels[:, 0].numpy())
        write_idx(labels, np.zeros(len(pixels), np.uint8))
        res = subprocess.run([str(QCNN_INFER), str(path), "--images", str(images), "--labels", str(labels),
                              "--count-overflows"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout.strip().splitlines()[-1])["overflows"] == counted
        # the checked path changes nothing the model computes
        assert torch.equal(qcnn.load(path)(pixels), qcnn.load(path, count_overflows=True)(pixels))
    with pytest.raises(ValueError, match="load the model with count_overflows"):
        qcnn.load(path).count_overflows(pixels)
    with pytest.raises(ValueError, match="count_overflows must be a bool"):
        qcnn.load(path, count_overflows=1)


@pytest.mark.parametrize("bits", [1, 33, "16"])
def test_bad_accumulator_bits_are_rejected(model_dir, tmp_path, bits):
    path = _with_accumulator_bits(model_dir / "uniform_w8.qcnn", tmp_path / "bad.qcnn", bits)
    with pytest.raises(ValueError, match="accumulator_bits"):
        qcnn.load(path)
