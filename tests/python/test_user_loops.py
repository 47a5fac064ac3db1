"""qcnn on a user's own code: retrain.run on a torch DataLoader, unlabeled calibration batches, models in
half precision, float checkpoints loaded into quantized models."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import qcnn
from qcnn import config as qconfig, models
from qcnn.quantize import calibrate_activations, quant_layers

QUANT = {"weight": {"kind": "codebook", "bits": 4}, "act": {"bits": 8}}


def _data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _cfg(tmp_path):
    return qconfig.from_dict({"name": "own", "out_dir": str(tmp_path), "model": {"name": "vgg_small",
                              "kwargs": {"width": 4}}, "quant": QUANT,
                              "retrain": {"max_rounds": 2, "min_rounds": 2, "epochs_per_round": 1, "lr": 0.01}})


def test_retrain_run_takes_a_torch_dataloader(tmp_path):
    assert qcnn.retrain.run is not None  # import qcnn is enough
    x, y = _data()
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(*_data(64, seed=1)), batch_size=32)
    model = qcnn.quantize_(models.create("vgg_small", width=4), QUANT)
    result = qcnn.retrain.run(model, _cfg(tmp_path), train, val, progress=False)
    assert result["finished"] and len(result["rounds"]) == 2
    assert all(0.0 <= r["val_acc"] <= 100.0 for r in result["rounds"])
    assert (tmp_path / "own" / "rounds.jsonl").is_file()
    # A DataLoader records no input spec: export then needs it from the caller.
    with pytest.raises(ValueError, match="records no input spec"):
        qcnn.export(model, tmp_path / "m.qcnn", verbose=False)


def test_loaders_without_length_or_labels_are_clear_errors(tmp_path):
    x, y = _data(64)
    model = qcnn.quantize_(models.create("vgg_small", width=4), QUANT)
    generator = ((x[i:i + 32], y[i:i + 32]) for i in range(0, 64, 32))
    with pytest.raises(TypeError, match="train_loader: the learning-rate schedule needs the number of batches"):
        qcnn.retrain.run(model, _cfg(tmp_path), generator, [(x, y)], progress=False)
    with pytest.raises(ValueError, match="train_loader is empty"):
        qcnn.retrain.run(model, _cfg(tmp_path), [], [(x, y)], progress=False)
    with pytest.raises(TypeError, match="training and evaluation need \\(x, y\\) batches"):
        qcnn.retrain.run(model, _cfg(tmp_path), [x[:32], x[32:]], [(x, y)], progress=False)


def test_calibration_takes_unlabeled_batches():
    x, _ = _data(64)
    for batches in ([x[:32], x[32:]], [(x[:32],), (x[32:],)], DataLoader(TensorDataset(x), batch_size=32)):
        model = qcnn.quantize_(models.create("vgg_small", width=4), QUANT)
        assert calibrate_activations(model, batches, 2) == 2
        assert all(bool(layer.act_quant.calibrated) for layer in quant_layers(model).values())
    with pytest.raises(TypeError, match="calibration loader: a batch must be a tensor or an \\(x, ...\\) tuple"):
        calibrate_activations(model, ["not a tensor"], 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("weight", [{"kind": "codebook", "bits": 4}, {"kind": "uniform", "bits": 4, "learn_scale": True},
                                    {"kind": "binary", "bits": 1}, {"kind": "fixed", "bits": 8}])
def test_a_quantized_model_runs_and_trains_in_half_precision(dtype, weight):
    torch.manual_seed(0)
    model = qcnn.quantize_(models.create("resnet_small", width=4), {"weight": weight, "act": {"bits": 4, "method": "pact"}})
    x, y = _data(16)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    low = copy.deepcopy(model).to(dtype)
    for layer in quant_layers(low).values():  # the quantizers keep float32 state, the layers take the dtype
        assert layer.weight.dtype == dtype
        assert all(t.dtype != dtype for t in layer.act_quant.state_dict().values())
    with torch.no_grad():
        out = low(x.to(dtype))
    assert out.dtype == dtype
    assert (out.float() - reference).abs().max() <= 0.1 * reference.abs().max()
    low.train()
    torch.nn.functional.cross_entropy(low(x.to(dtype)).float(), y).backward()
    assert all(p.grad is None or torch.isfinite(p.grad.float()).all() for p in low.parameters())


def test_a_float_checkpoint_loads_into_a_quantized_model_and_refits():
    float_model = models.create("vgg_small", width=4)
    state = float_model.state_dict()
    model = qcnn.quantize_(models.create("vgg_small", width=4), QUANT)
    x, _ = _data(8)
    model(x)  # fitted and calibrated on its own (random) weights
    model.load_state_dict(state)  # strict: the quantizer state is not in a float checkpoint
    conv = model.features[0]
    assert torch.equal(conv.weight, float_model.features[0].weight)
    assert not bool(conv.weight_quant.fitted) and not bool(conv.act_quant.calibrated)
    model(x)
    assert bool(conv.weight_quant.fitted) and bool(conv.act_quant.calibrated)
    levels = set(conv.weight_quant(conv.weight).detach().flatten().tolist())
    assert len(levels) <= 16 * conv.weight.shape[0]
    # Part of a quantizer's state is a real mismatch.
    partial = dict(model.state_dict())
    del partial["features.0.weight_quant.codebook"]
    with pytest.raises(RuntimeError, match="features.0.weight_quant.codebook"):
        qcnn.quantize_(models.create("vgg_small", width=4), QUANT).load_state_dict(partial)
