"""Grouped, depthwise and dilated convs and padding='same' through quantize_ -> export -> the integer engine
and ONNX, against the fake-quant model."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.data import FASHION_MEAN, FASHION_STD
from qcnn.exporter import reference_forward, to_graph
from qcnn.exporter.graph import Node
from qcnn.exporter.qfile import read_qcnn, write_qcnn
from qcnn.quantize import calibrate_activations

from export_helpers import FASHION_INPUT

try:
    from torchvision.models.shufflenetv2 import channel_shuffle
except ImportError:  # the tests that need it skip
    channel_shuffle = None


class ConvZoo(nn.Module):
    """Depthwise-separable block (MobileNet), a grouped conv, a dilated conv with padding='same'."""

    def __init__(self, depthwise_stride: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=depthwise_stride, padding=1, groups=16, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.grouped = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.dilated = nn.Conv2d(24, 16, 3, padding="same", dilation=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.dw(x)))
        x = torch.relu(self.pw(x))
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.dilated(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _prepared(weight: dict, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = ConvZoo(**kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model = qcnn.quantize_(model.eval(), {"weight": weight, "act": {"bits": 8}})
    pixels = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = (pixels.float() / 255 - FASHION_MEAN) / FASHION_STD
    calibrate_activations(model, [x[:64]], 1)
    with torch.no_grad():
        reference = model(x)
    return model, pixels, x, reference


U8 = {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}}


def _calibrated(module: nn.Module, seed: int, quant: dict = U8):
    """`module` quantized (in eval mode) and calibrated on 64 random images: (model, pixels, x, fake-quant logits)."""
    model = qcnn.quantize_(module.eval(), quant)
    pixels = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x = (pixels.float() / 255 - FASHION_MEAN) / FASHION_STD
    calibrate_activations(model, [x], 1)
    with torch.no_grad():
        reference = model(x)
    return model, pixels, x, reference


def _assert_deployed(model, pixels, x, reference, tmp_path, onnx: bool = True):
    """The export graph computes what the fake-quant model does; the .qcnn file in the engine and (onnx) the ONNX
    file in onnxruntime predict what it predicts."""
    graph = to_graph(model, **FASHION_INPUT)
    torch.testing.assert_close(reference_forward(graph, x), reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    out = qcnn.load(tmp_path / "m.qcnn")(pixels)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
    assert (out - reference).abs().median() <= 0.03 * reference.abs().max()
    if onnx:
        ort = pytest.importorskip("onnxruntime")
        path = qcnn.export_onnx(model, tmp_path / "m.onnx", **FASHION_INPUT)
        (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
        assert (torch.from_numpy(onnx_out).argmax(1) == reference.argmax(1)).float().mean() >= 0.98
    return graph


@pytest.mark.parametrize("weight", [{"kind": "uniform", "bits": 8}, {"kind": "codebook", "bits": 4},
                                    {"kind": "binary", "bits": 1}], ids=["u8", "c4", "binary"])
@pytest.mark.parametrize("stride", [1, 2])
def test_grouped_depthwise_dilated_convs_run_in_the_engine(tmp_path, weight, stride):
    model, pixels, x, reference = _prepared(weight, depthwise_stride=stride)
    graph = to_graph(model, **FASHION_INPUT)
    convs = {n.name: n for n in graph.nodes if n.op == "conv2d"}
    assert convs["dw"].groups == 16 and convs["grouped"].groups == 4
    assert convs["dilated"].dilation == (2, 2) and convs["dilated"].padding == (2, 2)
    # Same quantized values; BatchNorm folded differently: float rounding only.
    torch.testing.assert_close(reference_forward(graph, x), reference, rtol=1e-3, atol=1e-3 * reference.abs().max().item())
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    engine = qcnn.load(tmp_path / "m.qcnn")
    out = engine(pixels)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
    assert (out - reference).abs().median() <= 0.03 * reference.abs().max()
    kernels = {p.name: p.kernel for p in engine.profile(pixels[:4])}
    assert kernels["dw"] == "depthwise"


def test_grouped_convs_in_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, _, x, reference = _prepared({"kind": "uniform", "bits": 8})
    path = qcnn.export_onnx(model, tmp_path / "m.onnx", **FASHION_INPUT)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert (torch.from_numpy(out).argmax(1) == reference.argmax(1)).float().mean() >= 0.98


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_uneven_same_padding_is_refused_naming_the_node():
    class Even(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 4, padding="same")
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    model = qcnn.quantize_(Even().eval(), U8)
    calibrate_activations(model, [torch.randn(8, 1, 28, 28)], 1)
    with pytest.raises(TypeError, match="node 'conv'.*padding='same' with kernel \\(4, 4\\).*pads unevenly"):
        to_graph(model, **FASHION_INPUT)


class Spellings(nn.Module):
    """Pooling, global pooling and flattening written the ways people write them."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc1 = nn.Linear(12, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = F.max_pool2d(x, 2) if self.spelling != "avg" else F.avg_pool2d(x, 2)
        x = torch.relu(self.conv2(x))
        if self.spelling == "mean":
            x = x.mean((2, 3))
        elif self.spelling == "mean_keepdim":
            x = x.mean(dim=[-2, -1], keepdim=True).flatten(1)
        elif self.spelling == "mean_positional":
            x = torch.flatten(torch.mean(x, (2, 3), True), 1)
        elif self.spelling == "amax":
            x = x.amax((2, 3))
        elif self.spelling == "amax_keepdim":
            x = torch.flatten(torch.amax(x, dim=(-1, -2), keepdim=True), 1)
        elif self.spelling == "view":
            x = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        elif self.spelling == "reshape":
            x = F.adaptive_max_pool2d(x, (1, 1)).reshape(x.shape[0], -1)
        else:
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


@pytest.mark.parametrize("spelling", ["mean", "mean_keepdim", "mean_positional", "amax", "amax_keepdim", "view",
                                      "reshape", "avg"])
def test_functional_pooling_and_flatten_spellings_export(tmp_path, spelling):
    torch.manual_seed(0)
    model = Spellings(spelling)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    model, pixels, x, reference = _calibrated(model, seed=2)
    _assert_deployed(model, pixels, x, reference, tmp_path, onnx=False)


class ConvThenFc(nn.Module):
    """A conv, then `reshape` (what the test writes between them), then a 784 -> 10 linear layer."""

    def __init__(self, reshape):
        super().__init__()
        self.reshape = reshape
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(self.reshape(self.conv(x)))


def _calibrated_conv_then_fc(reshape) -> nn.Module:
    model = qcnn.quantize_(ConvThenFc(reshape).eval(), U8)
    calibrate_activations(model, [torch.randn(8, 1, 28, 28)], 1)
    return model


@pytest.mark.parametrize("reduce", ["mean", "amax"])
def test_a_reduction_over_the_channels_is_refused_naming_the_node(reduce):
    model = _calibrated_conv_then_fc(lambda x: getattr(x, reduce)(1).flatten(1))
    with pytest.raises(TypeError, match=f"node '{reduce}'.*{reduce} exports only over the spatial dims \\(2, 3\\)"):
        to_graph(model, **FASHION_INPUT)


def test_a_view_that_is_not_a_flatten_is_refused_naming_the_node():
    model = _calibrated_conv_then_fc(lambda x: x.view(-1, 28 * 28))
    with pytest.raises(TypeError, match="node 'view'.*keeps each image apart along dim 0"):
        to_graph(model, **FASHION_INPUT)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, ReLU6, 3x3 depthwise, ReLU6, linear 1x1 projection, residual add."""

    def __init__(self, channels: int = 8, expand: int = 4, cap: str = "module"):
        super().__init__()
        hidden = channels * expand
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden))
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.cap = cap
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        x = self.stem(x)
        cap = F.relu6 if self.cap == "function" else (lambda t: F.hardtanh(t, 0.0, 6.0))
        y = cap(self.depthwise(cap(self.expand(x))))
        x = x + self.project(y)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("cap", ["function", "hardtanh"])
def test_mobilenet_v2_block_with_relu6_exports(tmp_path, cap):
    torch.manual_seed(0)
    model = InvertedResidual(cap=cap)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.2, 0.6)
                m.weight.uniform_(4.0, 8.0)  # outputs past 6: the cap binds
    model, pixels, x, reference = _calibrated(model, seed=3)
    with torch.no_grad():
        assert (model.expand(model.stem(x)) > 6).float().mean() > 0.01
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    assert [n.relu_max for n in graph.nodes if n.op == "conv2d"] == [6.0, 6.0, 6.0, None]


@pytest.mark.parametrize("name,kwargs", [("torchvision.resnet18", {"num_classes": 10}),
                                         ("torchvision.mobilenet_v2", {"num_classes": 10, "width_mult": 0.25}),
                                         ("torchvision.mobilenet_v3_small", {"num_classes": 10}),
                                         ("torchvision.efficientnet_b0", {"num_classes": 10}),
                                         ("torchvision.googlenet", {"num_classes": 10, "aux_logits": False,
                                                                    "init_weights": False}),
                                         ("torchvision.squeezenet1_1", {"num_classes": 10}),
                                         ("torchvision.shufflenet_v2_x0_5", {"num_classes": 10}),
                                         ("torchvision.models.densenet:DenseNet",
                                          {"growth_rate": 8, "block_config": (2, 2), "num_init_features": 16,
                                           "num_classes": 10})])
@pytest.mark.slow
def test_torchvision_models_export_and_run_in_both_runtimes(tmp_path, name, kwargs):
    pytest.importorskip("torchvision")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = qcnn.models.create(name, input_adapter="gray28", **kwargs).eval()
    qcnn.quantize_(model, {"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}})
    pixels = torch.randint(0, 256, (48, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    x = (pixels.float() / 255 - FASHION_MEAN) / FASHION_STD
    calibrate_activations(model, [x[:32]], 1)
    with torch.no_grad():
        reference = model(x)
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    out = qcnn.load(tmp_path / "m.qcnn")(pixels)
    # Untrained nets give near-tied logits, so the engine is held to the logits (Hardswish, SiLU and the
    # squeeze-excitation gates of v3 and EfficientNet add integer rounding on 16-bit grids) and the
    # predictions are compared where the logits are apart (ResNet, MobileNetV2, GoogLeNet, SqueezeNet, DenseNet).
    assert (out - reference).abs().median() <= 0.03 * reference.abs().max()
    if any(net in name for net in ("resnet", "mobilenet_v2", "googlenet", "squeezenet", "DenseNet", "shufflenet")):
        assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.95
    path = qcnn.export_onnx(model, tmp_path / "m.onnx", **FASHION_INPUT)
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert (torch.from_numpy(onnx_out).argmax(1) == reference.argmax(1)).float().mean() >= 0.95


class Activations(nn.Module):
    """conv -> an elementwise function -> conv, for every function the engine runs as a lookup table, directly
    before a quantized layer and before a residual add (no quantizer right after it)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.fn(self.conv1(x))
        x = self.fn(self.conv2(x)) + x
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


LUT_FUNCTIONS = {"hardswish": nn.Hardswish(), "hardsigmoid": F.hardsigmoid, "silu": nn.SiLU(), "sigmoid": torch.sigmoid,
                 "tanh": nn.Tanh(), "gelu": nn.GELU(), "leaky_relu": nn.LeakyReLU(0.1),
                 "leaky_relu_fn": lambda t: F.leaky_relu(t, 0.2), "elu": nn.ELU(), "sigmoid_method": lambda t: t.sigmoid()}


@pytest.mark.parametrize("name", sorted(LUT_FUNCTIONS))
def test_elementwise_functions_run_as_lookup_tables(tmp_path, name):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(Activations(LUT_FUNCTIONS[name]), seed=5)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    assert sum(n.op == "lut" for n in graph.nodes) == 2
    # conv1's output only feeds its function: the conv writes the table's 16-bit input grid itself (one rounding,
    # no requantize node); conv2's feeds the function too, whose output meets the residual add
    nodes = {n["name"]: n for n in read_qcnn(tmp_path / "m.qcnn")[0]["nodes"]}
    luts = [n for n in nodes.values() if n["op"] == "lut"]
    assert [nodes[n["inputs"][0]]["op"] for n in luts] == ["conv2d", "conv2d"]
    assert all(nodes[n["inputs"][0]]["qparams"]["qmax"] == 32767 for n in luts)


class BottleneckStem(nn.Module):
    """A ResNet-50 stem: conv, ReLU, max pool, whose output feeds a block's first conv and its downsampling conv
    (both quantize their common input with the same parameters), joined by a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.downsample = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.stem(x)))
        return self.fc(torch.relu(self.conv(x) + self.downsample(x)).mean((2, 3)))


def test_a_value_whose_consumers_share_one_quantizer_is_written_in_its_codes(tmp_path):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(BottleneckStem(), seed=8)
    assert model.conv.act_quant.observed == model.downsample.act_quant.observed
    _assert_deployed(model, pixels, x, reference, tmp_path)
    nodes = {n["name"]: n for n in read_qcnn(tmp_path / "m.qcnn")[0]["nodes"]}
    # the stem writes the convs' uint8 codes (max pooling commutes with the monotone quantization): no wide stem
    # output and no requantize node after it
    assert nodes["stem"]["qparams"]["qmax"] == 255
    assert not any(n["op"] == "requantize" and n["inputs"] in (["stem"], ["pool"]) for n in nodes.values())
    assert nodes["conv"]["inputs"] == nodes["downsample"]["inputs"] == ["pool"]


class InceptionLike(nn.Module):
    """Branches concatenated on the channels (Inception, SqueezeNet's fire module), one branch a max pool of the
    block input, another ending in a ReLU6."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b3 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.head = nn.Conv2d(4 + 6 + 8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.b1(x)), F.relu6(self.b3(x)), self.pool(x)], dim=1)
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def test_channel_concatenation_exports(tmp_path):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(InceptionLike(), seed=6)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    concat = next(n for n in graph.nodes if n.op == "concat")
    assert len(concat.inputs) == 3


def test_cat_along_other_dims_is_refused_naming_the_node():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(torch.cat([y, y], dim=2).mean((2, 3)))

    model = qcnn.quantize_(Wide().eval(), U8)
    calibrate_activations(model, [torch.randn(8, 1, 28, 28)], 1)
    with pytest.raises(TypeError, match="node 'cat'.*exports only along the channels"):
        to_graph(model, **FASHION_INPUT)


def _load_error(tmp_path, doc: dict, tensors: dict, change) -> str:
    """The message qcnn.load raises for a copy of the file (doc, tensors) that `change(doc, tensors)` broke."""

    bad_doc, bad_tensors = json.loads(json.dumps(doc)), dict(tensors)
    change(bad_doc, bad_tensors)
    write_qcnn(tmp_path / "bad.qcnn", bad_doc, bad_tensors)
    with pytest.raises(Exception) as err:
        qcnn.load(tmp_path / "bad.qcnn")
    return str(err.value)


def test_malformed_lut_and_concat_nodes_are_refused_naming_them(tmp_path):
    """A file that lies about a table's coverage, its entries or a concat's inputs gets an error, not a read out
    of bounds."""

    torch.manual_seed(0)
    model = qcnn.quantize_(InceptionLike().eval(), U8)
    calibrate_activations(model, [torch.randn(16, 1, 28, 28)], 1)
    qcnn.export(model, tmp_path / "good.qcnn", verbose=False, **FASHION_INPUT)
    doc, tensors = read_qcnn(tmp_path / "good.qcnn")
    concat = next(n for n in doc["nodes"] if n["op"] == "concat")

    def broken(change) -> str:
        return _load_error(tmp_path, doc, tensors, change)

    def one_input(d, t):
        next(n for n in d["nodes"] if n["op"] == "concat")["inputs"] = concat["inputs"][:1]
    assert "'inputs' of concat must list 2 to 256 values" in broken(one_input)

    def mismatched(d, t):
        next(n for n in d["nodes"] if n["op"] == "concat")["inputs"][0] = "input"
    message = broken(mismatched)
    assert "node 7 'cat'" in message and "declared shape" in message

    # A lut node spliced in after the stem, with a table too short for the stem's codes.
    def short_table(d, t):
        stem = d["nodes"][0]
        lut = {"name": "stem_fn", "op": "lut", "inputs": ["stem"], "shape": stem["shape"], "input_min": 0,
               "table": "stem_fn.table", "qparams": stem["qparams"]}
        d["nodes"].insert(1, lut)
        t["stem_fn.table"] = torch.zeros(4, dtype=torch.int16)
    assert "table covers input codes [0, 3]" in broken(short_table)

    def ceil_not_bool(d, t):
        next(n for n in d["nodes"] if n["op"] == "max_pool2d")["ceil_mode"] = "yes"
    assert "'ceil_mode' must be true or false" in broken(ceil_not_bool)

    def wrong_dtype(d, t):
        short_table(d, t)
        t["stem_fn.table"] = torch.zeros(256, dtype=torch.int32)
    assert "stem_fn.table" in broken(wrong_dtype)


class SqueezeExcite(nn.Module):
    """MobileNetV3's block: Hardswish, a squeeze-excitation gate (pool, 1x1 convs, Hardsigmoid) multiplied into
    the features, in both operand orders."""

    def __init__(self, gate_first: bool):
        super().__init__()
        self.gate_first = gate_first
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.act = nn.Hardswish()
        self.squeeze = nn.Conv2d(16, 4, 1)
        self.excite = nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.stem(x))
        gate = F.hardsigmoid(self.excite(torch.relu(self.squeeze(F.adaptive_avg_pool2d(x, 1)))))
        x = gate * x if self.gate_first else x * gate
        return self.fc(torch.relu(self.head(x)).mean((2, 3)))


@pytest.mark.parametrize("gate_first", [False, True])
def test_squeeze_excitation_multiplies_in_the_engine(tmp_path, gate_first):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(SqueezeExcite(gate_first), seed=7)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    assert [n.op for n in graph.nodes].count("mul") == 1


class CeilPools(nn.Module):
    """Max pooling with ceil_mode=True (SqueezeNet, GoogLeNet): partial windows at the bottom and right edges."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)            # 28 -> 14 (13 without ceil_mode)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = F.max_pool2d(torch.relu(self.conv2(x)), 3, 3, 1, ceil_mode=True)   # 14 -> 5 (4 without)
        return self.fc(torch.flatten(x, 1))


def test_max_pooling_with_ceil_mode_exports(tmp_path):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(CeilPools(), seed=8)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    assert [n.ceil_mode for n in graph.nodes if n.op == "max_pool2d"] == [True, True]


class BatchNormAnywhere(nn.Module):
    """BatchNorm where no conv can absorb it: after a pooling (BN -> ReLU -> conv, DenseNet's pre-activation), after
    a ReLU, after a concatenation, and BatchNorm1d on pooled features before the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.pre = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.after_relu = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 4, 1)
        self.after_cat = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.features = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 2)
        x = self.after_relu(torch.relu(self.conv(torch.relu(self.pre(x)))))
        x = torch.relu(self.after_cat(torch.cat([x, self.branch(x)], 1)))
        return self.fc(self.features(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1)))


def _randomize_batchnorm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales too
                m.bias.uniform_(-0.5, 0.5)


def test_batchnorm_that_folds_into_no_conv_is_an_integer_affine_op(tmp_path):
    torch.manual_seed(0)
    module = BatchNormAnywhere()
    _randomize_batchnorm(module)
    model, pixels, x, reference = _calibrated(module, seed=9)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    affine = [n.name for n in graph.nodes if n.op == "affine"]
    assert affine == ["pre", "after_relu", "after_cat", "features"]
    assert next(n for n in graph.nodes if n.name == "after_cat").relu  # the ReLU after it is fused


class OddPools(nn.Module):
    """Average pooling with padding, ceil_mode and count_include_pad=False, adaptive pooling to sizes that do not
    divide the input (and one larger than it, as VGG's 7 x 7 on small inputs), max and average."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.avg_no_pad_count = nn.AvgPool2d(3, 2, padding=1, count_include_pad=False)
        self.uneven = nn.AdaptiveAvgPool2d((5, 3))
        self.larger = nn.AdaptiveAvgPool2d(7)
        self.fc = nn.LazyLinear(10)

    def forward(self, x):
        x = torch.relu(self.stem(x))                                                      # 28 x 28
        if self.kind == "avg":
            x = F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True)                          # 15 x 15
            x = self.avg_no_pad_count(torch.relu(self.conv(x)))                           # 8 x 8
            x = F.avg_pool2d(x, 3, 3, ceil_mode=True)                                     # 3 x 3, partial windows
        else:
            x = self.uneven(x)                                                            # 5 x 3, uneven windows
            x = F.adaptive_max_pool2d(torch.relu(self.conv(x)), (None, 2))                # 5 x 2
            x = self.larger(x)                                                            # 7 x 7, from 5 x 2
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("kind", ["avg", "adaptive"])
def test_average_and_adaptive_pooling_of_any_geometry_export(tmp_path, kind):
    torch.manual_seed(0)
    module = OddPools(kind)
    module(torch.zeros(1, 1, 28, 28))  # materializes the lazy classifier
    model, pixels, x, reference = _calibrated(module, seed=10)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    ops = [n.op for n in graph.nodes]
    if kind == "avg":
        assert ops.count("avg_pool2d") == 3
    else:
        assert ops.count("adaptive_avg_pool2d") == 2 and ops.count("adaptive_max_pool2d") == 1


class ConvClassifier(nn.Module):
    """SqueezeNet's head: a 1 x 1 conv classifier with a ReLU, then global average pooling and a flatten, so
    the logits are not a conv's or linear layer's output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2, padding=1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(torch.relu(self.stem(x))), 1)


def test_a_conv_classifier_before_pooling_exports_with_a_dequantized_output(tmp_path):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(ConvClassifier(), seed=11)
    _assert_deployed(model, pixels, x, reference, tmp_path)
    doc, _ = read_qcnn(tmp_path / "m.qcnn")
    assert doc["nodes"][-1]["op"] == "dequantize" and doc["output"] == doc["nodes"][-1]["name"]
    out = qcnn.load(tmp_path / "m.qcnn")(pixels)
    assert out.shape == (64, 10) and bool((out >= 0).all())  # after the ReLU and the mean


class ChannelPieces(nn.Module):
    """ShuffleNet's channel handling: chunk, split (sizes and a size), concatenation and torchvision's
    channel_shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 12, 3, padding=1)
        self.left = nn.Conv2d(6, 6, 3, padding=1)
        self.right = nn.Conv2d(5, 6, 1)
        self.head = nn.Conv2d(18, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        c, d = torch.split(b, [1, 5], dim=1)
        e = x.split(4, 1)[2]
        y = torch.cat([torch.relu(self.left(a)), c, torch.relu(self.right(d)), e, c], 1)  # 6 + 1 + 6 + 4 + 1
        y = channel_shuffle(y, 2)
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def test_chunk_split_and_channel_shuffle_export(tmp_path):
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(ChannelPieces(), seed=14)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    gathers = [n.channels for n in graph.nodes if n.op == "gather_channels"]
    assert gathers == [("chunk", 2, 0), ("chunk", 2, 1), ("split", (1, 5), 0), ("split", (1, 5), 1),
                       ("split", 4, 2), ("shuffle", 2)]


def test_malformed_affine_pool_and_dequantize_nodes_are_refused_naming_them(tmp_path):

    torch.manual_seed(0)
    module = BatchNormAnywhere()
    _randomize_batchnorm(module)
    model, *_ = _calibrated(module, seed=13)
    qcnn.export(model, tmp_path / "good.qcnn", verbose=False, **FASHION_INPUT)
    doc, tensors = read_qcnn(tmp_path / "good.qcnn")

    def broken(change) -> str:
        return _load_error(tmp_path, doc, tensors, change)

    def big_shift(d, t):
        t["pre.shift"] = torch.full_like(t["pre.shift"], 63)
    assert "tensor 'pre.shift'" in broken(big_shift) and "above 62" in broken(big_shift)

    def big_bias(d, t):
        t["pre.bias"] = torch.full_like(t["pre.bias"], 2 ** 62)
    assert "tensor 'pre.bias'" in broken(big_bias)

    def short_multiplier(d, t):
        t["pre.multiplier"] = t["pre.multiplier"][:3].clone()
    assert "pre.multiplier" in broken(short_multiplier)

    def zero_size(d, t):
        pool = next(n for n in d["nodes"] if n["op"] == "global_avg_pool")
        pool.update(op="adaptive_avg_pool2d", output_size=[0, 1])
    assert "output_size" in broken(zero_size)

    def dequantize_in_the_middle(d, t):
        first = d["nodes"][0]
        d["nodes"].insert(1, {"name": "early", "op": "dequantize", "inputs": [first["name"]], "shape": first["shape"],
                              "input_qparams": first["qparams"], "qparams": None})
    def gather_out_of_range(d, t):
        first = d["nodes"][0]
        d["nodes"].insert(1, {"name": "pick", "op": "gather_channels", "inputs": [first["name"]],
                              "shape": [2, *first["shape"][1:]], "index": "pick.index", "qparams": first["qparams"]})
        t["pick.index"] = torch.tensor([0, first["shape"][0]], dtype=torch.int32)
    assert "tensor 'pick.index'" in broken(gather_out_of_range) and "is not a channel" in broken(gather_out_of_range)

    assert "node 1 'early'" in broken(dequantize_in_the_middle)
    assert "only the last node may be float" in broken(dequantize_in_the_middle)


class HandShuffle(nn.Module):
    """Channel shuffles written out by hand, the three usual ways, and view / transpose chains that are a flatten."""

    def __init__(self, spelling: str):
        super().__init__()
        self.spelling = spelling
        self.stem = nn.Conv2d(1, 12, 3, padding=1)
        self.mid = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=3)
        self.fc = nn.Linear(12 * 14 * 14, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        if self.spelling == "size":  # ShuffleNet v1 / v2 papers' code
            b, c, h, w = x.size()
            x = x.view(b, 3, c // 3, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        elif self.spelling == "permute":
            n = x.shape[0]
            x = x.reshape(n, 4, 3, 28, 28).permute(0, 2, 1, 3, 4).reshape(n, 12, 28, 28)
        else:  # torch functions, -1 for the batch
            x = torch.flatten(torch.transpose(x.view(-1, 2, 6, 28, 28), 1, 2), 1, 2)
        y = torch.relu(self.mid(x))
        return self.fc(y.permute(0, 1, 2, 3).reshape(y.size(0), 12, -1).flatten(1))


@pytest.mark.parametrize("spelling", ["size", "permute", "functions"])
def test_a_channel_shuffle_written_by_hand_exports_as_a_channel_permutation(tmp_path, spelling):
    torch.manual_seed(0)
    model, pixels, x, reference = _calibrated(HandShuffle(spelling), seed=15)
    graph = _assert_deployed(model, pixels, x, reference, tmp_path)
    groups = {"size": 3, "permute": 4, "functions": 2}[spelling]
    gathers = [n for n in graph.nodes if n.op == "gather_channels"]
    assert len(gathers) == 1 and gathers[0].channels[0] == "index"
    # the same permutation as torchvision's channel_shuffle into that many groups
    shuffle = Node("shuffle", "gather_channels", ["x"], channels=("shuffle", groups))
    assert gathers[0].channel_index(12) == shuffle.channel_index(12)
    assert [n.op for n in graph.nodes][-2:] == ["flatten", "linear"]


class BadRearrangement(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        x = self.stem(x)
        if self.kind == "spatial":
            x = x.transpose(2, 3)  # moves pixels inside each channel
        elif self.kind == "batch":
            x = x.view(64, -1)  # the batch size written as a number
        elif self.kind == "mixes":
            x = x.transpose(0, 1).contiguous().view(-1, 4, 28, 28)  # mixes the images
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("kind,message", [("spatial", "a flatten or as a permutation of the channels"),
                                          ("batch", "keep the batch as its first size"),
                                          ("mixes", "keeps each image apart")])
def test_view_transpose_chains_that_are_not_a_channel_permutation_are_refused(kind, message):
    model, *_ = _calibrated(BadRearrangement(kind), seed=16)
    with pytest.raises(TypeError, match=message):
        to_graph(model, **FASHION_INPUT)
