"""QuantConv2d / QuantLinear and qcnn.quantize_."""
import importlib.util

import pytest
import torch
from torch import nn

import qcnn
from qcnn import models
from qcnn.config import ConfigError, QuantConfig

if not (hasattr(qcnn.ops, "fake_quant") and importlib.util.find_spec("qcnn.codebook") is not None):
    pytest.skip("qcnn.ops.fake_quant / qcnn.codebook not built yet", allow_module_level=True)

from qcnn.nn import QuantAct, QuantConv2d, QuantLinear  # noqa: E402
from qcnn.quantizers import CodebookWeightQuantizer, UniformWeightQuantizer  # noqa: E402

QUANT = {"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}}


def test_from_float_shares_parameters_and_state_dict_keys():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2)
    q = QuantConv2d.from_float(conv, None, None)
    assert isinstance(q, nn.Conv2d) and q.weight is conv.weight and q.bias is conv.bias
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(q(x), conv(x))
    assert set(q.state_dict()) == set(conv.state_dict())
    lin = nn.Linear(5, 3)
    ql = QuantLinear.from_float(lin, None, None)
    torch.testing.assert_close(ql(torch.ones(2, 5)), lin(torch.ones(2, 5)))


def test_quant_conv_equals_conv_with_quantized_weight_and_input():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    wq = UniformWeightQuantizer(conv.weight.shape, 4, calibration="max")
    aq = QuantAct(bits=8, signed=True)
    q = QuantConv2d.from_float(conv, wq, aq)
    x = torch.randn(2, 3, 7, 7)
    out = q(x)
    ref = nn.functional.conv2d(aq(x), wq(conv.weight), conv.bias, padding=1)
    torch.testing.assert_close(out, ref)


def test_quantize_overrides_first_and_last_layer():
    model = models.create("vgg_small", width=4)
    cfg = {**QUANT, "overrides": [{"pattern": "features.0", "weight": {"bits": 8}},
                                  {"pattern": "re:classifier\\.\\d+", "weight": None}]}
    assert qcnn.quantize_(model, cfg) is model
    replaced = qcnn.quantize.quant_layers(model)
    assert set(replaced) == {"features.0", "features.4", "features.7", "features.11", "features.14", "classifier.1"}
    first, last = model.features[0], model.classifier[1]
    assert isinstance(first, QuantConv2d) and first.weight_quant.bits == 8 and first.act_quant.signed
    assert first.act_quant.bits == 8
    assert isinstance(last, QuantLinear) and last.weight_quant is None and not last.act_quant.signed
    assert model.features[4].weight_quant.bits == 4
    assert isinstance(model.features[4].weight_quant, CodebookWeightQuantizer)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_quantize_pattern_matching_nothing_is_an_error():
    model = models.create("lenet5")
    with pytest.raises(ConfigError, match=r"quant\.overrides\[1\]\.pattern"):
        qcnn.quantize_(model, {**QUANT, "overrides": [{"pattern": "features.0"}, {"pattern": "head.*"}]})


def test_quantized_state_dict_roundtrip():
    model = models.create("lenet5")
    qcnn.quantize_(model, QuantConfig.from_dict(QUANT))
    x = torch.randn(3, 1, 28, 28)
    model.eval()
    out = model(x)
    other = models.create("lenet5")
    qcnn.quantize_(other, QuantConfig.from_dict(QUANT))
    other.load_state_dict(model.state_dict())
    other.eval()
    torch.testing.assert_close(other(x), out)


def test_folded_quantized_model_equals_unfolded():
    model = models.create("vgg_small", width=4)
    qcnn.quantize_(model, QUANT)
    model.train()
    model(torch.randn(16, 1, 28, 28))  # fits quantizers, moves BN statistics
    model.eval()
    folded = qcnn.fold_batchnorm(model)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_quantize_rejects_bad_cfg():
    with pytest.raises(TypeError, match="cfg"):
        qcnn.quantize_(models.create("lenet5"), 3)
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        qcnn.quantize_(nn.Sequential(nn.ReLU()), QUANT)
