"""qcnn.export on quantized qcnn models: the traced graph computes what the fake-quant model computes, and
the exported file runs in the integer runtime with the same predictions."""
import pytest
import torch
from torch import nn

import qcnn
from qcnn import models
from qcnn.exporter import Graph, reference_forward, to_graph
from qcnn.quantize import calibrate_activations
from export_helpers import FASHION_INPUT  # noqa: E402

WEIGHTS = {
    "codebook_channel": {"kind": "codebook", "bits": 4, "method": "kmeans", "granularity": "channel"},
    "codebook_tensor": {"kind": "codebook", "bits": 3, "method": "kmeans", "granularity": "tensor"},
    "uniform_sym": {"kind": "uniform", "bits": 4, "granularity": "channel", "symmetric": True},
    "uniform_affine": {"kind": "uniform", "bits": 5, "granularity": "tensor", "symmetric": False},
    "fixed": {"kind": "fixed", "bits": 8},
    "binary": {"kind": "binary", "bits": 1, "granularity": "channel"},
}


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def _pixels(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8)


def _quantized(name: str, weight: dict, act: dict | None = None, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = models.create(name, **kwargs)
    _randomize_bn(model, gen)
    qcnn.quantize_(model, {"weight": weight, "act": act or {"bits": 8, "method": "lsq"},
                           "input_act": {"bits": 8, "signed": True, "method": "lsq"}})
    pixels = _pixels(64, gen)
    graph_input = Graph((1, 28, 28), [0.286], [0.353]).normalize(pixels)
    calibrate_activations(model, [(graph_input, None)], 1)
    model.eval()
    with torch.no_grad():
        model(graph_input)  # fits the weight quantizers
    return model, pixels


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
def test_graph_matches_fake_quant_model(kind):
    model, pixels = _quantized("vgg_small", WEIGHTS[kind], width=8)
    graph = to_graph(model, **FASHION_INPUT)
    x = graph.normalize(pixels)
    with torch.no_grad():
        expected = model(x)
        got = reference_forward(graph, x)
    # Same quantized values; BN folded as y * s + t instead of (y - mean) * s' + beta: float rounding only.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,kwargs", [("lenet5", {}), ("sequential", {"width": 8, "depth": 6}),
                                         ("resnet_small", {"width": 8}), ("vgg_small", {"width": 8})])
@pytest.mark.parametrize("act", [{"bits": 8, "method": "lsq"}, {"bits": 2, "method": "pact"}])
def test_models_export_and_run_integer(tmp_path, name, kwargs, act):
    model, pixels = _quantized(name, WEIGHTS["codebook_channel"], act, **kwargs)
    graph = to_graph(model, **FASHION_INPUT)
    with torch.no_grad():
        expected = model(graph.normalize(pixels))
    report = qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    assert report.file_bytes == (tmp_path / "m.qcnn").stat().st_size
    logits = qcnn.load(tmp_path / "m.qcnn")(pixels)
    # The integer engine rounds intermediate values in fixed point: a value on a rounding boundary can land
    # on the neighbouring code, which moves 2-bit activations by a whole step. Predictions agree.
    agree = float((logits.argmax(1) == expected.argmax(1)).float().mean())
    assert agree >= 0.95, f"{name}: integer runtime agrees on {agree:.1%} of predictions"
    if act["bits"] == 8:
        spread = float(expected.abs().max())
        assert float((logits - expected).abs().max()) <= 0.05 * spread


def test_export_ratio_counts_only_the_float_model(tmp_path):
    model, _ = _quantized("vgg_small", WEIGHTS["codebook_channel"], width=8)
    report = qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    float_model = models.create("vgg_small", width=8)
    expected = sum(4 * t.numel() for t in float_model.state_dict().values() if t.is_floating_point())
    assert report.float32_bytes == expected
    assert report.ratio == pytest.approx(expected / report.file_bytes)


def test_float_layer_is_named(tmp_path):
    model, _ = _quantized("vgg_small", WEIGHTS["uniform_sym"], width=8)
    model.classifier[1] = nn.Linear(model.classifier[1].in_features, 10)
    with pytest.raises(TypeError, match="classifier"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)


def test_unsupported_module_is_named(tmp_path):
    model, _ = _quantized("vgg_small", WEIGHTS["uniform_sym"], width=8)
    model.features[2] = nn.PReLU()
    with pytest.raises(TypeError, match=r"features_2.*PReLU has no export.*exportable activations: ReLU, ReLU6"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)


def test_uncalibrated_activation_is_an_error(tmp_path):
    model = models.create("vgg_small", width=8)
    qcnn.quantize_(model, {"weight": WEIGHTS["binary"], "act": {"bits": 8, "method": "lsq"}})
    with pytest.raises(ValueError, match="not fitted|not calibrated"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)


def test_partially_frozen_incremental_layer_is_an_error(tmp_path):
    model, _ = _quantized("vgg_small", WEIGHTS["codebook_channel"], width=8)
    first = model.features[0]
    first.weight_quant.freeze(first.weight, 0.5)
    with pytest.raises(ValueError, match=r"features\.0.*frozen only 50%"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **FASHION_INPUT)
    first.weight_quant.freeze(first.weight, 1.0)
    graph = to_graph(model, **FASHION_INPUT)
    assert torch.equal(graph.nodes[0].weight.dequantize(), first.quantized_weight().detach())


class _TrainingBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        if self.training:  # a training-only branch: inference skips it
            x = torch.tanh(x)
        return self.fc(torch.relu(x).mean((2, 3)))


def test_a_model_left_in_training_mode_exports_its_inference_graph(tmp_path):
    torch.manual_seed(0)
    model = _TrainingBranch()
    qcnn.quantize_(model, {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}})
    px = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = px.float() / 255
    calibrate_activations(model, [x], 1)
    model.train()
    qcnn.export(model, tmp_path / "m.qcnn", input_shape=(1, 8, 8), mean=[0.0], std=[1.0], verbose=False)
    assert model.training  # the mode is the caller's
    with torch.no_grad():
        ref = model.eval()(x)
    out = qcnn.load(tmp_path / "m.qcnn")(px)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
