"""The engine benchmarks' --quick mode end to end: each script runs every code path it measures (a tiny baseline
is trained where runs/demo_baseline is missing) and writes the JSON that docs/BENCHMARKS.md and training/results.py
read. Timings here prove nothing; what is checked is that the scripts run and report what they measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_bench_kernels_quick(tmp_path):
    doc = run_quick("bench_kernels.py", tmp_path / "kernels.json")
    rows = {r["case"]: r for r in doc["rows"]}
    for name in ("binary-A1", "binary-A2", "binary-A4", "binary-A8", "acc16"):
        for threads in (1, 2):
            row = rows[f"{name} batch 256 t{threads}"]
            assert row["qcnn_s"] > 0 and row["anchor_s"] > 0
            assert row["ratio"] == pytest.approx(row["anchor_s"] / row["qcnn_s"])
    # the acc16 file and its copy without accumulator_bits hold the same integers: the same predictions
    assert rows["acc16 batch 256 t1"]["acc"] == rows["acc16 batch 256 t1"]["anchor_acc"]
    kernels = {(r["model"], r["layer"]): r["kernel"] for r in doc["layers"]}
    assert kernels["binary-A2", "features.4"] == "binary a2"
    assert kernels["binary-A1", "features.4"] == "binary a1"
    assert kernels["binary-A8", "features.4"] == "gemm acc32"  # 8-bit activations: the GEMM
    assert kernels["acc16", "features.4"] == "gemm acc16"
    assert kernels["acc16 stripped", "features.4"] == "gemm acc32"


def test_bench_engine_quick(tmp_path):
    if not (ROOT / "build" / "qcnn-infer").exists():
        pytest.skip("build/qcnn-infer is not built (make setup builds it)")
    doc = run_quick("bench_engine.py", tmp_path / "engine.json")
    runners = {r["runner"] for r in doc["rows"]}
    assert {"qcnn.load", "qcnn-infer"} <= runners
    assert all(r["qcnn_s"] > 0 and r["anchor_s"] > 0 for r in doc["rows"])
    assert doc["goals"] and doc["settings"]["quick"] is True
