"""The engine's fused plan (pointwise nodes run inside the node that produces their input) against the unfused one:
bit-identical logits on torchvision networks and on random graphs of every pointwise op, at 1 and 2 threads, batch 1
and more, and on every kernel path this CPU has."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.data import FASHION_MEAN, FASHION_STD
from qcnn._ops.engine import engine_isas
from qcnn.quantize import calibrate_activations

from export_helpers import FASHION_INPUT

POINTWISE = {"requantize", "affine", "add", "mul", "relu", "lut"}


def _exported(model: nn.Module, tmp_path, quant: dict, seed: int, images: int = 12):
    """`model` quantized, calibrated on random images and exported: (path, uint8 pixels)."""
    model = qcnn.quantize_(model.eval(), quant)
    pixels = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    calibrate_activations(model, [(pixels[:8].float() / 255 - FASHION_MEAN) / FASHION_STD], 1)
    path = tmp_path / "m.qcnn"
    qcnn.export(model, path, verbose=False, **FASHION_INPUT)
    return path, pixels


def _assert_fused_equals_unfused(path, pixels, expect_fused: bool = True):
    unfused = qcnn.load(path, fuse=False, threads=1)
    reference = unfused(pixels)
    for threads in (1, 2):
        fused = qcnn.load(path, threads=threads)
        assert torch.equal(fused(pixels), reference), f"threads={threads}"
        assert torch.equal(fused(pixels[:1]), reference[:1]), f"batch 1, threads={threads}"
    kernels = [layer.kernel for layer in qcnn.load(path).profile(pixels[:1])]
    assert ("fused" in kernels) == expect_fused
    assert "fused" not in [layer.kernel for layer in unfused.profile(pixels[:1])]
    return kernels


TORCHVISION = [("torchvision.resnet18", {"num_classes": 10}),
               ("torchvision.mobilenet_v2", {"num_classes": 10, "width_mult": 0.25}),
               ("torchvision.mobilenet_v3_small", {"num_classes": 10}),
               ("torchvision.efficientnet_b0", {"num_classes": 10}),
               ("torchvision.shufflenet_v2_x0_5", {"num_classes": 10}),
               ("torchvision.googlenet", {"num_classes": 10, "aux_logits": False, "init_weights": False})]


@pytest.mark.parametrize("name,kwargs", TORCHVISION, ids=[name.split(".")[1] for name, _ in TORCHVISION])
def test_torchvision_nets_fused_equal_unfused(tmp_path, name, kwargs):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = qcnn.models.create(name, input_adapter="gray28", **kwargs)
    path, pixels = _exported(model, tmp_path, {"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}}, seed=3)
    _assert_fused_equals_unfused(path, pixels)


class RandomBlocks(nn.Module):
    """A random stack of the blocks deployed nets are made of: conv + BN + an activation (ReLU, ReLU6, SiLU,
    Hardswish, none), depthwise, residual adds, squeeze-excitation gates (global pool, two 1x1 convs, sigmoid, mul),
    max pooling; then global average or (odd seeds) max pooling and a linear classifier."""

    KINDS = ("conv", "depthwise", "residual", "se", "pool")

    def __init__(self, seed: int, channels: int = 16, blocks: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pick = lambda n: int(torch.randint(0, n, (1,), generator=g))
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.kinds = [self.KINDS[pick(len(self.KINDS))] for _ in range(blocks)]
        acts = [nn.ReLU(), nn.ReLU6(), nn.SiLU(), nn.Hardswish(), nn.Identity()]
        self.blocks = nn.ModuleList()
        for kind in self.kinds:
            act = acts[pick(len(acts))]
            if kind == "conv":
                block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), act)
            elif kind == "depthwise":
                block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                                      nn.BatchNorm2d(channels), act)
            elif kind == "residual":
                block = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), act)
            elif kind == "se":
                block = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, 4, 1), nn.SiLU(),
                                      nn.Conv2d(4, channels, 1), nn.Sigmoid())
            else:
                block = nn.MaxPool2d(2) if pick(2) else nn.Identity()
            self.blocks.append(block)
        self.fc = nn.Linear(channels, 10)
        self.global_pool = F.adaptive_max_pool2d if seed % 2 else F.adaptive_avg_pool2d

    def forward(self, x):
        x = self.stem(x)
        for kind, block in zip(self.kinds, self.blocks):
            if kind == "residual":
                x = x + block(x)
            elif kind == "se":
                x = x * block(x)
            else:
                x = block(x)
        return self.fc(self.global_pool(x, 1).flatten(1))


def _bn_statistics(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("weight", [{"kind": "uniform", "bits": 8}, {"kind": "codebook", "bits": 4}],
                         ids=["u8", "c4"])
def test_random_graphs_fused_equal_unfused(tmp_path, seed, weight):
    torch.manual_seed(seed)
    model = _bn_statistics(RandomBlocks(seed), seed)
    path, pixels = _exported(model, tmp_path, {"weight": weight, "act": {"bits": 8}}, seed=seed)
    _assert_fused_equals_unfused(path, pixels)


@pytest.mark.slow


def test_every_kernel_path_fuses_bit_exactly(tmp_path):
    """The same file, fused and not, under each QCNN_ISA this CPU runs (the path is chosen at load)."""
    torch.manual_seed(11)
    path, pixels = _exported(_bn_statistics(RandomBlocks(11, blocks=8), 11), tmp_path,
                             {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}}, seed=11)
    torch.save(pixels, tmp_path / "pixels.pt")
    script = ("import sys, torch, qcnn\n"
              "px = torch.load(sys.argv[2])\n"
              "a = qcnn.load(sys.argv[1], fuse=False, threads=1)(px)\n"
              "for t in (1, 2):\n"
              "    assert torch.equal(qcnn.load(sys.argv[1], threads=t)(px), a)\n"
              "print(qcnn.load(sys.argv[1]).isa)\n")
    seen = set()
    for isa in engine_isas():
        env = dict(os.environ, QCNN_ISA=isa)
        run = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "pixels.pt")], env=env,
                             capture_output=True, text=True)
        if "cannot run that path" in run.stderr or "unknown path" in run.stderr:
            continue
        assert run.returncode == 0, run.stderr[-2000:]
        seen.add(run.stdout.strip())
    assert "scalar" in seen


def test_hand_built_files_fused_equal_unfused(tmp_path):
    """The fuzzer's hand-built seeds (tests/fuzz/make_seeds.py): pools of pools, a global max pool read by a global
    average pool, residual adds over requantized copies. Fused and not, 1 and 2 threads, batch 3."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
    import make_seeds
    for name, data in make_seeds.hand_built().items():
        path = tmp_path / name
        path.write_bytes(data)
        net = qcnn.load(path, fuse=False, threads=1)
        pixels = torch.randint(0, 256, (3, *net.input_shape), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(len(name)))
        reference = net(pixels)
        for threads in (1, 2):
            assert torch.equal(qcnn.load(path, threads=threads)(pixels), reference), f"{name}, threads={threads}"


def test_fuse_must_be_a_bool(tmp_path):
    path, _ = _exported(RandomBlocks(0, blocks=1), tmp_path, {"weight": {"kind": "uniform", "bits": 8},
                                                               "act": {"bits": 8}}, seed=0, images=8)
    with pytest.raises(ValueError, match="fuse"):
        qcnn.load(path, fuse=1)
