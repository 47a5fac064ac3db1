"""Accumulator-constrained quantization (de Bruin et al. 2020; A2Q): the no-overflow bounds, the L1 constraint of
UniformWeightQuantizer, qcnn.search.accumulator, the config key, the export field and training/search_accumulator.py."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn
from qcnn import models
from qcnn.config import ConfigError, QuantConfig, WeightQuantConfig, from_dict
from qcnn.data import Splits, TensorLoader
from qcnn.exporter import Graph, Node, QParams, QuantWeight, lower_graph, to_graph, write_qcnn
from qcnn.nn import QuantConv2d, QuantLinear
from qcnn.quantizers.act import QuantAct
from qcnn.quantizers import UniformWeightQuantizer
from qcnn.quantizers.weight import accumulator_l1_budget, act_code_range, bind_accumulator_input
from qcnn.search.accumulator_search import (AccumulatorPlan, AccumulatorSearchConfig, accumulator, accumulator_report,
                                            worst_case_accumulator_bits)

from training_scripts import load_training_script  # noqa: E402
from export_helpers import FASHION_INPUT  # noqa: E402



def _limit(p: int) -> int:
    return 2 ** (p - 1) - 1


class TinyNet(nn.Module):
    def __init__(self, c: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * c * 7 * 7, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _normalized(pixels: torch.Tensor) -> torch.Tensor:
    return next(iter(TensorLoader(pixels, torch.zeros(pixels.shape[0], dtype=torch.long), pixels.shape[0])))[0]


# ----------------------------------------------------------------------------------------- the bounds
def _extreme_acc(w_int: torch.Tensor, x_lo: int, x_hi: int) -> int:
    """max |acc| over all inputs with codes in [x_lo, x_hi] (zero point 0), reached by the sign-matched inputs:
    x = x_hi where w > 0 and x_lo where w < 0 (largest sum), or the reverse (smallest)."""
    w = w_int.to(torch.int64)
    top = int((torch.where(w > 0, x_hi, x_lo) * w).sum())
    bottom = int((torch.where(w > 0, x_lo, x_hi) * w).sum())
    return max(top, -bottom)


@pytest.mark.parametrize("k,signed,p", [(16, False, 16), (216, False, 16), (9, True, 16), (864, False, 20),
                                        (64, True, 14)])
def test_worst_case_bound_holds_at_the_bound_and_breaks_one_bit_past_it(k, signed, p):
    model = nn.Sequential(nn.Linear(k, 1, bias=False))
    act = {"bits": 8, "method": "lsq", "signed": signed}
    plan = accumulator(model, p, bound="worst_case", quant={"weight": {"kind": "uniform", "bits": 8},
                                                             "act": act, "input_act": act})
    row = plan.layers[0]
    bx, bw = row.act_bits, row.weight_bits
    # The pair fully uses P: b_x + b_w + ceil(log2 K) - 1[signed] == P (below the 8-bit caps here), split evenly.
    assert bx + bw + math.ceil(math.log2(k)) - int(signed) == p
    assert bx - bw in (0, 1)

    def codes(bits):
        return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)

    def weights(bits):  # every weight at the grid's end, the sign that meets the input range's larger end
        return torch.full((k,), -(2 ** (bits - 1) - 1) if signed else 2 ** (bits - 1) - 1)

    worst = _extreme_acc(weights(bw), *codes(bx))
    assert worst == k * row.input_code_range * (2 ** (bw - 1) - 1) == row.worst_case_acc
    assert worst <= _limit(p)
    # One more bit on either operand: the same construction overflows a P-bit accumulator.
    assert _extreme_acc(weights(bw), *codes(bx + 1)) > _limit(p)
    assert _extreme_acc(weights(bw + 1), *codes(bx)) > _limit(p)


def test_worst_case_formula_by_hand():
    assert worst_case_accumulator_bits(9, 8, 8, signed_input=True) == 8 + 8 + 4 - 1
    assert worst_case_accumulator_bits(216, 4, 4, signed_input=False) == 16
    assert worst_case_accumulator_bits(1, 3, 2, signed_input=False) == 5
    assert worst_case_accumulator_bits(1024, 2, 2, signed_input=False) == 14
    with pytest.raises(ValueError, match="k"):
        worst_case_accumulator_bits(0, 2, 2, signed_input=False)


def test_code_range_and_budget_by_hand():
    assert act_code_range(QuantAct(4, signed=False)) == 15
    assert act_code_range(QuantAct(4, signed=True, method="lsq")) == 8
    assert act_code_range(QuantAct(4, signed=True, method="pact")) == 7
    assert accumulator_l1_budget(16, 15) == 32767 // 15 == 2184
    assert accumulator_l1_budget(12, 255) == 8
    with pytest.raises(TypeError, match="accumulator_bits"):
        accumulator_l1_budget(16.0, 3)
    with pytest.raises(ValueError, match="accumulator_bits"):
        accumulator_l1_budget(33, 3)


def _engine_graph(weight_int: torch.Tensor, bx: int, p: int | None) -> Graph:
    """One conv covering a 1x4x4 image (K = 16), the input codes 0..2^bx - 1 straight from the pixels."""
    qmax = 2 ** bx - 1
    act = QParams(1.0 / qmax, 0, 0, qmax)
    weight = QuantWeight.from_integers("uniform", weight_int, torch.full((weight_int.shape[0],), 0.01), -127, 127)
    node = Node("conv", "conv2d", ["input"], weight=weight, act=act, kernel_size=(4, 4), accumulator_bits=p)
    return Graph((1, 4, 4), [0.0], [1.0], [node])


def test_engine_counts_no_overflow_at_the_bound_and_some_one_bit_below(tmp_path):
    bx, p = 4, 11  # 16 * 15 * |w| <= 1023 at L1 = 68
    w_int = torch.zeros(2, 1, 4, 4, dtype=torch.int64)
    w_int[0].view(-1)[:4] = torch.tensor([17, 17, 17, 17])   # L1 = 68: 15 * 68 = 1020 <= 1023
    w_int[1].view(-1)[:5] = torch.tensor([-13, 13, -13, 13, -16])  # L1 = 68
    assert 15 * 68 <= _limit(p) < 15 * 68 * 2
    doc, tensors, _ = lower_graph(_engine_graph(w_int, bx, p))
    assert doc["nodes"][0]["accumulator_bits"] == p
    path = tmp_path / "at_bound.qcnn"
    write_qcnn(path, doc, tensors)
    # Adversarial pixels: 255 (code 15) where a channel's weight is positive, 0 where it is negative.
    pixels = torch.stack([torch.where(w_int[c] > 0, 255, 0) for c in range(2)]).to(torch.uint8)
    pixels = torch.cat([pixels, _images(30)[:, :4, :4].unsqueeze(1)])
    assert qcnn.load(path, count_overflows=True).count_overflows(pixels) == 0
    # The exporter refuses to declare one bit less ...
    with pytest.raises(ValueError, match="accumulator_bits = 10.*can overflow"):
        lower_graph(_engine_graph(w_int, bx, p - 1))
    # ... and a file that declares it anyway does overflow on those inputs (the engine's checked path).
    doc["nodes"][0]["accumulator_bits"] = p - 1
    write_qcnn(tmp_path / "below.qcnn", doc, tensors)
    assert qcnn.load(tmp_path / "below.qcnn", count_overflows=True).count_overflows(pixels[:2]) > 0


# ------------------------------------------------------------------------------ the quantizer constraint
def _constrained(shape, bits, p, code_range, **kwargs) -> UniformWeightQuantizer:
    wq = UniformWeightQuantizer(shape, bits, accumulator_bits=p, **kwargs)
    wq.bind_input_range(code_range)
    return wq


@pytest.mark.parametrize("per_channel", [True, False])
def test_constraint_holds_and_is_tight(per_channel):
    w = torch.randn(8, 16, 3, 3)
    p, x_range = 14, 15
    wq = _constrained(w.shape, 6, p, x_range, per_channel=per_channel)
    q = wq(w)
    scale = wq.quantization_scale(w).reshape(-1)
    ints = wq.assignment(w)
    l1 = ints.reshape(8, -1).abs().sum(dim=1)
    budget = _limit(p) // x_range
    assert wq.l1_budget == budget and int(l1.max()) <= budget
    # The forward is exactly scale * ints (what the exporter writes).
    expected = ints.float() * (scale.reshape(-1, 1, 1, 1) if per_channel else scale)
    assert torch.equal(q, expected)
    # The constraint binds here, and the scale is the smallest feasible one (to the bisection's precision).
    natural = UniformWeightQuantizer(w.shape, 6, per_channel=per_channel)
    natural.refit(w)
    assert int(natural.assignment(w).reshape(8, -1).abs().sum(dim=1).max()) > budget
    assert torch.all(scale >= natural.effective_scale().reshape(-1))
    finer = scale / (1 + 1e-5)
    finer_ints = torch.round(qcnn.ops.fake_quant(w, finer.expand(8).contiguous(), torch.zeros(8, dtype=torch.int32),
                                                 wq.qmin, wq.qmax, axis=0) / finer.expand(8).reshape(-1, 1, 1, 1))
    finer_l1 = finer_ints.reshape(8, -1).abs().sum(dim=1)
    bound_channels = scale > natural.effective_scale().reshape(-1) * (1 + 1e-6)
    if per_channel:
        assert bool(bound_channels.any()) and torch.all(finer_l1[bound_channels] > budget)
    else:
        assert int(finer_l1.max()) > budget


def test_no_constraint_and_non_binding_constraint_change_nothing():
    w = torch.randn(4, 3, 3, 3) * 0.1
    plain = UniformWeightQuantizer(w.shape, 4)
    loose = _constrained(w.shape, 4, 32, 255)
    assert plain.state_dict().keys() == loose.state_dict().keys()
    assert torch.equal(plain(w), loose(w))
    assert torch.equal(loose.quantization_scale(w), plain.effective_scale())
    cfg = WeightQuantConfig(kind="uniform", bits=4)
    assert "accumulator_bits" not in cfg.to_dict()


def test_constraint_holds_after_fine_tuning_steps_and_exports_what_trained(tmp_path):
    torch.manual_seed(0)
    net = TinyNet()
    x = _normalized(_images(64))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    p = 12
    cfg = {"weight": {"kind": "uniform", "bits": 6, "accumulator_bits": p, "learn_scale": True},
           "act": {"bits": 6, "method": "lsq"}}
    qcnn.quantize_(net, cfg)
    expected_range = {"conv1": 32, "conv2": 63, "fc": 63}  # signed 6-bit input (lsq: 2^5), unsigned 6-bit 2^6 - 1
    layers = dict(qcnn.quantize.quant_layers(net))
    assert {n: m.weight_quant.input_code_range for n, m in layers.items()} == expected_range
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    scales_moved = False
    for step in range(6):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for row in accumulator_report(net):
            assert row["holds"] and row["max_l1"] <= row["l1_budget"] == _limit(p) // expected_range[row["name"]]
        wq = layers["fc"].weight_quant
        scales_moved |= bool((wq.quantization_scale(layers["fc"].weight) > wq.effective_scale() * 1.01).any())
    assert scales_moved  # the constraint binds for the 588-input linear layer
    net.eval()
    graph = to_graph(net, **FASHION_INPUT)
    for node in graph.nodes:
        if node.op in ("conv2d", "linear"):
            layer = layers[node.name]
            assert node.accumulator_bits == p
            assert torch.equal(node.weight.dequantize(), layer.quantized_weight().detach())
    # The exporter re-proves the bound from the stored integers.
    qcnn.export(net, tmp_path / "tiny.qcnn", verbose=False, **FASHION_INPUT)
    engine = qcnn.load(tmp_path / "tiny.qcnn", count_overflows=True)
    assert engine.count_overflows(_images(16, seed=3).unsqueeze(1)) == 0


def test_export_declares_the_width_and_refuses_a_violating_model(tmp_path):
    from qcnn.exporter.qfile import read_qcnn

    torch.manual_seed(0)
    net = TinyNet().eval()
    qcnn.quantize_(net, {"weight": {"kind": "uniform", "bits": 5, "accumulator_bits": 14}, "act": {"bits": 5}})
    pixels = _images(40).unsqueeze(1)
    with torch.no_grad():
        expected = net(_normalized(pixels[:, 0]))
    qcnn.export(net, tmp_path / "ok.qcnn", verbose=False, **FASHION_INPUT)
    doc, _ = read_qcnn(tmp_path / "ok.qcnn")
    convs = [n for n in doc["nodes"] if n["op"] in ("conv2d", "linear")]
    assert [n["accumulator_bits"] for n in convs] == [14, 14, 14]
    assert all("accumulator_bits" not in n for n in doc["nodes"] if n["op"] not in ("conv2d", "linear"))
    engine = qcnn.load(tmp_path / "ok.qcnn", count_overflows=True)
    assert engine.count_overflows(pixels) == 0
    assert torch.equal(qcnn.load(tmp_path / "ok.qcnn")(pixels).argmax(1), expected.argmax(1))
    # A model without the constraint declares nothing.
    plain = TinyNet().eval()
    qcnn.quantize_(plain, {"weight": {"kind": "uniform", "bits": 5}, "act": {"bits": 5}})
    with torch.no_grad():
        plain(_normalized(pixels[:, 0]))
    qcnn.export(plain, tmp_path / "plain.qcnn", verbose=False, **FASHION_INPUT)
    assert all("accumulator_bits" not in n for n in read_qcnn(tmp_path / "plain.qcnn")[0]["nodes"])
    # Declaring a narrower accumulator than the weights allow is refused, naming the node.
    graph = to_graph(net, **FASHION_INPUT)
    graph.nodes[0].accumulator_bits = 6
    with pytest.raises(ValueError, match=r"node 'conv1': declares accumulator_bits = 6 .* can overflow"):
        lower_graph(graph)
    with pytest.raises(ValueError, match="accumulator_bits must be an int in \\[2, 32\\]"):
        Node("c", "conv2d", ["input"], weight=graph.nodes[0].weight, accumulator_bits=33)
    with pytest.raises(ValueError, match="applies to conv2d and linear"):
        Node("r", "relu", ["input"], accumulator_bits=16)


# --------------------------------------------------------------------------------------------- the solver
def test_solver_by_hand_and_monotone_in_p():
    net = TinyNet()
    worst = {}
    for p in range(12, 33):
        plan = accumulator(net, p, bound="worst_case") if p >= 14 else None
        if plan is not None:
            worst[p] = plan
            for row in plan.layers:
                total = min(p - math.ceil(math.log2(row.k)) + int(row.signed_input), 16)
                assert row.act_bits + row.weight_bits == total  # K = 9 (signed), 54, 588
                assert row.act_bits - row.weight_bits in (0, 1)
                assert row.guaranteed_acc == row.worst_case_acc <= _limit(p) and row.bound == "worst_case"
    assert [r.k for r in worst[16].layers] == [9, 54, 588]
    assert worst[16].bits == {"conv1": (7, 6), "conv2": (5, 5), "fc": (3, 3)}
    fast = {"weight": {"kind": "uniform", "calibration": "max"}, "act": {"bits": 8}}
    for slack in (1.0, 2.0):
        previous = None
        for p in range(8, 33):
            plan = accumulator(net, p, quant=fast, l1_slack=slack)
            sums = [(min(r.act_bits, r.weight_bits), r.act_bits + r.weight_bits) for r in plan.layers]
            for row in plan.layers:
                assert row.guaranteed_acc <= _limit(p)
                assert (row.solve_l1 * row.input_code_range <= slack * _limit(p)
                        or (row.act_bits, row.weight_bits) == (2, 2))
            if p in worst:  # the L1 rule admits at least what the worst case does
                assert all(a.act_bits + a.weight_bits >= b.act_bits + b.weight_bits
                           for a, b in zip(plan.layers, worst[p].layers))
            if previous is not None:
                assert all(now >= before for now, before in zip(sums, previous))
            previous = sums
    assert accumulator(net, 32, quant=fast).bits == {"conv1": (8, 8), "conv2": (8, 8), "fc": (8, 8)}


def test_plan_round_trip_table_and_apply():
    torch.manual_seed(0)
    net = TinyNet()
    plan = accumulator(net, 16, quant={"weight": {"kind": "uniform", "bits": 8, "calibration": "max"},
                                       "act": {"bits": 8, "method": "pact"}})
    again = AccumulatorPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict() and again.bits == plan.bits
    table = plan.table()
    assert table.count("\n| conv") == 2 and "| fc | 588 |" in table
    quantized = copy.deepcopy(net)
    assert plan.apply(quantized) is quantized
    layers = qcnn.quantize.quant_layers(quantized)
    assert list(layers) == ["conv1", "conv2", "fc"]
    for row in plan.layers:
        layer = layers[row.name]
        assert layer.weight_quant.bits == row.weight_bits and layer.act_quant.bits == row.act_bits
        assert layer.weight_quant.accumulator_bits == 16
        assert layer.weight_quant.input_code_range == row.input_code_range == act_code_range(layer.act_quant)
        assert layer.act_quant.method == "pact" and layer.weight_quant.calibration == "max"
    assert layers["conv1"].act_quant.signed and not layers["conv2"].act_quant.signed
    assert isinstance(layers["fc"], QuantLinear) and isinstance(layers["conv1"], QuantConv2d)
    with pytest.raises(ValueError, match="not the plan's"):
        plan.apply(quantized)


def test_solver_errors():
    net = TinyNet()
    with pytest.raises(ConfigError, match="acc_bits"):
        accumulator(net, 1)
    with pytest.raises(ConfigError, match="max_bits"):
        accumulator(net, 16, min_bits=6, max_bits=4)
    with pytest.raises(ConfigError, match="l1_slack"):
        accumulator(net, 16, bound="worst_case", l1_slack=2.0)
    with pytest.raises(ConfigError, match="bound"):
        accumulator(net, 16, bound="exact")
    with pytest.raises(ConfigError, match="quant.weight"):
        accumulator(net, 16, quant={"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}})
    with pytest.raises(ConfigError, match="quant.overrides"):
        accumulator(net, 16, quant={"weight": {"kind": "uniform"}, "act": {"bits": 8},
                                    "overrides": [{"pattern": "fc", "weight": {"bits": 8}}]})
    with pytest.raises(ValueError, match=r"layer 'fc' \(K = 588\) needs P >= 14"):
        accumulator(net, 13, bound="worst_case")
    quantized = copy.deepcopy(net)
    qcnn.quantize_(quantized, {"weight": {"kind": "uniform", "bits": 4}, "act": {"bits": 4}})
    with pytest.raises(ValueError, match="no float"):
        accumulator(quantized, 16)
    for poison in (math.nan, math.inf):
        broken = copy.deepcopy(net)
        with torch.no_grad():
            broken.fc.weight[0, 0] = poison
        with pytest.raises(ValueError, match="layer 'fc' has NaN or infinite weights"):
            accumulator(broken, 16)


# --------------------------------------------------------------------------------------------- the config
def test_config_key_validation_names_the_path():
    cfg = from_dict({"quant": {"weight": {"kind": "uniform", "bits": 4, "accumulator_bits": 16}, "act": {"bits": 4}}})
    assert cfg.quant.weight.accumulator_bits == 16
    assert from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["quant"]["weight"]["accumulator_bits"] == 16
    bad = [({"kind": "codebook", "accumulator_bits": 16}, "quant.weight.accumulator_bits: only applies to kind"),
           ({"kind": "uniform", "symmetric": False, "accumulator_bits": 16}, "quant.weight.accumulator_bits: needs"),
           ({"kind": "uniform", "accumulator_bits": 33}, r"quant.weight.accumulator_bits: must be in \[2, 32\]"),
           ({"kind": "uniform", "accumulator_bits": 1}, r"quant.weight.accumulator_bits: must be in \[2, 32\]"),
           ({"kind": "uniform", "accumulator_bits": True}, "quant.weight.accumulator_bits: must be an integer"),
           ({"kind": "uniform", "accumulator_bits": "16"}, "quant.weight.accumulator_bits: must be an integer")]
    for weight, message in bad:
        with pytest.raises(ConfigError, match=message):
            from_dict({"quant": {"weight": weight}})
    with pytest.raises(ConfigError, match=r"quant.overrides\[0\].weight.accumulator_bits"):
        QuantConfig.from_dict({"weight": {"kind": "codebook"},
                               "overrides": [{"pattern": "fc", "weight": {"accumulator_bits": 16}}]}, _path="quant")
    with pytest.raises(ConfigError, match="search.acc_bits"):
        AccumulatorSearchConfig.from_dict({"acc_bits": 40}, _path="search")
    with pytest.raises(ConfigError, match="search.colour"):
        AccumulatorSearchConfig.from_dict({"colour": 1}, _path="search")


def test_quantizer_argument_errors():
    with pytest.raises(ValueError, match="symmetric"):
        UniformWeightQuantizer((2, 3), 4, symmetric=False, accumulator_bits=16)
    with pytest.raises(TypeError, match="accumulator_bits"):
        UniformWeightQuantizer((2, 3), 4, accumulator_bits=16.0)
    wq = UniformWeightQuantizer((2, 3), 4, accumulator_bits=8)
    with pytest.raises(ValueError, match="not bound"):
        wq(torch.randn(2, 3))
    with pytest.raises(ValueError, match="code_range"):
        wq.bind_input_range(0)
    with pytest.raises(ValueError, match="leaves no nonzero"):
        wq.bind_input_range(255)
    with pytest.raises(ValueError, match="has no accumulator_bits"):
        UniformWeightQuantizer((2, 3), 4).bind_input_range(3)
    with pytest.raises(ValueError, match="layer 'fc': accumulator_bits needs an input"):
        bind_accumulator_input(wq, None, "fc")
    net = TinyNet()
    with pytest.raises(ValueError, match="layer 'conv1': accumulator_bits needs an input"):
        qcnn.quantize_(net, {"weight": {"kind": "uniform", "accumulator_bits": 16}, "act": None})


# --------------------------------------------------------------------------------------------- the script
def _script():
    return load_training_script("search_accumulator")


def test_script_end_to_end_reads_the_test_split_once_at_the_end(tmp_path, monkeypatch):
    script = _script()
    torch.manual_seed(0)
    model = models.create("vgg_small", width=4)
    baseline = tmp_path / "baseline.pt"
    torch.save(model.state_dict(), baseline)
    images = _images(320)
    labels = torch.arange(320) % 10
    state = {"trained": False, "test_reads": 0}

    class TestSplit(TensorLoader):
        def __iter__(self):
            if not state["trained"]:
                raise AssertionError("the test split was read before fine-tuning finished")
            state["test_reads"] += 1
            return super().__iter__()

    splits = Splits(train=TensorLoader(images[:192], labels[:192], 64, shuffle=True),
                    val=TensorLoader(images[192:256], labels[192:256], 64),
                    test=TestSplit(images[256:], labels[256:], 64))
    real_run = script.retrain.run

    def run_then_allow_test(*args, **kwargs):
        result = real_run(*args, **kwargs)
        state["trained"] = True
        return result

    monkeypatch.setattr(script, "build_loaders", lambda data_cfg: splits)
    monkeypatch.setattr(script.retrain, "run", run_then_allow_test)
    config = tmp_path / "acc.yaml"
    config.write_text(f"name: acc_test\nout_dir: {tmp_path}\nbaseline: {baseline}\n"
                      "model: {name: vgg_small, kwargs: {width: 4}}\n"
                      "quant: {weight: {kind: uniform, bits: 8}, act: {bits: 8}, calibration_batches: 1}\n"
                      "retrain: {max_rounds: 1, min_rounds: 1, epochs_per_round: 1}\n"
                      "search: {acc_bits: 12}\n")
    summary = script.main(["--config", str(config), "--no-progress"])
    assert state["test_reads"] == 2  # float and quantized, once each, at the end
    run = tmp_path / "acc_test"
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    plan = script.load_plan(run / "plan.json")
    assert summary["acc_bits"] == 12 and summary["overflows"] == 0
    assert summary["bits"] == {n: {"act_bits": a, "weight_bits": w} for n, (a, w) in plan.bits.items()}
    assert all(row["holds"] for row in summary["bound_check"])
    from qcnn.exporter.qfile import read_qcnn
    doc, _ = read_qcnn(run / "model.qcnn")
    assert [n["accumulator_bits"] for n in doc["nodes"] if n["op"] in ("conv2d", "linear")] == [12] * 6
    # config.yaml is a plain run config that rebuilds the fine-tuned model.
    rebuilt_cfg = qcnn.config.load(run / "config.yaml")
    rebuilt = models.create("vgg_small", width=4)
    qcnn.quantize_(rebuilt, rebuilt_cfg.quant)
    rebuilt.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    rebuilt.eval()
    with torch.no_grad():
        pred = torch.cat([rebuilt(x).argmax(1) for x, _ in TensorLoader(images[256:], labels[256:], 64)])
    assert 100.0 * float((pred == labels[256:]).float().mean()) == summary["test_acc"]
    config.write_text(config.read_text().replace("acc_bits: 12", "acc_bits: 40"))
    with pytest.raises(ConfigError, match="search.acc_bits"):
        script.main(["--config", str(config)])
