"""The training scripts under torchrun with 2 CPU processes (gloo) on a small subset (also on GPU machines)."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import qcnn

pytestmark = pytest.mark.slow  # make test-fast leaves this file out

ROOT = Path(__file__).resolve().parents[2]
HAVE_QUANT_OPS = hasattr(qcnn.ops, "fake_quant") and importlib.util.find_spec("qcnn.codebook") is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, config, tmp_path, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "training" / script), "--config", str(config), "--no-progress", "--device", "cpu", *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _write(tmp_path, name, **extra):
    cfg = {"name": name, "out_dir": str(tmp_path / "runs"),
           "data": {"train_subset": 512, "val_subset": 256, "test_subset": 256, "batch_size": 64},
           "model": {"name": "vgg_small", "kwargs": {"width": 4}},
           "training": {"epochs": 2, "lr": 0.05, "threads": 1}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ddp_float_then_quantized(tmp_path):
    out = _torchrun("train.py", _write(tmp_path, "baseline"), tmp_path)
    assert out.count("float model: val acc") == 1  # only rank 0 reports and writes
    summary = json.loads((tmp_path / "runs" / "baseline" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert len((tmp_path / "runs" / "baseline" / "epochs.jsonl").read_text().splitlines()) == 2
    if not HAVE_QUANT_OPS:
        pytest.skip("qcnn.ops.fake_quant / quantize_to_codebook not built yet")
    quant = {"weight": {"kind": "codebook", "bits": 2, "train_centroids": True}, "act": {"bits": 4},
             "calibration_batches": 2}
    cfg = _write(tmp_path, "quant", quant=quant, baseline=str(tmp_path / "runs" / "baseline" / "model.pt"),
                 retrain={"max_rounds": 2, "min_rounds": 2, "epochs_per_round": 1})
    _torchrun("retrain.py", cfg, tmp_path)
    summary = json.loads((tmp_path / "runs" / "quant" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rounds"] == 2
    assert summary["folded_test_acc"] == pytest.approx(summary["quant_test_acc"], abs=1.0)
