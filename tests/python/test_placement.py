"""Quantizer placement from the graph: the input quantizer goes to every layer that reads the network input,
and activation quantizers with signed: auto become signed exactly when their calibration data is negative."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn.data import FASHION_MEAN, FASHION_STD
from qcnn.quantize import calibrate_activations, input_readers, quant_layers
from qcnn.quantizers.act import QuantAct
from export_helpers import FASHION_INPUT  # noqa: E402

QUANT = {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 4}, "input_act": {"bits": 8, "signed": True}}


class ClassifierFirst(nn.Module):
    """Registers its classifier before the conv that reads the image."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4 * 14 * 14, 10)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class TwoStems(nn.Module):
    """The image is read by two convs, one of them through an in-model rescaling and a padding."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3)
        self.head = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(F.pad(x * 2.0, (1, 1, 1, 1))))], 1)
        return self.fc(self.head(y).mean((2, 3)))


class SignedHidden(nn.Module):
    """conv -> LeakyReLU -> conv: the second conv's input is mostly negative."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.leaky_relu(self.conv1(x), 0.5) - 1.0
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) - FASHION_MEAN) / FASHION_STD


def _calibrate(model, x):
    calibrate_activations(model, [(x, None)], 1)


def test_input_quantizer_goes_to_the_layer_that_reads_the_image_not_the_first_registered():
    model = qcnn.quantize_(ClassifierFirst(), QUANT)
    assert model.conv.act_quant.bits == 8 and model.conv.act_quant.signed
    assert model.fc.act_quant.bits == 4
    _calibrate(model, _images())
    assert not model.fc.act_quant.signed  # after ReLU and max pooling: nothing negative
    report = qcnn.quant_report(model)
    assert report["conv"]["reads_input"] and not report["fc"]["reads_input"]
    assert report["fc"]["act"]["sign_from"] == "calibration" and report["conv"]["act"]["sign_from"] == "config"


def test_every_layer_reading_the_image_gets_the_input_quantizer():
    model = TwoStems()
    assert input_readers(model, ["a", "b", "head", "fc"]) == (["a", "b"], None)
    qcnn.quantize_(model, QUANT)
    assert model.a.act_quant.bits == model.b.act_quant.bits == 8
    assert model.a.act_quant.signed and model.b.act_quant.signed
    assert model.head.act_quant.bits == 4 and model.fc.act_quant.bits == 4
    x = _images()
    _calibrate(model, x)
    # Each stem's quantizer is calibrated on its own input (the second sees the image doubled), and keeps the
    # negative pixels.
    assert model.b.act_quant.step > 1.9 * model.a.act_quant.step
    b_input = F.pad(x * 2.0, (1, 1, 1, 1))
    assert (model.b.act_quant(b_input) - b_input).abs().median() <= model.b.act_quant.step


def test_auto_sign_keeps_negative_activations():
    torch.manual_seed(0)
    float_model = SignedHidden().eval()
    x = _images(128)
    reference = float_model(x)
    signed_model = qcnn.quantize_(_copy(float_model), {**QUANT, "act": {"bits": 8}})
    unsigned_model = qcnn.quantize_(_copy(float_model), {**QUANT, "act": {"bits": 8, "signed": False}})
    for model in (signed_model, unsigned_model):
        _calibrate(model, x)
        model.eval()
    assert signed_model.conv2.act_quant.signed and not signed_model.fc.act_quant.signed
    assert not unsigned_model.conv2.act_quant.signed
    signed_err = (signed_model(x) - reference).abs().mean()
    unsigned_err = (unsigned_model(x) - reference).abs().mean()
    assert signed_err < 0.1 * unsigned_err
    assert qcnn.quant_report(signed_model)["conv2"]["act"]["signed"] is True


def _copy(model):
    import copy
    return copy.deepcopy(model)


def test_sign_decision_is_state_and_old_checkpoints_load():
    model = qcnn.quantize_(SignedHidden(), QUANT)
    _calibrate(model, _images())
    assert model.conv2.act_quant.signed
    state = model.state_dict()
    assert bool(state["conv2.act_quant.is_signed"])
    fresh = qcnn.quantize_(SignedHidden(), QUANT)
    assert not fresh.conv2.act_quant.signed
    fresh.load_state_dict(state)
    assert fresh.conv2.act_quant.signed and fresh.conv2.act_quant.qmin == -8
    old = {k: v for k, v in state.items() if not k.endswith("is_signed")}  # a checkpoint from before the field
    again = qcnn.quantize_(SignedHidden(), QUANT)
    again.load_state_dict(old)
    assert again.conv1.act_quant.signed and not again.conv2.act_quant.signed


def test_one_bit_auto_quantizer_on_negative_data_is_an_error_naming_the_layer():
    model = qcnn.quantize_(SignedHidden(), {**QUANT, "act": {"bits": 1}})
    with pytest.raises(ValueError, match="conv2.act_quant: .*negative values.*1-bit"):
        _calibrate(model, _images())
    with pytest.raises(ValueError, match="signed must be true, false or 'auto'"):
        QuantAct(4, signed="yes")
    with pytest.raises(ValueError, match="signed must be true, false or 'auto'"):
        QuantAct(4, signed=1)
    with pytest.raises(qcnn.config.ConfigError, match="act.signed"):
        qcnn.quantize_(SignedHidden(), {**QUANT, "act": {"bits": 4, "signed": "sometimes"}})


def test_untraceable_model_falls_back_to_the_first_layer_with_a_warning():
    with pytest.warns(RuntimeWarning, match="cannot trace Untraceable.*first layer in registration order, 'conv'"):
        model = qcnn.quantize_(Untraceable(), QUANT)
    assert model.conv.act_quant.bits == 8 and model.conv.act_quant.signed and model.fc.act_quant.bits == 4


def test_quantize_returns_the_model_and_rejects_non_modules():
    model = ClassifierFirst()
    assert qcnn.quantize_(model, QUANT) is model
    assert set(quant_layers(model)) == {"fc", "conv"}
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        qcnn.quantize_("resnet18", QUANT)


class LinearBottleneck(nn.Module):
    """conv -> BN with no ReLU (MobileNetV2's linear bottleneck) -> conv: the second conv reads signed values."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv2(self.bn(self.conv1(x))))), 1))


def test_signed_hidden_activations_export_and_run_in_the_engine(tmp_path):
    torch.manual_seed(0)
    model = LinearBottleneck()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    model = qcnn.quantize_(model.eval(), QUANT)
    pixels = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    x = (pixels.float() / 255 - FASHION_MEAN) / FASHION_STD
    _calibrate(model, x)
    assert model.conv2.act_quant.signed
    with torch.no_grad():
        reference = model(x)
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    out = qcnn.load(tmp_path / "m.qcnn")(pixels)
    assert (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.98
    assert (out - reference).abs().median() <= 0.02 * reference.abs().max()


def test_export_needs_the_input_spec_and_stores_it(tmp_path):
    from qcnn.data import FASHION_MNIST_INPUT, InputSpec, set_input_spec
    from qcnn.exporter.qfile import read_qcnn

    model = qcnn.quantize_(LinearBottleneck().eval(), QUANT)
    x = _images()
    _calibrate(model, x)
    with pytest.raises(ValueError, match="input_shape, mean, std not given and the model records no input spec"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False)
    with pytest.raises(ValueError, match="mean, std not given"):
        qcnn.export(model, tmp_path / "m.qcnn", input_shape=(1, 28, 28), verbose=False)
    with pytest.raises(ValueError, match="mean and std need one entry per channel"):
        qcnn.export(model, tmp_path / "m.qcnn", input_shape=(3, 28, 28), mean=[0.5], std=[0.5], verbose=False)
    with pytest.raises(ValueError, match="std finite and positive"):
        qcnn.export(model, tmp_path / "m.qcnn", input_shape=(1, 28, 28), mean=[0.5], std=[0.0], verbose=False)
    set_input_spec(model, InputSpec((1, 28, 28), (0.5,), (0.25,)))
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False)
    doc, _ = read_qcnn(tmp_path / "m.qcnn")
    assert (doc["input"]["mean"], doc["input"]["std"]) == ([0.5], [0.25])
    qcnn.export(model, tmp_path / "f.qcnn", verbose=False, mean=[FASHION_MEAN], std=[FASHION_STD])  # args win
    doc, _ = read_qcnn(tmp_path / "f.qcnn")
    assert doc["input"]["mean"] == [pytest.approx(FASHION_MEAN)] and doc["input"]["shape"] == [1, 28, 28]
    with pytest.raises(TypeError, match="spec must be a qcnn.data.InputSpec"):
        set_input_spec(model, (1, 28, 28))
    assert FASHION_MNIST_INPUT.shape == (1, 28, 28)
