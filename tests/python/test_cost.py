"""qcnn.analysis.cost: MACs, bit widths, bit operations, memory and speedups of small nets, computed by hand."""
import json

import pytest
import torch
from torch import nn

import qcnn
from qcnn.analysis import cost
from qcnn.nn import QuantAct, QuantConv2d, QuantLinear
from qcnn.quantizers import (BinaryWeightQuantizer, CodebookWeightQuantizer, FixedPointWeightQuantizer,
                             UniformWeightQuantizer)

# The reference net: conv 1->2 3x3 (no padding) on 1x5x5 gives 2x3x3 = 18 outputs of 1*3*3 MACs each;
# the linear 18->4 does 4*18 MACs.
CONV_MACS, LINEAR_MACS = 18 * 9, 4 * 18
CONV_W, CONV_B, CONV_A = 2 * 1 * 3 * 3, 2, 1 * 5 * 5
LIN_W, LIN_B, LIN_A = 4 * 18, 4, 18


def _float_net():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))


def _quant_net(conv_wq, conv_act, lin_wq, lin_act):
    net = _float_net()
    conv = QuantConv2d.from_float(net[0], conv_wq(net[0].weight.shape), conv_act)
    lin = QuantLinear.from_float(net[3], lin_wq(net[3].weight.shape), lin_act)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin)


def test_float_net_counts_32_bits_everywhere():
    report = cost(_float_net(), (1, 5, 5))
    conv, lin = report.layers
    assert (conv.name, conv.kind, lin.name, lin.kind) == ("0", "conv", "3", "linear")
    assert conv.input_shape == (1, 5, 5) and conv.output_shape == (2, 3, 3) and lin.output_shape == (4,)
    assert (conv.macs, lin.macs) == (162, 72) == (CONV_MACS, LINEAR_MACS)
    for layer in report.layers:
        assert (layer.weight_bits, layer.bias_bits, layer.act_bits, layer.weight_format) == (32, 32, 32, "float")
    assert (conv.weight_count, conv.bias_count, conv.act_count) == (18, 2, 25)
    assert conv.bops == 162 * 32 * 32 and lin.bops == 72 * 32 * 32
    t = report.total
    assert t["macs"] == 234 and t["bops"] == 234 * 1024
    assert t["speedup_vs_float32"] == pytest.approx(1.0)
    assert t["speedup_vs_int8"] == pytest.approx(64 / 1024)
    assert t["popcount_speedup"] is None
    assert t["weight_memory_bits"] == (18 + 72) * 32 and t["bias_memory_bits"] == 6 * 32
    assert t["act_memory_bits"] == (25 + 18) * 32 and t["memory_bits"] == 4448
    assert t["int8_memory_bits"] == 8 * (90 + 6 + 43) == 1112
    assert t["memory_saved_vs_int8_pct"] == pytest.approx(-300.0)  # float32 is 4x the 8-bit memory
    # Goyal et al.: sum_l BW_w * N_w * BW_a * N_a
    assert t["goyal_mult_cost"] == 32 * 18 * 32 * 25 + 32 * 72 * 32 * 18 == 1787904
    assert t["int8_mult_cost"] == 64 * (18 * 25 + 72 * 18)
    assert t["mult_cost_saved_vs_int8_pct"] == pytest.approx(100 * (1 - 1024 / 64))


def test_quantized_net_bits_bops_memory_and_savings():
    model = _quant_net(lambda s: UniformWeightQuantizer(s, 4), QuantAct(8, signed=True),
                       lambda s: UniformWeightQuantizer(s, 2), QuantAct(4))
    report = cost(model, (1, 5, 5))
    conv, lin = report.layers
    assert (conv.weight_bits, conv.act_bits, conv.bias_bits, conv.weight_format) == (4, 8, 32, "uniform")
    assert (lin.weight_bits, lin.act_bits, lin.bias_bits) == (2, 4, 32)  # bias without quantizer: int32
    assert conv.bops == 162 * 4 * 8 == 5184 and lin.bops == 72 * 2 * 4 == 576
    t = report.total
    assert t["bops"] == 5760
    assert t["speedup_vs_float32"] == pytest.approx(234 * 1024 / 5760)  # 41.6
    assert t["speedup_vs_int8"] == pytest.approx(234 * 64 / 5760)  # 2.6
    assert t["popcount_speedup"] is None
    assert t["weight_memory_bits"] == 18 * 4 + 72 * 2 == 216
    assert t["bias_memory_bits"] == 6 * 32 and t["act_memory_bits"] == 25 * 8 + 18 * 4 == 272
    assert t["memory_bits"] == 680
    assert t["memory_saved_vs_int8_pct"] == pytest.approx(100 * (1 - 680 / 1112))
    assert t["goyal_mult_cost"] == 4 * 18 * 8 * 25 + 2 * 72 * 4 * 18 == 24768
    assert t["mult_cost_saved_vs_int8_pct"] == pytest.approx(100 * (1 - 24768 / 111744))
    assert t["codebook_bits"] == 0


def test_binary_weights_with_2bit_activations_and_popcount_speedup():
    # 8-bit signed input layer, 2-bit hidden activations, binary weights everywhere (O'Keeffe & Villing).
    model = _quant_net(BinaryWeightQuantizer, QuantAct(8, signed=True), BinaryWeightQuantizer, QuantAct(2))
    report = cost(model, (1, 5, 5))
    conv, lin = report.layers
    assert conv.binary_weight and lin.binary_weight and conv.weight_format == "binary"
    assert conv.bops == 162 * 8 and lin.bops == 72 * 2  # b popcount passes per MAC
    t = report.total
    assert t["bops"] == 1440
    # 64 / sum_l p_l b_l with p = (162, 72) / 234, b = (8, 2)
    assert t["popcount_speedup"] == pytest.approx(64 / (162 / 234 * 8 + 72 / 234 * 2))  # 10.4
    assert t["popcount_speedup"] == pytest.approx(10.4)
    assert t["speedup_vs_float32"] == pytest.approx(234 * 1024 / 1440)
    assert t["weight_memory_bits"] == 18 + 72


def test_binary_weights_with_float_activations_count_32_passes():
    model = _quant_net(BinaryWeightQuantizer, None, BinaryWeightQuantizer, QuantAct(2))
    report = cost(model, (1, 5, 5))
    assert report.layers[0].act_bits == 32 and report.layers[0].bops == 162 * 32
    assert report.total["popcount_speedup"] == pytest.approx(64 * 234 / (162 * 32 + 72 * 2))


def test_popcount_speedup_needs_every_layer_binary():
    model = _quant_net(BinaryWeightQuantizer, QuantAct(8, signed=True), lambda s: UniformWeightQuantizer(s, 8),
                       QuantAct(2))
    report = cost(model, (1, 5, 5))
    assert report.total["popcount_speedup"] is None
    assert report.total["bops"] == 162 * 8 + 72 * 8 * 2


class _BiasBits(nn.Module):
    """Stands for any bias quantizer (identity here): cost reads only its .bits."""

    def __init__(self, bits):
        super().__init__()
        self.bits = bits

    def forward(self, bias):
        return bias


def test_fixed_point_model():
    model = _quant_net(lambda s: FixedPointWeightQuantizer(s, 6, 4), QuantAct(5, signed=True),
                       lambda s: FixedPointWeightQuantizer(s, 10), QuantAct(3))
    model[0].bias_quant = _BiasBits(12)
    model[3].bias_quant = _BiasBits(9)
    report = cost(model, (1, 5, 5))
    conv, lin = report.layers
    assert (conv.weight_format, conv.weight_bits, conv.bias_bits, conv.act_bits) == ("fixed", 6, 12, 5)
    assert (lin.weight_bits, lin.bias_bits, lin.act_bits) == (10, 9, 3)
    t = report.total
    assert t["bops"] == 162 * 6 * 5 + 72 * 10 * 3
    assert t["weight_memory_bits"] == 18 * 6 + 72 * 10 and t["bias_memory_bits"] == 2 * 12 + 4 * 9
    assert t["act_memory_bits"] == 25 * 5 + 18 * 3
    memory = 18 * 6 + 72 * 10 + 2 * 12 + 4 * 9 + 25 * 5 + 18 * 3
    assert t["memory_bits"] == memory
    assert t["memory_saved_vs_int8_pct"] == pytest.approx(100 * (1 - memory / 1112))
    mult = 6 * 18 * 5 * 25 + 10 * 72 * 3 * 18
    assert t["goyal_mult_cost"] == mult
    assert t["mult_cost_saved_vs_int8_pct"] == pytest.approx(100 * (1 - mult / (64 * (18 * 25 + 72 * 18))))


def test_grouped_depthwise_strided_and_multi_dim_linear():
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, padding=1, groups=2),  # 6x6x6 outputs x (4/2)*9
        nn.Conv2d(6, 6, 3, groups=6, bias=False),  # depthwise: 6x4x4 outputs x 1*9
        nn.Conv2d(6, 1, 3, stride=2, padding=1),  # 1x2x2 outputs x 6*9
        nn.Linear(2, 3),  # on [1, 2, 2]: 1*2*3 outputs x 2
    )
    report = cost(model, (4, 6, 6))
    assert [l.macs for l in report.layers] == [216 * 2 * 9, 96 * 9, 4 * 54, 6 * 2]
    assert [l.groups for l in report.layers] == [2, 6, 1, 1]
    assert report.layers[0].weight_count == 6 * 2 * 9 and report.layers[1].bias_count == 0
    assert report.layers[3].input_shape == (1, 2, 2) and report.layers[3].act_count == 4
    assert report.total["macs"] == 3888 + 864 + 216 + 12


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


def test_layer_called_twice_counts_both_calls_and_its_weights_once():
    report = cost(_Twice(), (3,))
    (fc,) = report.layers
    assert fc.calls == 2 and fc.macs == 2 * 9 and fc.act_count == 6 and fc.weight_memory_bits == 9 * 32


def test_codebook_tables_reported_apart_from_memory():
    net = _float_net()
    conv = QuantConv2d.from_float(net[0], CodebookWeightQuantizer(net[0].weight.shape, 2, per_channel=True),
                                  QuantAct(8, signed=True))
    lin = QuantLinear.from_float(net[3], CodebookWeightQuantizer(net[3].weight.shape, 3, per_channel=False),
                                 QuantAct(8))
    report = cost(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin), (1, 5, 5))
    assert [l.weight_format for l in report.layers] == ["codebook", "codebook"]
    assert [l.codebook_bits for l in report.layers] == [2 * 4 * 16, 1 * 8 * 16]
    assert report.total["codebook_bits"] == 128 + 128
    assert report.total["weight_memory_bits"] == 18 * 2 + 72 * 3  # count x bit width only


def test_model_state_is_left_untouched():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 4))
    qcnn.quantize_(model, {"weight": {"kind": "uniform", "bits": 4}, "act": {"bits": 4}})
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = cost(model, (1, 5, 5), example=torch.randn(1, 5, 5))
    assert report.total["bops"] == 162 * 4 * 4 + 72 * 4 * 4
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not bool(model[0].act_quant.calibrated) and not bool(model[0].weight_quant.fitted)


def test_to_dict_and_table():
    report = cost(_quant_net(BinaryWeightQuantizer, QuantAct(8, signed=True), BinaryWeightQuantizer, QuantAct(2)),
                  (1, 5, 5))
    d = json.loads(json.dumps(report.to_dict()))
    assert d["input_shape"] == [1, 5, 5] and d["total"]["bops"] == 1440
    assert d["layers"][0]["output_shape"] == [2, 3, 3] and d["layers"][1]["binary_weight"] is True
    table = report.table()
    lines = table.splitlines()
    assert lines[0].startswith("| layer |") and lines[2].startswith("| 0 | conv | binary | 162 | 1 | 32 | 8 | 1296 |")
    assert lines[4].startswith("| total | | | 234 |")
    assert "popcount (O'Keeffe & Villing) 10.40x" in table


@pytest.mark.parametrize("bad", [(), (1, 0, 5), (1, -5, 5), (1.0, 5, 5), (True, 5, 5), "1x5x5", 5, None])
def test_bad_input_shape(bad):
    with pytest.raises(ValueError, match="input_shape"):
        cost(_float_net(), bad)


def test_input_shape_that_does_not_fit_the_model():
    with pytest.raises(ValueError, match="input_shape"):
        cost(_float_net(), (3, 5, 5))
    with pytest.raises(ValueError, match="example"):
        cost(_float_net(), (1, 5, 5), example=torch.zeros(2, 1, 5, 5))
    with pytest.raises(ValueError, match="example"):
        cost(_float_net(), (1, 5, 5), example=torch.zeros(1, 5, 4))


def test_an_example_may_carry_a_batch_of_one():
    example = torch.randn(1, 5, 5)
    assert cost(_float_net(), (1, 5, 5), example=example[None]).total == \
        cost(_float_net(), (1, 5, 5), example=example).total


def test_an_input_too_large_to_trace_is_refused_before_any_allocation():
    with pytest.raises(ValueError, match=r"input_shape \(1, 100000, 100000\) has 10,000,000,000 elements"):
        cost(_float_net(), (1, 100000, 100000))


def test_model_without_conv_or_linear():
    with pytest.raises(ValueError, match="model"):
        cost(nn.Sequential(nn.ReLU(), nn.Flatten()), (4,))
    with pytest.raises(TypeError, match="model"):
        cost("not a model", (1, 5, 5))


def test_fixed_point_quantizers_of_a_plan():
    # The quantizers FixedPointPlan.apply installs: FixedPointWeightQuantizer, FixedPointAct, a bias FixedPointQuantizer.
    act = pytest.importorskip("qcnn.quantizers.act")
    if not hasattr(act, "FixedPointAct"):
        pytest.skip("qcnn.quantizers.act.FixedPointAct not there yet")
    net = _float_net()
    conv = QuantConv2d.from_float(net[0], FixedPointWeightQuantizer(net[0].weight.shape, 7, 5),
                                  act.FixedPointAct(9, 4), bias_quant=act.FixedPointQuantizer(11, 6))
    lin = QuantLinear.from_float(net[3], FixedPointWeightQuantizer(net[3].weight.shape, 5, 3),
                                 act.FixedPointAct(6, 2), bias_quant=act.FixedPointQuantizer(8, 4))
    report = cost(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin), (1, 5, 5))
    assert [(l.weight_bits, l.bias_bits, l.act_bits) for l in report.layers] == [(7, 11, 9), (5, 8, 6)]
    assert report.total["bops"] == 162 * 7 * 9 + 72 * 5 * 6
    assert report.total["memory_bits"] == 18 * 7 + 2 * 11 + 25 * 9 + 72 * 5 + 4 * 8 + 18 * 6


def test_an_nchw_batch_shape_counts_per_sample():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 4))
    one = cost(net, (1, 5, 5)).total
    assert cost(net, (1, 1, 5, 5)).total == one
    assert cost(net, (8, 1, 5, 5)).total == one
