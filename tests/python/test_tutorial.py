"""docs/TUTORIAL.md's code block runs as written (on small data subsets) and does what its text says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-fast leaves this file out

TUTORIAL = Path(__file__).resolve().parents[2] / "docs" / "TUTORIAL.md"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_tutorial_runs(tmp_path, capsys):
    pytest.importorskip("torchvision")
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed")
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 24  # "about 20 lines"
    exec(compile(code, str(TUTORIAL), "exec"), {"OUT_DIR": str(tmp_path), "TRAIN_IMAGES": 4096})
    out = capsys.readouterr().out
    stem = next(line for line in out.splitlines() if "'reads_input'" in line)
    assert "'reads_input': True" in stem and "'signed': True" in stem and "'bits': 4" in stem
    found = re.search(r"([\d.]+)x smaller, test accuracy ([\d.]+)%, agreement with the PyTorch model ([\d.]+)%", out)
    assert found, out
    ratio, accuracy, agreement = map(float, found.groups())
    # Smaller than float32 (a 0.25-width MobileNetV2's depthwise layers carry a 16-entry codebook per 9-weight
    # channel, so not 8x), well above chance (10%) after two float epochs on a subset, and the deployed form
    # predicts what the PyTorch model predicts.
    assert ratio > 1.0 and accuracy > 50.0 and agreement >= 95.0, out
    assert (tmp_path / "tutorial" / "rounds.jsonl").is_file() and (tmp_path / "model.qcnn").is_file()
