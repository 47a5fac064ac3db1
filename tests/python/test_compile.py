"""torch.compile(fullgraph=True) of quantized models: one graph (no graph break), the eager model's values and
gradients, and a clear error for state a compiled graph cannot initialise."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import qcnn

pytestmark = pytest.mark.slow  # make test-fast leaves this file out

WEIGHTS = {
    "codebook": {"kind": "codebook", "bits": 4},
    "codebook_trained_centroids": {"kind": "codebook", "bits": 3, "train_centroids": True},
    "uniform_lsq": {"kind": "uniform", "bits": 4, "learn_scale": True},
    "binary": {"kind": "binary", "bits": 1},
    "fixed": {"kind": "fixed", "bits": 8, "frac_bits": 6},
    "accumulator_16": {"kind": "uniform", "bits": 4, "accumulator_bits": 16},
}
ACTS = {"lsq": {"bits": 8}, "pact": {"bits": 2, "method": "pact"}}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))


def _quantized(weight: dict, act: dict) -> nn.Module:
    model = qcnn.quantize_(_net(), {"weight": weight, "act": act})
    model(torch.randn(16, 1, 14, 14))  # calibrates the activations, fits the weights
    return model


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    y = model(x)
    (y.square().mean()).backward()
    return y.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()
                        if p.grad is not None}


def _assert_same_step(eager: nn.Module, compiled_model: nn.Module, x: torch.Tensor, tol: float) -> None:
    y_ref, g_ref = _step(eager, x)
    y, g = _step(compiled_model, x)
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
    assert g.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=tol, atol=tol, msg=f"gradient of {name}")


# Every weight kind, each activation method three times (a compile costs seconds).
@pytest.mark.parametrize("weight, act", [(w, list(ACTS)[i % 2]) for i, w in enumerate(WEIGHTS)])
def test_fullgraph_compile_matches_eager(weight, act):
    """Dynamo traces the whole quantized model as one graph (fullgraph=True fails on any break) and AOT
    autograd runs it with the ops' fake kernels; values and gradients equal the eager model's."""
    torch._dynamo.reset()
    model = _quantized(WEIGHTS[weight], ACTS[act])
    twin = copy.deepcopy(model)
    compiled_model = torch.compile(twin, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 1, 14, 14)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(x), model(x), rtol=0, atol=0)
    model.train(), twin.train()
    _assert_same_step(model, compiled_model, x, tol=1e-5)


def test_inductor_compiles_a_training_step_of_a_codebook_model():
    """The default backend (inductor) on a 4-bit k-means model: forward and backward as eager, an optimizer
    step through the compiled model trains it."""
    torch._dynamo.reset()
    model = _quantized(WEIGHTS["codebook"], ACTS["lsq"])
    twin = copy.deepcopy(model)
    compiled_model = torch.compile(twin, fullgraph=True)
    x = torch.randn(8, 1, 14, 14)
    _assert_same_step(model, compiled_model, x, tol=1e-4)
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    before = twin[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(twin[0].weight, before)
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(x), twin(x), rtol=1e-4, atol=1e-4)


def test_state_changes_reach_the_compiled_graph_without_recompiling():
    """The sign decided at calibration and an INQ freeze are tensors the graph reads, not constants baked in:
    flipping them changes the compiled output exactly as the eager one."""
    torch._dynamo.reset()
    model = _quantized(WEIGHTS["codebook"], ACTS["lsq"]).eval()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 1, 14, 14)
    with torch.no_grad():
        compiled_model(x)
        act = model[3].act_quant  # after Hardswish: calibrated signed
        assert act.signed
        act.is_signed.fill_(False)
        weights = model[0].weight_quant
        weights.freeze(model[0].weight, 0.5)
        torch.testing.assert_close(compiled_model(x), model(x), rtol=0, atol=0)


def test_a_compiled_graph_cannot_calibrate():
    """An uncalibrated, unfitted model compiles, but running it is an error that says what to do, not a
    quantization with the initial scale of 1."""
    torch._dynamo.reset()
    model = qcnn.quantize_(_net(), {"weight": WEIGHTS["codebook"], "act": ACTS["lsq"]}).eval()
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="not (calibrated|fitted).*before torch.compile"):
        compiled_model(torch.randn(2, 1, 14, 14))
