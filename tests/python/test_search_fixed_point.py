"""Goyal et al.'s fixed-point search (qcnn.search.fixed_point), FixedPointAct / FixedPointQuantizer and bias
quantization in QuantConv2d / QuantLinear, and training/search_fixed_point.py."""
import copy
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcnn

if not hasattr(qcnn.ops, "fake_quant"):
    pytest.skip("qcnn.ops.fake_quant not built yet", allow_module_level=True)

from qcnn import engine, models  # noqa: E402
from qcnn.config import ConfigError  # noqa: E402
from qcnn.data import Splits, TensorLoader  # noqa: E402
from qcnn.nn import QuantConv2d, QuantLinear  # noqa: E402
from qcnn.quantizers import FixedPointWeightQuantizer  # noqa: E402
from qcnn.quantizers.act import FixedPointAct, FixedPointQuantizer  # noqa: E402
from qcnn.search.fixed_point_search import (FixedPointPlan, FixedPointSearchConfig, LayerFixedPoint,  # noqa: E402
                                            fixed_point, no_clipping_frac_bits)

from training_scripts import load_training_script  # noqa: E402

BUDGET = 0.02


# ------------------------------------------------------------------------------------------------ helpers
def _balance_classifier(net: nn.Module, linear: nn.Linear, x: torch.Tensor) -> None:
    """Centres and scales the logits over x so that every class wins for some inputs."""
    with torch.no_grad():
        z = net(x)
        linear.bias -= z.mean(0)
        z = net(x)
        std = z.std(0).clamp(min=1e-6)
        linear.weight /= std[:, None]
        linear.bias /= std


def _teacher(n: int = 512, seed: int = 0):
    """A tiny conv net and random images labelled by the net itself, keeping the n images (of 4n) with the widest
    margin between the two top logits, as a trained net is confident on most data: float accuracy 100%, and every
    changed prediction costs 1/n of relative accuracy."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(4 * n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    _balance_classifier(net, net[-1], x)
    with torch.no_grad():
        top2 = net(x).topk(2, dim=1).values
    x = x[(top2[:, 0] - top2[:, 1]).argsort(descending=True)[:n]]
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


class CountingLoader:
    """Batches of (x, y); counts how often it is iterated."""

    def __init__(self, x, y, batch_size=128):
        self.x, self.y, self.batch_size, self.iterations = x, y, batch_size, 0

    def __iter__(self):
        self.iterations += 1
        for i in range(0, self.x.shape[0], self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


class ForbiddenLoader:
    def __iter__(self):
        raise AssertionError("a loader the search was not given was read")


def _accuracy(model, loader) -> float:
    return engine.evaluate(model, loader)["acc"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These nets are tiny: with two threads on a loaded machine, each op waits for the other thread (17x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


@pytest.fixture(scope="module")
def searched(teacher):
    net, x, y = teacher
    loader = CountingLoader(x, y)
    plan = fixed_point(net, loader, BUDGET)
    assert loader.iterations == 1  # the evaluation batches fit under the cap: the loader is read once
    return net, loader, plan


def _layers_and_history(plan: FixedPointPlan):
    return [l.to_dict() for l in plan.layers], plan.stats["history"]


# ------------------------------------------------------------------------------- the fixed-point quantizers
def test_fixed_point_act_matches_the_formula_on_hand_values():
    act = FixedPointAct(4, 2)  # step 1/4, levels -7..7
    x = torch.tensor([0.3, -0.375, 1.9, -5.0, 0.125, 0.375, 1.625])
    # -0.375*4 = -1.5 and 0.125*4 = 0.5 round half to even; 1.9 and -5 clip to +-7/4; 1.625*4 = 6.5 -> 6.
    assert torch.equal(act(x), torch.tensor([0.25, -0.5, 1.75, -1.75, 0.0, 0.5, 1.5]))
    act16 = FixedPointAct(16, 0)
    assert torch.equal(act16(torch.tensor([40000.0, -40000.0, 12345.5, 32766.6, -0.5])),
                       torch.tensor([32767.0, -32767.0, 12346.0, 32767.0, 0.0]))
    fine16 = FixedPointAct(16, 20)
    assert torch.equal(fine16(torch.tensor([0.031, 0.04, -1.0])),
                       torch.tensor([32506 / 2 ** 20, 32767 / 2 ** 20, -32767 / 2 ** 20]))
    coarse = FixedPointQuantizer(5, -3)  # step 8, levels -15..15
    assert torch.equal(coarse(torch.tensor([100.0, 200.0, -12.0, -3.9])), torch.tensor([96.0, 120.0, -16.0, 0.0]))
    tiny = FixedPointQuantizer(2, 32)  # levels -1, 0, 1 times 2^-32
    assert torch.equal(tiny(torch.tensor([3 * 2.0 ** -33, 2.0 ** -34, -1.0])),
                       torch.tensor([2.0 ** -32, 0.0, -(2.0 ** -32)]))


def test_fixed_point_act_gradient_state_dict_and_description():
    act = FixedPointAct(4, 2)
    x = torch.tensor([0.1, 5.0, -5.0, -1.0], requires_grad=True)
    act(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 0.0, 1.0]))  # straight through, zero where clipped
    assert act.signed is True and act.bits == 4 and act.frac_bits == 2 and isinstance(act.bits, int)
    assert set(act.state_dict()) == {"format_bits", "format_frac_bits"}
    other = FixedPointAct(8, 0)
    other.load_state_dict(act.state_dict())
    assert (other.bits, other.frac_bits) == (4, 2)
    assert act.describe() == {"type": "act", "method": "fixed", "bits": 4, "frac_bits": 2, "signed": True,
                              "step": 0.25}
    other.set_format(16, -5)
    assert other.qmax == 32767 and other.step == 32.0


@pytest.mark.parametrize("bits,frac,error", [(1, 0, ValueError), (17, 0, ValueError), (8, 33, ValueError),
                                             (8, -33, ValueError), (8.0, 0, TypeError), (True, 0, TypeError),
                                             (8, 1.5, TypeError)])
def test_fixed_point_format_errors(bits, frac, error):
    with pytest.raises(error, match="bits"):
        FixedPointAct(bits, frac)
    with pytest.raises(error, match="bits"):
        FixedPointQuantizer(4, 0).set_format(bits, frac)


def test_no_clipping_frac_bits():
    # F = BW - 1 - ceil(log2 max|x|)
    assert no_clipping_frac_bits(1.0, 8) == 7
    assert no_clipping_frac_bits(0.7, 8) == 7
    assert no_clipping_frac_bits(3.5, 8) == 5
    assert no_clipping_frac_bits(4.0, 16) == 13
    assert no_clipping_frac_bits(4.01, 16) == 12
    assert no_clipping_frac_bits(0.25, 8) == 9
    assert no_clipping_frac_bits(0.2, 8) == 9
    assert no_clipping_frac_bits(0.0, 6) == 5
    assert no_clipping_frac_bits(2.0 ** -40, 16) == 32  # clamped to the exportable range
    assert no_clipping_frac_bits(2.0 ** 40, 2) == -32
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="peak"):
            no_clipping_frac_bits(bad, 8)


# ------------------------------------------------------------------------------------------ bias quantization
def test_bias_quant_on_conv_and_linear():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([0.3, -1.26, 7.0]))
    q = QuantConv2d.from_float(conv, None, None, FixedPointQuantizer(4, 2))
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(q(x), F.conv2d(x, conv.weight, torch.tensor([0.25, -1.25, 1.75]), padding=1))
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.001, 100.0, -200.0]))
    ql = QuantLinear.from_float(lin, FixedPointWeightQuantizer(lin.weight.shape, 8, 6),
                                FixedPointAct(6, 3), FixedPointQuantizer(16, 8))
    xl = torch.randn(5, 4)
    w_ref = torch.clamp(torch.round(lin.weight * 64), -127, 127) / 64
    x_ref = torch.clamp(torch.round(xl * 8), -31, 31) / 8
    b_ref = torch.tensor([0.0, 100.0, -32767 / 256])
    torch.testing.assert_close(ql(xl), F.linear(x_ref, w_ref, b_ref), rtol=0, atol=1e-5)
    ql(xl).sum().backward()
    assert torch.equal(lin.bias.grad, torch.tensor([5.0, 5.0, 0.0]))  # straight through, zero where clipped


def test_layers_without_bias_quant_are_unchanged():
    conv, lin = nn.Conv2d(3, 4, 3), nn.Linear(6, 2)
    qc, ql = QuantConv2d.from_float(conv), QuantLinear.from_float(lin)
    assert qc.bias_quant is None and set(qc.state_dict()) == set(conv.state_dict())
    assert set(ql.state_dict()) == set(lin.state_dict())
    x, xl = torch.randn(2, 3, 6, 6), torch.randn(3, 6)
    assert torch.equal(qc(x), conv(x)) and torch.equal(ql(xl), lin(xl))
    built = QuantConv2d(3, 4, 3, bias_quant=FixedPointQuantizer(8, 4))
    assert set(built.state_dict()) == {"weight", "bias", "bias_quant.format_bits", "bias_quant.format_frac_bits"}


def test_bias_quant_errors():
    with pytest.raises(ValueError, match="no bias"):
        QuantConv2d.from_float(nn.Conv2d(1, 2, 3, bias=False), None, None, FixedPointQuantizer(8, 4))
    with pytest.raises(TypeError, match="bias_quant"):
        QuantLinear.from_float(nn.Linear(2, 2), None, None, nn.ReLU())
    with pytest.raises(TypeError, match="act_quant"):
        QuantLinear.from_float(nn.Linear(2, 2), None, nn.ReLU())


# -------------------------------------------------------------------------------------------- the plan
def _hand_plan() -> FixedPointPlan:
    return FixedPointPlan([
        LayerFixedPoint("conv1", "conv", 4, 3, 8, 6, 6, 2, weight_count=36, bias_count=4, act_count=64, macs=2304),
        LayerFixedPoint("fc", "linear", 3, 1, None, None, 5, 4, weight_count=32, bias_count=0, act_count=8, macs=32),
    ], {"note": "by hand"})


def test_plan_costs_by_hand():
    c = _hand_plan().cost()
    assert c["memory_bits"] == 4 * 36 + 8 * 4 + 6 * 64 + 3 * 32 + 5 * 8 == 696
    assert c["reference_memory_bits"] == 8 * (36 + 4 + 64 + 32 + 8) == 1152
    assert c["memory_saved"] == pytest.approx(1 - 696 / 1152)
    assert c["mult_cost"] == 4 * 36 * 6 * 64 + 3 * 32 * 5 * 8 == 59136
    assert c["reference_mult_cost"] == 64 * (36 * 64 + 32 * 8) == 163840
    assert c["mult_cost_saved"] == pytest.approx(1 - 59136 / 163840)
    assert c["bit_ops"] == 2304 * 4 * 6 + 32 * 3 * 5 == 55776
    assert c["reference_bit_ops"] == 64 * (2304 + 32)
    with pytest.raises(ValueError, match="reference_bits"):
        _hand_plan().cost(0)


def test_plan_round_trip_table_and_validation():
    plan = _hand_plan()
    again = FixedPointPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.to_dict() == plan.to_dict() and again.layers[1].format("biases") is None
    assert again.layers[0].format("activations") == (6, 2)
    table = plan.table().splitlines()
    assert len(table) == 4 and table[2] == "| conv1 | conv | 36 | 4 | 3 | 4 | 8 | 6 | 64 | 6 | 2 |"
    assert table[3] == "| fc | linear | 32 | 3 | 1 | 0 | - | - | 8 | 5 | 4 |"
    data = plan.to_dict()
    data["layers"][0]["w_bits"] = 17
    with pytest.raises(ValueError, match="bits"):
        FixedPointPlan.from_dict(data)
    data = plan.to_dict()
    data["layers"][0]["b_frac"] = None
    with pytest.raises(ValueError, match="b_bits and b_frac"):
        FixedPointPlan.from_dict(data)
    data = plan.to_dict()
    data["layers"][1]["colour"] = "red"
    with pytest.raises(ValueError, match="unknown keys"):
        FixedPointPlan.from_dict(data)
    with pytest.raises(ValueError, match="format"):
        FixedPointPlan.from_dict({**plan.to_dict(), "version": 99})


def test_plan_apply_errors():
    plan = _hand_plan()
    with pytest.raises(ValueError, match="no module named 'conv1'"):
        plan.apply(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match=r"no formats for the model's layers \['0'\]"):
        plan.apply(nn.Sequential(nn.Conv2d(1, 4, 3)))
    with pytest.raises(ValueError, match="fold_batchnorm"):
        plan.apply(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    mismatched = nn.Module()
    mismatched.conv1, mismatched.fc = nn.Conv2d(1, 5, 3), nn.Linear(8, 4)
    with pytest.raises(ValueError, match="45 weights"):
        plan.apply(mismatched)
    half = nn.Module()  # conv1 matches, fc does not: nothing may be replaced
    half.conv1, half.fc = nn.Conv2d(1, 4, 3), nn.Linear(9, 4)
    with pytest.raises(ValueError, match="'fc' is a linear with 36 weights"):
        plan.apply(half)
    assert type(half.conv1) is nn.Conv2d
    with pytest.raises(ValueError, match="at least one layer"):
        FixedPointPlan.from_dict({**plan.to_dict(), "layers": []})


# ---------------------------------------------------------------------------------------------- the search
def test_search_records_layers_in_network_order(searched):
    _, _, plan = searched
    assert [(l.name, l.kind, l.weight_count, l.bias_count, l.act_count, l.macs) for l in plan.layers] == [
        ("0", "conv", 54, 6, 64, 6 * 8 * 8 * 9), ("3", "conv", 432, 8, 6 * 4 * 4, 8 * 4 * 4 * 6 * 9),
        ("7", "linear", 32, 4, 8, 32)]
    for layer in plan.layers:
        for component in ("weights", "biases", "activations"):
            bits, frac = layer.format(component)
            assert 2 <= bits <= 16 and -32 <= frac <= 32
    assert plan.cost()["memory_saved"] > 0.2  # the search does lower bit widths below the 8-bit start


def test_plan_costs_agree_with_the_cost_model(searched):
    net, _, plan = searched
    if not hasattr(qcnn, "analysis") or not callable(getattr(qcnn.analysis, "cost", None)):
        pytest.skip("qcnn.analysis.cost not available")
    total = qcnn.analysis.cost(plan.apply(qcnn.fold_batchnorm(net)), (1, 8, 8)).total
    c = plan.cost()
    assert (total["memory_bits"], total["int8_memory_bits"]) == (c["memory_bits"], c["reference_memory_bits"])
    assert (total["goyal_mult_cost"], total["int8_mult_cost"]) == (c["mult_cost"], c["reference_mult_cost"])
    assert total["bops"] == c["bit_ops"]


def test_search_honours_the_budgets_and_apply_reproduces_its_accuracy(searched):
    net, loader, plan = searched
    stats = plan.stats
    assert stats["val_acc_float"] == 100.0 and stats["val_images"] == 512 and stats["budget"] == BUDGET
    assert stats["val_relative_drop"] <= 2 * BUDGET + 1e-12  # the activations of the last layer get T + T
    for record in stats["history"]:
        assert record["within_budget"] and record["relative_drop"] <= record["budget"] + 1e-12
    assert stats["history"][-1]["relative_drop"] == stats["val_relative_drop"]
    assert len(stats["history"]) == 3 * 3
    applied = plan.apply(qcnn.fold_batchnorm(net))
    assert isinstance(applied[0], QuantConv2d) and isinstance(applied[7], QuantLinear)
    assert isinstance(applied[0].act_quant, FixedPointAct) and applied[0].bias_quant.bits == plan.layers[0].b_bits
    assert _accuracy(applied, loader) == stats["val_acc_quantized"]
    assert 1 - stats["val_acc_quantized"] / 100.0 == pytest.approx(stats["val_relative_drop"])
    assert type(net[0]) is nn.Conv2d  # the model passed in is left unchanged


def test_larger_budget_never_gives_more_bits(teacher, searched):
    net, x, y = teacher
    plans = {BUDGET: searched[2]}
    for budget in (0.0, 0.005, 0.08):
        with warnings.catch_warnings():
            # Budget 0 may warn that even 16 bits change a prediction; the others must not.
            warnings.simplefilter("ignore" if budget == 0.0 else "error", RuntimeWarning)
            plans[budget] = fixed_point(net, CountingLoader(x, y), budget)
    budgets = sorted(plans)
    memory = [plans[b].cost()["memory_bits"] for b in budgets]
    mult = [plans[b].cost()["mult_cost"] for b in budgets]
    assert memory == sorted(memory, reverse=True) and mult == sorted(mult, reverse=True)
    assert memory[0] > memory[-1]
    for b in budgets:
        assert plans[b].stats["val_relative_drop"] <= 2 * b + 1e-12 or plans[b].stats["start_bits"] == 16


def test_size_schedule_shares_the_budget_by_value_count(teacher, searched):
    net, x, y = teacher
    plan = fixed_point(net, CountingLoader(x, y), BUDGET, schedule="size")
    assert plan.stats["schedule"] == "size" and searched[2].stats["schedule"] == "layers"
    # weights 54, 432, 32 of 518; input activations 64, 96, 8 of 168 per image (the layers of the first test)
    weight_shares, act_shares = [54 / 518, 486 / 518, 1.0], [64 / 168, 160 / 168, 1.0]
    budgets = {(r["component"], r["layer"]): r["budget"] for r in plan.stats["history"]}
    for name, w_share, a_share in zip(("0", "3", "7"), weight_shares, act_shares):
        assert budgets["weights", name] == pytest.approx(BUDGET * w_share)
        assert budgets["biases", name] == BUDGET
        assert budgets["activations", name] == pytest.approx(BUDGET + BUDGET * a_share)
    layer_budgets = {(r["component"], r["layer"]): r["budget"] for r in searched[2].stats["history"]}
    assert layer_budgets["weights", "3"] == pytest.approx(BUDGET * 2 / 3)  # the paper's T*i/L
    for record in plan.stats["history"]:
        assert record["within_budget"] and record["relative_drop"] <= record["budget"] + 1e-12
    assert plan.stats["val_relative_drop"] <= 2 * BUDGET + 1e-12


def test_prefix_cache_gives_the_same_search_as_recomputation(teacher, searched):
    net, x, y = teacher
    cached = searched[2]
    assert cached.stats["prefix_cache"] == "prefix" and cached.stats["evaluations_from_prefix_cache"] > 0
    reread = CountingLoader(x, y)
    recomputed = fixed_point(net, reread, BUDGET, cache_bytes=0)  # nothing kept: the loader is read per candidate
    assert recomputed.stats["evaluations_from_prefix_cache"] == 0
    # One read to calibrate, one batch to size the cuts, then one per evaluation.
    assert reread.iterations == recomputed.stats["candidates_evaluated"] + 2
    # Images (131 kB) and the cuts before layers 0 (131 kB) and 7 (16 kB) fit, the cut before layer 3 (197 kB) not.
    mixed = fixed_point(net, CountingLoader(x, y), BUDGET, cache_bytes=150_000)
    assert 0 < mixed.stats["evaluations_from_prefix_cache"] < cached.stats["evaluations_from_prefix_cache"]
    for other in (recomputed, mixed):
        assert _layers_and_history(other) == _layers_and_history(cached)
        assert other.stats["candidates_evaluated"] == cached.stats["candidates_evaluated"]


class _Untraceable(nn.Module):
    """The teacher behind data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.sum() > -1e30:
            return self.net(x)
        return -self.net(x)


def test_untraceable_model_is_searched_without_the_cache(teacher, searched):
    net, x, y = teacher
    wrapped = _Untraceable(net)
    plan = fixed_point(wrapped, CountingLoader(x, y), BUDGET)
    assert plan.stats["prefix_cache"].startswith("off")
    assert [l.name for l in plan.layers] == ["net.0", "net.3", "net.7"]
    ours = [{**l.to_dict(), "name": l.name[4:]} for l in plan.layers]
    assert ours == [l.to_dict() for l in searched[2].layers]


class _Residual(nn.Module):
    """conv - relu - conv, += skip (in place), relu_ (in place), mean, linear: the cut before conv2 keeps the skip."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        out = self.conv2(x)
        out += x
        out = torch.relu_(out)
        return self.fc(out.mean((2, 3)))


def test_residual_model_cache_keeps_skip_tensors_intact():
    torch.manual_seed(3)
    net = _Residual().eval()
    x = torch.randn(384, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    _balance_classifier(net, net.fc, x)
    with torch.no_grad():
        y = net(x).argmax(1)
    cached = fixed_point(net, CountingLoader(x, y), BUDGET)
    recomputed = fixed_point(net, CountingLoader(x, y), BUDGET, cache_bytes=0)
    assert cached.stats["evaluations_from_prefix_cache"] > 0
    assert _layers_and_history(cached) == _layers_and_history(recomputed)
    applied = cached.apply(copy.deepcopy(net))
    assert _accuracy(applied, CountingLoader(x, y)) == cached.stats["val_acc_quantized"]


def test_max_batches_and_calibration_batches(teacher):
    net, x, y = teacher
    loader = CountingLoader(x, y, batch_size=64)
    plan = fixed_point(net, loader, BUDGET, max_batches=3, calibration_batches=1)
    assert plan.stats["val_images"] == 192 and plan.stats["calibration_batches"] == 1
    start = next(r for r in plan.stats["history"] if r["component"] == "activations" and r["layer"] == "0")
    assert start["start_frac_bits"] == no_clipping_frac_bits(float(x[:64].abs().max()), plan.stats["start_bits"])
    assert _accuracy(plan.apply(qcnn.fold_batchnorm(net)), CountingLoader(x[:192], y[:192])) == \
        plan.stats["val_acc_quantized"]


def test_search_argument_errors(teacher):
    net, x, y = teacher
    loader = CountingLoader(x[:64], y[:64])
    for budget in (-0.1, 1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="budget"):
            fixed_point(net, loader, budget)
    with pytest.raises(TypeError, match="budget"):
        fixed_point(net, loader, "0.01")
    for bits in (1, 17, 8.0):
        with pytest.raises(ValueError, match="start_bits"):
            fixed_point(net, loader, start_bits=bits)
    with pytest.raises(ValueError, match="max_batches"):
        fixed_point(net, loader, max_batches=0)
    with pytest.raises(ValueError, match="cache_bytes"):
        fixed_point(net, loader, cache_bytes=-1)
    with pytest.raises(ValueError, match="local_min_gain"):
        fixed_point(net, loader, local_min_gain=2.0)
    for schedule in ("linear", None):
        with pytest.raises(ValueError, match="schedule must be one of \\['layers', 'size'\\]"):
            fixed_point(net, loader, schedule=schedule)
    with pytest.raises(TypeError, match="model"):
        fixed_point("net", loader)
    with pytest.raises(ValueError, match="fold_batchnorm"):
        fixed_point(models.create("lenet5"), loader)
    quantized = nn.Sequential(QuantLinear.from_float(nn.Linear(64, 4)))
    with pytest.raises(ValueError, match="float model"):
        fixed_point(quantized, loader)
    with pytest.raises(ValueError, match="no sample"):
        fixed_point(net, [])
    with pytest.raises(TypeError, match="pairs"):
        fixed_point(net, [x[:8]])
    with pytest.raises(ValueError, match="classifies no sample"):
        fixed_point(net, [(x[:64], torch.full((64,), 9))])
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        fixed_point(nn.Sequential(nn.Flatten()), loader)


def test_search_refuses_bad_batches_by_name(teacher):
    net, x, y = teacher
    with pytest.raises(ValueError, match="labels must be a 1-D integer tensor.*batch 1 has torch.float32"):
        fixed_point(net, [(x[:8], y[:8]), (x[8:16], y[8:16].float())])
    with pytest.raises(ValueError, match="labels must be a 1-D integer tensor.*shape \\(7,\\)"):
        fixed_point(net, [(x[:8], y[:7])])
    poisoned = x[:16].clone()
    poisoned[3, 0] = math.nan
    with pytest.raises(ValueError, match="holds NaN or inf \\(batch 0 of val_loader\\)"):
        fixed_point(net, [(poisoned, y[:16])])
    with pytest.raises(ValueError, match="cannot run on batch 0 of val_loader \\(inputs of shape \\(8, 3, 8, 8\\)\\)"):
        fixed_point(net, [(x[:8].expand(8, 3, 8, 8), y[:8])])


def test_search_config_errors_name_the_key():
    assert FixedPointSearchConfig.from_dict({"budget": 0.01}).budget == 0.01
    with pytest.raises(ConfigError, match="search.budget"):
        FixedPointSearchConfig.from_dict({"budget": 1.5}, _path="search")
    with pytest.raises(ConfigError, match="search.start_bits"):
        FixedPointSearchConfig.from_dict({"start_bits": 20}, _path="search")
    with pytest.raises(ConfigError, match="search.colour"):
        FixedPointSearchConfig.from_dict({"colour": 1}, _path="search")
    assert FixedPointSearchConfig.from_dict({"schedule": "size"}).schedule == "size"
    with pytest.raises(ConfigError, match="search.schedule: must be one of"):
        FixedPointSearchConfig.from_dict({"schedule": "count"}, _path="search")


# -------------------------------------------------------------------------------------------- the script
def _script():
    return load_training_script("search_fixed_point")


def test_script_reads_the_test_split_only_after_the_search(tmp_path, monkeypatch):
    script = _script()
    torch.manual_seed(0)
    model = models.create("vgg_small", width=4).eval()
    images = torch.randint(0, 256, (256, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    normalized = next(iter(TensorLoader(images, torch.zeros(256, dtype=torch.long), 256)))[0]
    _balance_classifier(model, model.classifier[1], normalized)
    with torch.no_grad():
        labels = model(normalized).argmax(1)
    baseline = tmp_path / "baseline.pt"
    torch.save(model.state_dict(), baseline)

    state = {"search_done": False, "test_reads": 0}

    class TestSplit(TensorLoader):
        def __iter__(self):
            if not state["search_done"]:
                raise AssertionError("the test split was read before the search finished")
            state["test_reads"] += 1
            return super().__iter__()

    splits = Splits(train=ForbiddenLoader(), val=TensorLoader(images[:160], labels[:160], 80),
                    test=TestSplit(images[160:], labels[160:], 96))
    real_search = script.fixed_point

    def search_then_allow_test(*args, **kwargs):
        plan = real_search(*args, **kwargs)
        state["search_done"] = True
        return plan

    monkeypatch.setattr(script, "build_loaders", lambda data_cfg: splits)
    monkeypatch.setattr(script, "fixed_point", search_then_allow_test)
    config = tmp_path / "fxp.yaml"
    config.write_text(f"name: fxp_test\nout_dir: {tmp_path}\nbaseline: {baseline}\n"
                      "model: {name: vgg_small, kwargs: {width: 4}}\nsearch: {budget: 0.02}\n")
    summary = script.main(["--config", str(config), "--quiet"])
    assert state["test_reads"] == 2  # float and fixed point, once each, at the end

    run = tmp_path / "fxp_test"
    plan = script.load_plan(run / "plan.json")
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["val_acc"] == summary["search_val_acc"] == plan.stats["val_acc_quantized"]
    assert summary["val_relative_drop"] <= 0.04 + 1e-12 and summary["float_val_acc"] == 100.0
    assert summary["memory_bits"] == plan.cost()["memory_bits"]
    assert len(plan.layers) == 6 and all(l.b_bits is not None for l in plan.layers)  # BN folded: convs have biases
    rebuilt = plan.apply(qcnn.fold_batchnorm(models.create("vgg_small", width=4)))
    rebuilt.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    assert _accuracy(rebuilt, splits.val) == summary["val_acc"]
    assert _accuracy(rebuilt, splits.test) == summary["test_acc"]
    deployed, _ = load_training_script("deploy").load_quantized(run)  # what training/deploy.py exports
    assert isinstance(deployed.features[0], QuantConv2d) and not deployed.training
    assert _accuracy(deployed, splits.val) == summary["val_acc"]
    edited = plan.to_dict()  # a plan.json changed after the search no longer matches model.pt's formats
    edited["layers"][1]["a_bits"] = 9 if edited["layers"][1]["a_bits"] != 9 else 8
    (run / "plan.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"plan.json and .*model.pt disagree: .*act_quant.format_bits"):
        load_training_script("deploy").load_quantized(run)
    (run / "plan.json").write_text(json.dumps(plan.to_dict()))

    results = load_training_script("results")  # docs/RESULTS.md's table: the schedule beside the budget
    older = {**summary, "search": {k: v for k, v in summary["search"].items() if k != "schedule"}}
    size = {**summary, "name": "fxp_size", "search": {**summary["search"], "schedule": "size"}}
    rows = [line for line in results.fixed_point_table([summary, older, size]).splitlines() if line.startswith("| fxp")]
    assert [row.split(" | ")[:3] for row in rows] == [["| fxp_test", "0.02", "layers"], ["| fxp_test", "0.02", "layers"],
                                                     ["| fxp_size", "0.02", "size"]]

    config.write_text(config.read_text().replace("budget: 0.02", "budget: 2"))
    with pytest.raises(ConfigError, match="search.budget"):
        script.main(["--config", str(config)])


@pytest.mark.parametrize("wide", [False, True], ids=["searched", "12-bit weights, 10-bit activations"])
def test_plan_exports_and_the_engine_computes_what_the_fake_quant_model_does(searched, tmp_path, wide):
    """plan.apply -> qcnn.export -> qcnn.load: the integer engine agrees with the fake-quant model, also with
    weights wider than 8 bits (16-bit indices in the file) and activations wider than 8 bits (int32 codes)."""
    from dataclasses import replace

    from qcnn.exporter import read_qcnn
    net, _, plan = searched
    if wide:
        plan = FixedPointPlan([replace(l, w_bits=12, w_frac=l.w_frac + 12 - l.w_bits, a_bits=10,
                                       a_frac=l.a_frac + 10 - l.a_bits) for l in plan.layers], plan.stats)
    model = plan.apply(qcnn.fold_batchnorm(net)).eval()
    path = tmp_path / "fxp.qcnn"
    qcnn.export(model, path, input_shape=(1, 8, 8), mean=[0.5], std=[0.25], verbose=False)
    doc, _ = read_qcnn(path)
    layers = [n for n in doc["nodes"] if n["op"] in ("conv2d", "linear")]
    assert [n["weight"]["bits"] for n in layers] == [l.w_bits for l in plan.layers]
    assert all(n["weight"]["kind"] == "fixed" for n in layers)
    pixels = torch.randint(0, 256, (512, 1, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    with torch.no_grad():
        fake = model((pixels.float() / 255 - 0.5) / 0.25).argmax(1)
    integer = qcnn.load(path)(pixels).argmax(1)
    assert (fake == integer).float().mean() >= 0.99


class _TwoBlockResidual(nn.Module):
    """Two residual blocks, the second with a 1x1-conv shortcut: every add reads a tensor that two layers use
    (a wide tensor in the engine), then an 8x8 average (a power-of-two divisor) and a linear layer."""

    def __init__(self):
        super().__init__()
        conv = lambda cin, cout, k=3: nn.Conv2d(cin, cout, k, padding=k // 2)  # noqa: E731
        self.stem, self.a1, self.a2 = conv(1, 6), conv(6, 6), conv(6, 6)
        self.b1, self.b2, self.short = conv(6, 8), conv(8, 8), conv(6, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a2(torch.relu(self.a1(x))) + x)
        x = torch.relu(self.b2(torch.relu(self.b1(x))) + self.short(x))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))


@pytest.mark.parametrize("seed", range(4))
def test_residual_plan_logits_are_bit_identical_in_the_engine(tmp_path, seed):
    """Fixed-point values are dyadic, so torch's float graph meets exact rounding ties at every quantizer: the
    engine's wide tensors (power-of-two grids) must keep them, or a tie breaks the other way and the codes part
    (2-bit formats and negative fractional bits included)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = _TwoBlockResidual().eval()

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    layers = []
    for name, module in net.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w, b, a = pick(2, 8), pick(2, 10), pick(2, 8)
            layers.append(LayerFixedPoint(name, "conv" if isinstance(module, nn.Conv2d) else "linear", w,
                                          pick(w - 2, w + 2), b, pick(b - 3, b + 3), a, pick(a - 4, a + 1),
                                          module.weight.numel(), module.bias.numel(), 1, 1))
    model = FixedPointPlan(layers).apply(net).eval()
    path = tmp_path / "residual.qcnn"
    qcnn.export(model, path, input_shape=(1, 8, 8), mean=[0.25], std=[0.5], verbose=False)
    pixels = torch.randint(0, 256, (64, 1, 8, 8), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        fake = model((pixels.float() / 255 - 0.25) / 0.5)
    integer = qcnn.load(path)(pixels)
    assert fake.abs().max() > 0
    assert torch.equal(integer, fake)
