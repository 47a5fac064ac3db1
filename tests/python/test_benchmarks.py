"""The engine benchmarks' --quick mode end to end: each script runs every code path it measures (a tiny baseline
is trained where runs/demo_baseline is missing) and writes the JSON that docs/BENCHMARKS.md and training/results.py
read. Timings here prove nothing; what is checked is that the scripts run and report what they measured."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-fast leaves this file out

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
    own_isa = {r["isa"] for r in doc["layers"] if not r["forced_isa"]}
    assert len(own_isa) == 1
    paths = {r["isa"] for r in doc["layers"]}
    vnni_paths = {"avx512vnni", "amx"}
    assert paths == (own_isa | {"avx2"} if own_isa <= vnni_paths else own_isa)
    for isa in paths:
        kernels = {(r["model"], r["layer"]): r["kernel"] for r in doc["layers"] if r["isa"] == isa}
        assert kernels["binary-A2", "features.4"] == "binary a2"
        assert kernels["binary-A1", "features.4"] == "binary a1"
        # 8-bit activations: the GEMM; on avx512vnni the VNNI one, which also takes the acc16 layers (and on amx,
        # whose tile GEMM takes layers of 64 channels or more, this 48-channel one)
        gemm = "gemm vnni" if isa in vnni_paths else "gemm acc32"
        assert kernels["binary-A8", "features.4"] == gemm
        assert kernels["acc16", "features.4"] == (gemm if isa in vnni_paths else "gemm acc16")
        assert kernels["acc16 stripped", "features.4"] == gemm
        if isa == "avx2" and own_isa <= vnni_paths:  # each pair on the AVX2 path too, and acc16 against VNNI
            for name in ("binary-A2", "acc16"):
                assert rows[f"{name} QCNN_ISA=avx2 batch 256 t2"]["isa"] == "avx2"
            vs = rows[f"acc16 QCNN_ISA=avx2 vs stripped on {own_isa.pop()} batch 256 t1"]
            assert vs["acc"] == vs["anchor_acc"]


def test_bench_engine_quick(tmp_path):
    if not (ROOT / "build" / "qcnn-infer").exists():
        pytest.skip("build/qcnn-infer is not built (make setup builds it)")
    doc = run_quick("bench_engine.py", tmp_path / "engine.json")
    runners = {r["runner"] for r in doc["rows"]}
    assert {"qcnn.load", "qcnn-infer"} <= runners
    assert all(r["qcnn_s"] > 0 and r["anchor_s"] > 0 for r in doc["rows"])
    assert doc["goals"] and doc["settings"]["quick"] is True


def test_bench_torchvision_quick(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("onnxruntime")
    doc = run_quick("bench_torchvision.py", tmp_path / "torchvision.json")
    rows = doc["rows"]
    anchors = {r["anchor"] for r in rows}
    assert {"onnxruntime int8", "onnxruntime fp32", "torch fp32"} <= anchors
    for b in (1, 8):
        for t in (1, 2):
            row = next(r for r in rows
                       if r["case"] == f"mobilenet_v3_large b{b} t{t}" and r["anchor"] == "onnxruntime int8")
            assert row["qcnn_s"] > 0 and row["anchor_s"] > 0
            assert row["ratio"] == pytest.approx(row["anchor_s"] / row["qcnn_s"])
            assert row["rel_err"] < 1.0  # the engine computes the net, not noise
    own = doc["settings"]["nets"]["mobilenet_v3_large"]["own_isa"]
    if own in ("avx512vnni", "amx"):
        assert any(r["forced_isa"] == "avx2" and r["isa"] == "avx2" for r in rows)
    kinds = {r["node kind"] for r in doc["ops"]}
    assert {"add", "mul", "lut"} <= {k.split(" (")[0] for k in kinds}  # alone or fused into their producer
    assert any(k.startswith("conv2d (") and not k.endswith("(fused)") for k in kinds)
    assert doc["summary"] and doc["settings"]["geomean_vs_onnxruntime_int8"] > 0
