"""Macro F1 (qcnn.engine.macro_f1, evaluate's 'f1') and the F1 and binary-weight study columns of training/results.py."""
import json

import pytest
import torch
from torch import nn

from qcnn import config as qconfig, engine
from qcnn.cli import results

# labels 0 0 1 1 2, predictions 0 1 1 1 0:
# class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 2, FP 1, FN 0 -> 4/5; class 2: TP 0, FN 1 -> 0.
LABELS, PREDICTIONS = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
HAND_F1 = 100 * (0.5 + 0.8 + 0.0) / 3


def test_macro_f1_hand_example():
    assert engine.macro_f1(torch.tensor(PREDICTIONS), torch.tensor(LABELS)) == pytest.approx(HAND_F1)
    assert engine.macro_f1(PREDICTIONS, LABELS) == pytest.approx(43.3333333)


def test_macro_f1_counts_classes_of_labels_or_predictions_only():
    # class 0: TP 1, FN 1 -> 2/3; class 7 is only predicted -> 0; classes 1..6 appear nowhere and do not count
    assert engine.macro_f1(torch.tensor([0, 7]), torch.tensor([0, 0])) == pytest.approx(100 * (2 / 3) / 2)
    assert engine.macro_f1(torch.tensor([3, 5, 5]), torch.tensor([3, 5, 5])) == pytest.approx(100.0)
    assert engine.macro_f1(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64)) == 0.0


def test_macro_f1_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(3)
    for classes in (2, 5, 10):
        labels = torch.randint(0, classes, (400,), generator=gen)
        predictions = torch.where(torch.rand(400, generator=gen) < 0.6, labels,
                                  torch.randint(0, classes + 2, (400,), generator=gen))
        expected = 100 * metrics.f1_score(labels.numpy(), predictions.numpy(), average="macro")
        assert engine.macro_f1(predictions, labels) == pytest.approx(expected)


def test_macro_f1_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        engine.macro_f1(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        engine.macro_f1(torch.tensor([0, 1]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="length"):
        engine.macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_evaluate_reports_macro_f1():
    model = nn.Linear(3, 3)
    with torch.no_grad():  # logits = x, so the prediction is the hot index of each row
        model.weight.copy_(torch.eye(3))
        model.bias.zero_()
    rows = torch.eye(3)[torch.tensor(PREDICTIONS)]
    loader = [(rows[:3], torch.tensor(LABELS[:3])), (rows[3:], torch.tensor(LABELS[3:]))]
    out = engine.evaluate(model, loader)
    assert out["n"] == 5 and out["acc"] == pytest.approx(60.0)
    assert out["f1"] == pytest.approx(HAND_F1)


def _quantized_summary(name, act_bits, f1=None, float_f1=None):
    quant = {"weight": {"kind": "binary", "bits": 1, "granularity": "channel"},
             "act": {"bits": act_bits, "signed": False, "method": "pact"},
             "input_act": {"bits": 8, "signed": True, "method": "lsq"}}
    s = {"name": name, "kind": "quantized", "quant": quant, "rounds": 1, "best_round": 0, "incremental": False,
         "baseline": "runs/base/model.pt", "float_test_acc": 92.0, "quant_test_acc": 88.0, "folded_test_acc": 88.0}
    if f1 is not None:
        s["quant_test_f1"] = f1
    if float_f1 is not None:
        s["float_test_f1"] = float_f1
    return s


def test_results_table_shows_f1_or_dash_for_older_summaries():
    old = _quantized_summary("old", 2)
    new = _quantized_summary("new", 2, f1=87.5, float_f1=91.25)
    base_old = {"name": "base", "kind": "float", "epochs": 3, "test_acc": 92.0}
    lines = results.table([base_old, old, new]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[5:9] == ["float test %", "float test F1", "quantized test %", "quantized test F1"]
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    assert cells["base"][5:7] == ["92.00", "-"]
    assert cells["old"][5:9] == ["92.00", "-", "88.00", "-"]
    assert cells["new"][5:9] == ["92.00", "91.25", "88.00", "87.50"]
    deploy = {"run": "runs/x", "file_bytes_packed": 10, "ratio_packed": 2.0, "file_bytes_huffman": 9,
              "ratio_huffman": 2.2, "fake_quant_test_acc": 88.0, "load_test_acc": 88.0, "load_agreement": 100.0}
    row = results.deploy_table([deploy, {**deploy, "fake_quant_test_f1": 86.0, "load_test_f1": 86.5}]).splitlines()
    assert [c.strip() for c in row[2].strip("|").split("|")][3:7] == ["88.00", "-", "88.00 (100.00)", "-"]
    assert [c.strip() for c in row[3].strip("|").split("|")][3:7] == ["88.00", "86.00", "88.00 (100.00)", "86.50"]


def test_binary_study_table(tmp_path):
    base = {"name": "base", "kind": "float", "epochs": 3, "test_acc": 92.0, "test_f1": 90.0}
    summaries = [base, _quantized_summary("bin_a2", 2, f1=87.0), _quantized_summary("bin_a8", 8),
                 {**_quantized_summary("w4", 8), "quant": {"weight": {"kind": "uniform", "bits": 4}}},
                 {**_quantized_summary("other_net_a2", 2), "model": "torchvision.resnet18"}]
    for s in summaries[1:3]:
        s["model"] = "vgg_small"  # the net of configs/baseline.yaml, which the kernel benchmark measures
        cfg = qconfig.from_dict({"name": s["name"], "model": {"name": "vgg_small", "kwargs": {"width": 4}},
                                 "quant": s["quant"]})
        (tmp_path / s["name"]).mkdir()
        qconfig.dump(cfg, tmp_path / s["name"] / "config.yaml")
    bench = tmp_path / "kernels.json"  # bench_kernels.py's rows: the most threads' ratio is the measured speedup
    bench.write_text(json.dumps({"rows": [{"hidden_act_bits": 2, "threads": 1, "ratio": 1.5},
                                          {"hidden_act_bits": 2, "threads": 2, "ratio": 2.5},
                                          {"hidden_act_bits": 2, "threads": 2, "ratio": 9.0, "forced_isa": True},
                                          {"case": "acc16", "threads": 2, "ratio": 1.6}],
                                 "baseline_config": "configs/baseline.yaml"}))
    lines = results.binary_study_table(summaries, tmp_path, bench).splitlines()
    assert len(lines) == 5  # header, rule, the three binary runs in activation-bit order
    a2 = [c.strip() for c in lines[2].strip("|").split("|")]
    other = [c.strip() for c in lines[3].strip("|").split("|")]
    a8 = [c.strip() for c in lines[4].strip("|").split("|")]
    assert other[0] == "other_net_a2" and other[8] == "-"  # measured on another net: not this one's speedup
    assert a2[:5] == ["bin_a2", "8", "2", "88.00", "87.00"]
    assert a2[5] == f"{100 * (90 - 87) / 90:.2f}"  # relative F1 drop against the baseline found by name
    # VGGSmall width 4 on 1x28x28: MACs per conv = outputs * Cin * 9, then the 16->10 linear
    macs = [28 * 28 * 4 * 1 * 9, 14 * 14 * 8 * 4 * 9, 14 * 14 * 8 * 8 * 9, 7 * 7 * 16 * 8 * 9, 7 * 7 * 16 * 16 * 9, 10 * 16]
    total = sum(macs)
    popcount_a2 = 64 * total / (macs[0] * 8 + (total - macs[0]) * 2)
    assert a2[6] == f"{popcount_a2:.2f}x"
    assert a2[7] == f"{total * 1024 / (macs[0] * 8 + (total - macs[0]) * 2):.2f}x"
    assert a2[8] == "2.50x"
    assert a8[:5] == ["bin_a8", "8", "8", "88.00", "-"] and a8[5] == "-" and a8[6] == "8.00x" and a8[8] == "-"
    assert results.binary_study_table([base], tmp_path, bench) == "(no binary-weight run yet)"
    assert results.measured_binary_speedups(tmp_path / "absent.json") == (None, {})
