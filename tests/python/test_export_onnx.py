"""ONNX export against the float fake-quant reference (runs only where onnx and onnxruntime import)."""
import pytest
import torch

import qcnn
from qcnn.export import reference_forward

from export_helpers import random_cnn_graph, random_pixels

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("kind,bits,residual", [("codebook", 4, False), ("uniform", 4, True), ("binary", 1, False),
                                                ("fixed", 6, True)])
def test_onnx_matches_reference(tmp_path, kind, bits, residual):
    graph = random_cnn_graph(kind, bits, act_bits=4, seed=bits, residual=residual, avg=residual)
    path = qcnn.export_onnx(graph, tmp_path / "m.onnx")
    px = random_pixels(64, seed=9)
    x = graph.normalize(px)
    ref = reference_forward(graph, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    out = torch.from_numpy(out)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.98
    assert torch.allclose(out, ref, atol=1e-3 * ref.abs().max().item() + 1e-4)
    types = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= types
