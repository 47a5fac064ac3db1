"""Bad arguments to the public API, as a new user (or an attacker) passes them: each is refused up front with an
error naming the argument or the config key path, never an obscure binding error or a failure later on."""
from __future__ import annotations

import math
import os
import re
import tempfile

import pytest
import torch
import yaml
from torch import nn

import qcnn
from qcnn import codebook, config
from qcnn.quantize import calibrate_activations

from export_helpers import MEAN, STD

INT64_MAX = 2**63 - 1
SPEC = {"input_shape": (1, 28, 28), "mean": [MEAN], "std": [STD]}


def _small_quantized_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    qcnn.quantize_(model, {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}})
    calibrate_activations(model, [torch.randn(32, 1, 28, 28)], 1)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _small_quantized_model()
    path = tmp_path_factory.mktemp("api_errors") / "plain.qcnn"
    qcnn.export(model, path, verbose=False, **SPEC)
    return model, path


def _pixels(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------- qcnn.load
LIMITS = ("max_macs_per_image", "max_activation_bytes_per_image")


@pytest.mark.parametrize("name", LIMITS)
@pytest.mark.parametrize("value", [1.5, "x", True, False, 2**63, 0, -1, 10.0**30, float("nan")])
def test_load_limits_must_be_int64s(exported, name, value):
    with pytest.raises(ValueError, match=re.escape(f"qcnn.load: {name} must be an int in [1, {INT64_MAX}], "
                                                   f"got {value!r}")):
        qcnn.load(exported[1], **{name: value})


def test_load_limits_accept_the_whole_int64_range(exported):
    model = qcnn.load(exported[1], max_macs_per_image=INT64_MAX, max_activation_bytes_per_image=INT64_MAX)
    assert torch.equal(model(_pixels()), qcnn.load(exported[1])(_pixels()))


BAD_THREADS = [1.5, True, -1, 4097, 2**31 - 1, "2", None]


@pytest.mark.parametrize("value", BAD_THREADS)
def test_load_threads(exported, value):
    with pytest.raises(ValueError, match=re.escape(f"qcnn.load: threads must be an int in [0, 4096], got {value!r}")):
        qcnn.load(exported[1], threads=value)


@pytest.mark.parametrize("value", BAD_THREADS)
def test_threads_setter(exported, value):
    model = qcnn.load(exported[1], threads=1)
    with pytest.raises(ValueError, match=re.escape(f"IntegerModel: threads must be an int in [0, 4096], "
                                                   f"got {value!r}")):
        model.threads = value
    assert model.threads == 1
    model.threads = 2
    assert model.threads == 2 and torch.equal(model(_pixels()), qcnn.load(exported[1])(_pixels()))


@pytest.mark.parametrize("name", ["count_overflows", "fuse"])
@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_load_flags_must_be_bools(exported, name, value):
    with pytest.raises(ValueError, match=re.escape(f"qcnn.load: {name} must be a bool, got {value!r}")):
        qcnn.load(exported[1], **{name: value})


def test_load_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: is a directory")):
        qcnn.load(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'missing.qcnn'}: cannot open")):
        qcnn.load(tmp_path / "missing.qcnn")
    for path in (123, None, 1.5, ["a.qcnn"]):
        with pytest.raises(TypeError, match=re.escape(f"qcnn.load: path must be a str or os.PathLike, got "
                                                      f"{type(path).__name__} {path!r}")):
            qcnn.load(path)


def test_load_path_with_a_nul_byte_opens_nothing(exported, tmp_path):
    # The engine's C string would end at the NUL and open the file before it.
    target = tmp_path / "m.qcnn"
    target.write_bytes(exported[1].read_bytes())
    for path in (f"{target}\0.txt", os.fsencode(f"{target}\0.txt")):
        with pytest.raises(ValueError, match="path .* contains a NUL byte"):
            qcnn.load(path)
    assert qcnn.load(os.fsencode(target)).num_classes == 10  # bytes paths are paths


# ---------------------------------------------------------------------------------------------- qcnn.codebook
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("call", [
    lambda x: codebook.distinct_values(x, 4),
    lambda x: codebook.distinct_values(torch.stack([torch.arange(5.0), x]), 4),
    lambda x: codebook.kmeans_1d(x, 2),
    lambda x: codebook.kmeans_1d_optimal(x, 2),
    lambda x: codebook.kde_grid_density(x),
    lambda x: codebook.fit(x, 1),
    lambda x: codebook.quantize_to_codebook(x, torch.tensor([0.0, 1.0])),
], ids=["distinct_values", "distinct_values_row_1", "kmeans_1d", "kmeans_1d_optimal", "kde_grid_density", "fit",
        "quantize_to_codebook"])
def test_codebook_inputs_must_be_finite(call, bad):
    x = torch.tensor([0.0, 1.0, bad, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"\b(x|w) contains NaN or infinite values"):
        call(x)


def test_distinct_values_names_the_group():
    x = torch.tensor([[0.0, 1.0], [2.0, NAN], [3.0, 4.0]])
    with pytest.raises(ValueError, match=re.escape("distinct_values: x contains NaN or infinite values (group 1)")):
        codebook.distinct_values(x, 2)
    values, count = codebook.distinct_values(torch.tensor([[0.0, 1.0], [2.0, 2.0]]), 2)
    assert values.tolist() == [[0.0, 1.0], [2.0, 2.0]] and count.tolist() == [2, 1]


@pytest.mark.parametrize("opts, message", [
    ({"max_iter": -5}, "max_iter must be >= 1, got -5"),
    ({"zzz": 1}, "unknown option(s) ['zzz'] for method='kmeans'"),
    ({"tol": NAN}, "tol must be finite and >= 0, got nan"),
])
def test_codebook_check_options_is_what_fit_checks(opts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        codebook.check_options("kmeans", **opts)
    with pytest.raises(ValueError, match=re.escape(message)):
        codebook.fit(torch.arange(8.0), 1, "kmeans", **opts)


# ---------------------------------------------------------------------------------------------- configs
USER_MODULE = '''
from torch import nn


class NeedsWidth(nn.Module):
    def __init__(self, width: int, num_classes: int = 10):
        super().__init__()
        self.fc = nn.Linear(width, num_classes)
'''

# The six invalid configs the loader accepted (each failed only once training began), and their relatives.
BAD_CONFIGS = [
    ({"quant": {"weight": {"fit_options": {"zzz": 1}}}}, "quant.weight.fit_options.zzz",
     "unknown option(s) ['zzz'] for method='kmeans'; valid: ['init', 'max_iter', 'tol']"),
    ({"quant": {"weight": {"fit_options": {"max_iter": -5}}}}, "quant.weight.fit_options.max_iter",
     "max_iter must be >= 1, got -5"),
    ({"model": {"name": "vgg_small", "kwargs": {"zzz": 1}}}, "model.kwargs.zzz",
     "unknown keyword argument of vgg_small (allowed: ['dropout', 'in_channels', 'num_classes', 'width'])"),
    ({"model": {"name": "vgg_small", "kwargs": {"width": 2.5}}}, "model.kwargs.width", "must be an integer, got 2.5"),
    ({"model": {"name": "api_errors_user_models:NeedsWidth", "kwargs": {}}}, "model.kwargs.width",
     "required by api_errors_user_models:NeedsWidth, missing"),
    ({"model": {"name": "torchvision.resnet18", "kwargs": {"num_clases": 10}}}, "model.kwargs.num_clases",
     "unknown keyword argument of torchvision.resnet18"),
    # relatives
    ({"model": {"name": "vgg_small", "kwargs": {"dropout": "high"}}}, "model.kwargs.dropout", "must be a number"),
    ({"model": {"name": "lenet5", "kwargs": {"num_classes": True}}}, "model.kwargs.num_classes",
     "must be an integer, got True"),
    ({"model": {"name": "torchvision.resnet18", "kwargs": {"num_classes": "ten"}}}, "model.kwargs.num_classes",
     "must be an integer, got 'ten'"),
    ({"model": {"name": "torchvision.no_such_net"}}, "model.name", "torchvision has no model builder 'no_such_net'"),
    ({"model": {"name": "api_errors_user_models:NeedsWidth", "kwargs": {"width": "8"}}}, "model.kwargs.width",
     "must be an integer, got '8'"),
    ({"quant": {"weight": {"method": "kmeans_optimal", "fit_options": {"max_iter": 5}}}},
     "quant.weight.fit_options.max_iter", "unknown option(s) ['max_iter'] for method='kmeans_optimal'"),
    ({"quant": {"weight": {"fit_options": {"seed": 1}}}}, "quant.weight.fit_options.seed", "unknown option(s)"),
    ({"quant": {"weight": {"fit_options": {"tol": "small"}}}}, "quant.weight.fit_options.tol", "tol must be a number"),
    ({"quant": {"weight": {"fit_options": {"init": "kmeans++"}, "method": "lloyd_max"}}},
     "quant.weight.fit_options.init", "init must be one of"),
    ({"quant": {"weight": {"kind": "uniform", "fit_options": {"max_iter": 5}}}}, "quant.weight.fit_options",
     "only applies to kind 'codebook', not 'uniform'"),
    ({"quant": {"weight": {"method": "kde_kmeans", "fit_options": {"sample_size": 1000}},
                "overrides": [{"pattern": "classifier.*", "weight": {"method": "kmeans"}}]}},
     "quant.overrides[0].weight.fit_options.sample_size", "unknown option(s) ['sample_size'] for method='kmeans'"),
]


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "api_errors_user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("patch, key_path, message", BAD_CONFIGS)
def test_invalid_configs_are_refused_at_load(tmp_path, user_models, patch, key_path, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(patch))
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    assert info.value.key_path == key_path
    assert str(info.value).startswith(f"{path}: {key_path}: ") and message in str(info.value)


@pytest.mark.parametrize("patch", [
    {"model": {"name": "torchvision.resnet18", "kwargs": {"num_classes": 10, "input_adapter": "gray28",
                                                          "weights": None}}},
    {"model": {"name": "torchvision.mobilenet_v2", "kwargs": {"num_classes": 10, "width_mult": 1}}},
    {"model": {"name": "vgg_small", "kwargs": {"width": 8, "dropout": 0}}},
    {"model": {"name": "api_errors_user_models:NeedsWidth", "kwargs": {"width": 8}}},
    {"quant": {"weight": {"method": "kde_kmeans", "fit_options": {"sample_size": 0.5, "bandwidth": 0.3,
                                                                  "init": "kmeans++", "max_iter": 10}}}},
    {"quant": {"weight": {"method": "lloyd_max", "fit_options": {"grid_size": 512, "tol": 0}}}},
])
def test_valid_configs_still_load_and_build(tmp_path, user_models, patch):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(patch))
    cfg = config.load(path)
    if "model" in patch:
        assert isinstance(qcnn.models.create(cfg.model.name, **cfg.model.kwargs), nn.Module)
    else:
        w = cfg.quant.weight
        assert codebook.fit(torch.randn(64, 9), 2, w.method, **w.fit_options).codebook.shape == (4,)


# ---------------------------------------------------------------------------------------------- export of wrappers
def _export_bytes(model, path) -> bytes:
    qcnn.export(model, path, verbose=False, **SPEC)
    return path.read_bytes()


def test_export_of_a_compiled_model_is_the_plain_models(exported, tmp_path):
    model, plain = exported
    compiled = torch.compile(model)
    assert _export_bytes(compiled, tmp_path / "compiled.qcnn") == plain.read_bytes()
    px = _pixels()
    assert torch.equal(qcnn.load(tmp_path / "compiled.qcnn")(px), qcnn.load(plain)(px))
    # a compiled DataParallel, and a DataParallel of a compiled model
    assert _export_bytes(torch.compile(nn.DataParallel(model)), tmp_path / "a.qcnn") == plain.read_bytes()
    assert _export_bytes(nn.DataParallel(compiled), tmp_path / "b.qcnn") == plain.read_bytes()


def test_export_onnx_of_a_compiled_model(exported, tmp_path):
    pytest.importorskip("onnx")
    model, _ = exported
    qcnn.export_onnx(model, tmp_path / "plain.onnx", **SPEC)
    qcnn.export_onnx(torch.compile(model), tmp_path / "compiled.onnx", **SPEC)
    assert (tmp_path / "compiled.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_export_of_distributed_data_parallel(exported, tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running")
    model, plain = exported
    with tempfile.TemporaryDirectory() as store:
        dist.init_process_group("gloo", init_method=f"file://{store}/pg", rank=0, world_size=1)
        try:
            wrapped = nn.parallel.DistributedDataParallel(model)
            assert _export_bytes(wrapped, tmp_path / "ddp.qcnn") == plain.read_bytes()
        finally:
            dist.destroy_process_group()


def test_a_child_named_module_is_not_taken_for_a_wrapper(tmp_path):
    """Export unwrapped anything with a `module` attribute as if it were DistributedDataParallel: this model
    was exported as its feature extractor alone (8 outputs, the classifier dropped)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.module = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten())
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.module(x))

    torch.manual_seed(0)
    model = qcnn.quantize_(Net().eval(), {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}})
    calibrate_activations(model, [torch.randn(32, 1, 28, 28)], 1)
    qcnn.export(model, tmp_path / "m.qcnn", verbose=False, **SPEC)
    loaded = qcnn.load(tmp_path / "m.qcnn")
    assert loaded.num_classes == 10
    px = _pixels()
    with torch.no_grad():
        ref = model((px.float() / 255 - MEAN) / STD)
    assert math.isclose(float((loaded(px) - ref).abs().max()), 0.0, abs_tol=0.05 * float(ref.abs().max()))


def test_quantize_and_fold_a_compiled_model():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    plain[1].running_mean.uniform_(-1, 1)
    x = torch.randn(2, 1, 8, 8)
    compiled = torch.compile(plain)
    folded = qcnn.fold_batchnorm(compiled)
    assert isinstance(folded[1], torch.nn.Identity) and torch.allclose(folded(x), plain.eval()(x), atol=1e-5)
    cfg = {"weight": {"kind": "uniform", "bits": 4}, "act": None}
    assert qcnn.quantize_(compiled, cfg) is compiled
    assert sorted(qcnn.quantize.quant_layers(compiled)) == ["0", "4"]  # the wrapped module's names
    assert isinstance(plain[0], qcnn.nn.QuantConv2d)
