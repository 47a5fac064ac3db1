"""qcnn.load's bounds on what a file can make the engine do: every node's work counted at load, a batch's workspace
within max_activation_bytes_per_image at any thread count, the workspace freed with the model, threads checked
where the engine takes them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qcnn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))
import make_seeds  # noqa: E402  (hand-built .qcnn files)


def wide_model(path: Path, c: int, h: int, w: int) -> Path:
    """A [c, 1, 1] input pooled up to [c, h, w] uint8 (the arena), then global max pool and a linear layer."""
    b = make_seeds.Builder([c, 1, 1])
    b.add("up", "adaptive_max_pool2d", ["input"], [c, h, w], output_size=[h, w])
    b.add("g", "global_max_pool", ["up"], [c, 1, 1])
    b.add("flat", "flatten", ["g"], [c])
    b.weighted("fc", "linear", ["flat"], [2], c, 2, (1, 1), (1, 1), (0, 0), [-1, 1], float_out=True)
    path.write_bytes(b.bytes())
    return path


def test_pooling_windows_count_against_the_ops_limit(tmp_path):
    bomb = tmp_path / "bomb.qcnn"
    bomb.write_bytes(make_seeds.pool_bomb())
    assert len(bomb.read_bytes()) < 4096
    with pytest.raises(ValueError, match=r"node 1 'pool'.*limit of 4294967296 element operations per image"):
        qcnn.load(bomb)
    net = qcnn.load(bomb, max_ops_per_image=2**62)  # loads when the caller accepts the cost (not run here)
    assert net.macs_per_image == 2 and net.ops_per_image > 1024**2 * 1025**2


def test_batch_workspace_stays_within_the_activation_bound(tmp_path):
    path = wide_model(tmp_path / "wide.qcnn", 16, 256, 256)  # 1 MiB arena per image
    pixels = torch.randint(0, 256, (6, 16, 1, 1), dtype=torch.uint8)
    one = qcnn.load(path, threads=1)
    per_image = one.peak_activation_bytes(6)
    four = qcnn.load(path, threads=4)
    assert four.peak_activation_bytes(6) == 4 * per_image  # the model's threads, not the OpenMP default
    four.threads = 2
    assert four.peak_activation_bytes(6) == 2 * per_image
    bounded = qcnn.load(path, threads=4, max_activation_bytes_per_image=per_image + per_image // 2)
    assert bounded.peak_activation_bytes(6) <= per_image + per_image // 2
    want = one(pixels)
    assert torch.equal(bounded(pixels), want) and torch.equal(four(pixels), want)


def test_engine_refuses_threads_past_the_limit(tmp_path):
    net = qcnn.load(wide_model(tmp_path / "wide.qcnn", 4, 8, 8))
    pixels = torch.zeros(1, 4, 1, 1, dtype=torch.uint8)
    for threads in (4097, 100000, 2**31 - 1):  # straight to the engine, past the Python setter
        with pytest.raises(ValueError, match="threads must be in \\[0, 4096\\]"):
            net.engine.run(pixels, threads)
        with pytest.raises(ValueError, match="threads must be in \\[0, 4096\\]"):
            net.engine.peak_activation_bytes(1, threads)


_RSS_SCRIPT = """
import gc, sys, torch, qcnn
def rss_mib():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
pixels = torch.zeros(8, 64, 1, 1, dtype=torch.uint8)
before = rss_mib()
grown = []
for _ in range(2):
    net = qcnn.load(sys.argv[1], threads=4)
    net(pixels)
    grown.append(rss_mib() - before)
    del net
    gc.collect()
print(grown[0], grown[1], rss_mib() - before)
"""


def test_workspace_is_freed_with_the_model(tmp_path):
    path = wide_model(tmp_path / "wide.qcnn", 64, 1024, 1024)  # 64 MiB arena per image, 4 threads at batch 8
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second, left = map(float, out.stdout.split())
    assert first > 200 and second > 200  # the runs did hold four arenas
    assert left < 32, f"{left:.0f} MiB still held after the models were deleted"


@pytest.mark.parametrize("batch", [1.5, True, -1, "8"])
def test_peak_activation_bytes_names_a_bad_batch(tmp_path, batch):
    net = qcnn.load(wide_model(tmp_path / "wide.qcnn", 4, 8, 8))
    with pytest.raises(ValueError, match=f"peak_activation_bytes: batch must be an int .* got {batch!r}"):
        net.peak_activation_bytes(batch)
