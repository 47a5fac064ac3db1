"""The weight-kind registry (qcnn.quantizers.weight_kinds): the four kinds are registered, and a kind defined and
registered in one module, as a user would, is taken by the config, built by qcnn.quantize_, named by the cost
model and the results tables, and exported through its quantizer's deployed_weight."""
from __future__ import annotations

import pytest
import torch

import qcnn
from qcnn import config as qconfig
from qcnn.config import ConfigError
from qcnn.quantizers import (BinaryWeightQuantizer, CodebookWeightQuantizer, FixedPointWeightQuantizer,
                             UniformWeightQuantizer)
from qcnn.quantizers import weight_kinds
from qcnn.quantizers.weight import WeightQuantizer
from qcnn.quantizers.weight_kinds import WeightKind, kind_of, register_weight_kind, weight_kind
from qcnn.weight_format import QuantWeight

from qcnn.cli.results import _weights as results_label


class TernaryWeightQuantizer(WeightQuantizer):
    """w -> alpha * t, t in {-1, 0, +1}: zero below 0.7 mean|w| per channel (TWN, Li et al. 2016)."""

    def __init__(self, weight_shape):
        super().__init__(weight_shape)
        self.bits = 2  # what the cost model counts
        self.register_buffer("alpha", torch.ones(weight_shape[0]))
        self.register_buffer("threshold", torch.zeros(weight_shape[0]))

    def _ternary(self, weight):
        w = weight.reshape(weight.shape[0], -1)
        return (torch.sign(w) * (w.abs() > self.threshold[:, None])).reshape(weight.shape)

    def _fit(self, weight):
        w = weight.detach().reshape(weight.shape[0], -1)
        self.threshold.copy_(0.7 * w.abs().mean(dim=1))
        kept = w.abs() > self.threshold[:, None]
        self.alpha.copy_((w.abs() * kept).sum(1) / kept.sum(1).clamp(min=1))

    def quantize(self, weight):
        q = self.alpha.reshape((-1,) + (1,) * (weight.dim() - 1)) * self._ternary(weight.detach())
        return weight + (q - weight).detach()

    def assignment(self, weight):
        return (self._ternary(weight) + 1).to(torch.uint8)

    def levels(self, channel=0):
        return torch.tensor([-1.0, 0.0, 1.0]) * self.alpha[channel]

    def deployed_weight(self, weight, layer=""):
        return QuantWeight.from_integers("uniform", self._ternary(weight.detach()), self.alpha.clone(), -1, 1)


@pytest.fixture
def ternary():
    kind = register_weight_kind(WeightKind(
        name="ternary", quantizer=TernaryWeightQuantizer, bits=(2, 2),
        build=lambda cfg, shape: TernaryWeightQuantizer(shape), label=lambda w: "ternary"))
    yield kind
    del weight_kinds._KINDS["ternary"]


def test_the_four_kinds_are_registered():
    assert weight_kinds.weight_kind_names()[:4] == ("uniform", "binary", "fixed", "codebook")
    for name, cls in (("uniform", UniformWeightQuantizer), ("binary", BinaryWeightQuantizer),
                      ("fixed", FixedPointWeightQuantizer), ("codebook", CodebookWeightQuantizer)):
        assert weight_kind(name).quantizer is cls
    with pytest.raises(KeyError, match="unknown weight kind 'ternary'"):
        weight_kind("ternary")
    with pytest.raises(ValueError, match="a weight kind 'binary' is registered already"):
        register_weight_kind(WeightKind(name="binary", quantizer=BinaryWeightQuantizer, bits=(1, 1),
                                        build=lambda cfg, shape: None, label=lambda w: ""))


def test_a_registered_kind_runs_from_config_to_file(ternary, tmp_path):
    with pytest.raises(ConfigError, match=r"quant.weight.kind: must be one of \['uniform', 'binary', 'fixed', "
                                          r"'codebook', 'ternary'\], got 'quinary'"):
        qconfig.from_dict({"quant": {"weight": {"kind": "quinary", "bits": 2}}})
    cfg = qconfig.from_dict({"quant": {"weight": {"kind": "ternary", "bits": 2}, "act": {"bits": 8}}})
    with pytest.raises(ConfigError, match="quant.weight.learn_scale: only applies to kind 'uniform', not 'ternary'"):
        qconfig.from_dict({"quant": {"weight": {"kind": "ternary", "bits": 2, "learn_scale": True}}})
    with pytest.raises(ConfigError, match=r"quant.weight.bits: must be in \[2, 2\], got 3"):
        qconfig.from_dict({"quant": {"weight": {"kind": "ternary", "bits": 3}}})
    model = qcnn.models.create("vgg_small", width=4)
    qcnn.quantize_(model, cfg.quant)
    layers = [m for m in model.modules() if isinstance(getattr(m, "weight_quant", None), TernaryWeightQuantizer)]
    assert layers and kind_of(layers[0].weight_quant) == "ternary"
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    qcnn.quantize.calibrate_activations(model, [(x, torch.zeros(4, dtype=torch.long))], 1)
    report = qcnn.analysis.cost(model, (1, 28, 28))
    assert {layer.weight_format for layer in report.layers} == {"ternary"}
    assert results_label(cfg.quant.to_dict()) == "ternary"
    spec = {"input_shape": (1, 28, 28), "mean": [0.286], "std": [0.353]}
    path = qcnn.export(model, tmp_path / "ternary.qcnn", verbose=False, **spec).path
    net = qcnn.load(path)
    pixels = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert net(pixels).shape == (2, 10)
    graph = qcnn.exporter.to_graph(model, **spec)
    weights = [node.weight for node in graph.nodes if node.weight is not None]
    assert weights and all(w.levels.tolist() == [[-1, 0, 1]] for w in weights)
