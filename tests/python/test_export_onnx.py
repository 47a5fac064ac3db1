"""qcnn.export_onnx writes the QDQ graph of onnxruntime's own static quantizer: its default session runs every conv and
linear layer on integer kernels and predicts what the integer engine (qcnn.load) predicts. Runs only where onnx and
onnxruntime import."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.exporter import Graph, lower_graph, to_graph
from qcnn.exporter.onnx_export import export_onnx
from qcnn.quantize import calibrate_activations

from export_helpers import FASHION, FASHION_INPUT, random_cnn_graph, random_pixels, read_idx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

# Conv / Gemm / MatMul on float kernels, as onnxruntime's optimized graph names them (its own domains included).
FLOAT_LAYERS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")
WEIGHTS = {"u8": {"kind": "uniform", "bits": 8}, "c4": {"kind": "codebook", "bits": 4},
           "u4": {"kind": "uniform", "bits": 4}, "binary": {"kind": "binary", "bits": 1}}


class ResidualNet(nn.Module):
    """conv-bn-relu, conv-bn-relu6, a residual conv-bn + add + relu, pooling (max, average) and a linear layer."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width)
        self.conv3, self.bn3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width * 9, 10)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu6(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.conv3(x)) + x)
        return self.fc(torch.flatten(F.avg_pool2d(x, 2), 1))


@pytest.fixture(scope="module")
def fashion():
    """ResidualNet trained two epochs on 6000 Fashion-MNIST images (about 85% test accuracy); 256 training images to
    calibrate on; the 10000 test images."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed")
    train = torch.from_numpy(read_idx(FASHION / "train-images-idx3-ubyte.gz")[:6000].copy())[:, None]
    labels = torch.from_numpy(read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:6000].astype(np.int64))
    test = torch.from_numpy(read_idx(FASHION / "t10k-images-idx3-ubyte.gz").copy())[:, None]
    normalize = Graph(FASHION_INPUT["input_shape"], FASHION_INPUT["mean"], FASHION_INPUT["std"]).normalize
    torch.manual_seed(0)
    net = ResidualNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains faster on one thread, and far faster on a busy machine
    try:
        for _ in range(2):
            for start in range(0, 6000, 64):
                opt.zero_grad()
                F.cross_entropy(net(normalize(train[start:start + 64])), labels[start:start + 64]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return {"net": net.eval(), "calib": train[:256], "test": test, "normalize": normalize}


def quantized_graph(fashion, weight: dict, act_bits: int = 8):
    model = qcnn.quantize_(copy.deepcopy(fashion["net"]), {"weight": weight, "act": {"bits": act_bits}})
    calibrate_activations(model, [fashion["normalize"](fashion["calib"])], 1)
    return to_graph(model.eval(), **FASHION_INPUT)


def optimized(path, tmp_path):
    """The graph onnxruntime's default session runs (optimized_model_filepath at ORT_ENABLE_ALL, the default)."""
    options = ort.SessionOptions()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # its notice that an NCHWc-optimized file is specific to this machine
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def onnx_predictions(path, graph, pixels):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": graph.normalize(pixels).numpy()})[0]).argmax(1)


def engine_predictions(graph, pixels, tmp_path):
    qcnn.export(graph, tmp_path / "m.qcnn", verbose=False)
    return qcnn.load(tmp_path / "m.qcnn")(pixels).argmax(1)


def op_counts(model) -> dict:
    counts = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("weights,act_bits", [("u8", 8), ("c4", 8), ("u4", 8), ("binary", 2)])
@pytest.mark.slow
def test_every_layer_runs_on_integer_kernels(tmp_path, fashion, weights, act_bits):
    """With calibration images every conv and the linear layer fuse into integer kernels (QLinearConv, QGemm), the
    residual add and the average pool into QLinearAdd and QLinearAveragePool; 4-bit weights as int8 initializers."""
    graph = quantized_graph(fashion, WEIGHTS[weights], act_bits)
    path = export_onnx(graph, tmp_path / "m.onnx", calibration=fashion["calib"])
    counts = op_counts(optimized(path, tmp_path))
    assert not {op: n for op, n in counts.items() if op in FLOAT_LAYERS}
    assert counts.get("QLinearConv") == 3 and counts.get("QGemm") == 1
    assert counts.get("QLinearAdd") == 1 and counts.get("QLinearAveragePool") == 1
    exported = onnx.load(str(path))
    types = {i.name: i.data_type for i in exported.graph.initializer}
    producers = {out: n for n in exported.graph.node for out in n.output}
    for node in exported.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert types[producers[node.input[1]].input[0]] == onnx.TensorProto.INT8
    if act_bits == 8:  # ReLU and ReLU6 are the saturation of the QuantizeLinear after the layer: no Relu, no Clip
        assert not {"Relu", "Clip"} & set(op_counts(exported))


def test_without_calibration_only_the_layers_writing_wide_values_stay_float(tmp_path, fashion):
    """The exact export: a conv whose output the program keeps wider than 8 bits (here the residual branch and the
    conv whose output both it and the add read) runs on float kernels, every other layer on integer ones."""
    graph = quantized_graph(fashion, WEIGHTS["u8"])
    doc, _, _ = lower_graph(graph)
    wide = [n["name"] for n in doc["nodes"] if n["op"] == "conv2d" and n["qparams"]["qmax"] > 255]
    assert len(wide) == 2
    counts = op_counts(optimized(export_onnx(graph, tmp_path / "m.onnx"), tmp_path))
    assert sum(counts.get(op, 0) for op in FLOAT_LAYERS) == len(wide)
    assert counts.get("QLinearConv") == 3 - len(wide) and counts.get("QGemm") == 1


@pytest.mark.parametrize("weights", ["u8", "c4", "u4"])
@pytest.mark.parametrize("calibrated", [False, True], ids=["exact", "calibrated"])
def test_onnx_agrees_with_the_engine(tmp_path, fashion, weights, calibrated):
    """Top-1 predictions of onnxruntime's default session on the 10000 Fashion-MNIST test images against the
    engine's. The exact export differs from the engine only by the int32 bias grid and the float rounding of
    onnxruntime's requantization; the calibrated one also rounds the values past 8 bits onto 8-bit grids."""
    graph = quantized_graph(fashion, WEIGHTS[weights])
    path = export_onnx(graph, tmp_path / "m.onnx", calibration=fashion["calib"] if calibrated else None)
    pixels = fashion["test"]
    agreement = (onnx_predictions(path, graph, pixels) == engine_predictions(graph, pixels, tmp_path)).float().mean()
    assert agreement >= (0.995 if calibrated else 0.999)


@pytest.mark.parametrize("kind,bits,act_bits", [("uniform", 8, 8), ("codebook", 4, 4), ("binary", 1, 2),
                                                ("fixed", 6, 8)])
def test_bias_is_int32_on_the_input_times_weight_scale_grid(tmp_path, kind, bits, act_bits):
    """Each Conv / Gemm reads DequantizeLinear(int8 weights, s_w, zero point 0, axis 0) and DequantizeLinear(int32
    bias, scale float32(s_x) * s_w exactly, zero point 0): nothing for onnxruntime to re-quantize. The integers times
    s_w are the graph's weights with BatchNorm folded in, and the bias codes its bias to half a step."""
    graph = random_cnn_graph(kind, bits, act_bits=act_bits, seed=3, residual=True)
    model = onnx.load(str(export_onnx(graph, tmp_path / "m.onnx", calibration=random_pixels(32, seed=2))))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    sources = {n.name: n for n in graph.nodes}
    layers = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 3
    for layer in layers:
        x_dq, w_dq, b_dq = (producers[name] for name in layer.input)
        assert x_dq.op_type == w_dq.op_type == b_dq.op_type == "DequantizeLinear"
        x_scale = inits[x_dq.input[1]]
        w_int, w_scale, w_zp = (inits[name] for name in w_dq.input)
        b_int, b_scale, b_zp = (inits[name] for name in b_dq.input)
        assert w_int.dtype == np.int8 and np.abs(w_int).max() <= 127 and not w_zp.any()
        assert b_int.dtype == np.int32 and b_zp.dtype == np.int32 and not b_zp.any()
        assert x_scale.shape == () and b_scale.dtype == np.float32
        np.testing.assert_array_equal(b_scale, x_scale * w_scale)
        source = sources[layer.name.removesuffix(".sum")]
        m = source.weight.out_channels
        bn = source.bn_scale.double().numpy() if source.bn_scale is not None else np.ones(m)
        shift = source.bn_shift.double().numpy() if source.bn_shift is not None else np.zeros(m)
        bias = bn * (source.bias.double().numpy() if source.bias is not None else np.zeros(m)) + shift
        weights = source.weight.dequantize().double().numpy().reshape(m, -1) * bn[:, None]
        np.testing.assert_allclose(w_int.reshape(m, -1) * w_scale.astype(np.float64)[:, None], weights,
                                   rtol=1e-6, atol=1e-9)
        assert np.all(np.abs(b_int * b_scale.astype(np.float64) - bias) <= b_scale / 2 * (1 + 1e-6))


@pytest.mark.parametrize("kind,bits,act_bits,residual", [("codebook", 4, 8, False), ("uniform", 4, 4, True),
                                                         ("binary", 1, 2, False), ("fixed", 6, 8, True)])
def test_random_graphs_follow_the_engine(tmp_path, kind, bits, act_bits, residual):
    """Random graphs of every weight kind (4-bit activations, global average pooling, a residual add): the exact
    export predicts what the engine does on random images (untrained nets give near-tied logits, hence 98%), and a
    graph without values past 8 bits runs on integer kernels only, except, without calibration, the layers that write
    codes narrower than 8 bits (the 2-bit activations of the binary graph: exact ties, kept on the float path)."""
    graph = random_cnn_graph(kind, bits, act_bits=act_bits, seed=bits, residual=residual, avg=residual)
    path = export_onnx(graph, tmp_path / "m.onnx")
    pixels = random_pixels(256, seed=9)
    agreement = (onnx_predictions(path, graph, pixels) == engine_predictions(graph, pixels, tmp_path)).float().mean()
    assert agreement >= 0.98
    if not residual:
        counts = op_counts(optimized(path, tmp_path))
        if act_bits < 8:
            assert counts.get("Conv") == 2 and not counts.get("QLinearConv")
            counts = op_counts(optimized(export_onnx(graph, tmp_path / "c.onnx", calibration=pixels), tmp_path))
        assert not {op: n for op, n in counts.items() if op in FLOAT_LAYERS}
        assert counts.get("QLinearConv") == 2 and counts.get("QGemm") == 1


def test_weights_past_int8_stay_exact_on_float_kernels(tmp_path):
    """12-bit fixed-point weights do not fit int8: int16 initializers behind DequantizeLinear, float kernels, and the
    engine's logits."""
    graph = random_cnn_graph("fixed", 12, act_bits=8, seed=12)
    path = export_onnx(graph, tmp_path / "m.onnx")
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    weights = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    producers = {out: n for n in model.graph.node for out in n.output}
    assert {inits[producers[w].input[0]] for w in weights} == {onnx.TensorProto.INT16}
    pixels = random_pixels(64, seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"input": graph.normalize(pixels).numpy()})[0])
    qcnn.export(graph, tmp_path / "m.qcnn", verbose=False)
    engine = qcnn.load(tmp_path / "m.qcnn")(pixels)
    torch.testing.assert_close(out, engine, rtol=0, atol=1e-4 * engine.abs().max().item())


def test_public_export_onnx_takes_calibration(tmp_path, fashion):
    """qcnn.export_onnx(model, path, calibration=...) reaches the calibrated export; bad calibration is named."""
    model = qcnn.quantize_(copy.deepcopy(fashion["net"]), {"weight": WEIGHTS["u8"], "act": {"bits": 8}})
    calibrate_activations(model, [fashion["normalize"](fashion["calib"])], 1)
    model.eval()
    path = qcnn.export_onnx(model, tmp_path / "m.onnx", calibration=fashion["calib"].numpy(), **FASHION_INPUT)
    assert not {op for op in op_counts(optimized(path, tmp_path)) if op in FLOAT_LAYERS}
    for bad in (fashion["calib"].float(), fashion["calib"][:, :, :27], fashion["calib"][:0], [1, 2, 3]):
        with pytest.raises(ValueError, match=r"export_onnx: calibration must be uint8 images \[N >= 1, 1, 28, 28\]"):
            qcnn.export_onnx(model, tmp_path / "bad.onnx", calibration=bad, **FASHION_INPUT)
    assert not (tmp_path / "bad.onnx").exists()
