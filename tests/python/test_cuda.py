"""Quantized networks on a CUDA device: the same quantized weights and outputs as on the CPU, the same
gradients, and the retraining loop end to end. Skipped without a GPU (ops-level CUDA checks are in
test_fake_quant.py)."""
import copy
import importlib.util

import pytest
import torch

import qcnn
from qcnn import config as qconfig, data, engine, models, retrain
from qcnn.nn import QuantAct
from qcnn.quantize import quant_layers, refit_weights

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
if not (hasattr(qcnn.ops, "fake_quant") and importlib.util.find_spec("qcnn.codebook") is not None):
    pytest.skip("qcnn.ops.fake_quant / qcnn.codebook not built yet", allow_module_level=True)

QUANT = {
    "codebook_kmeans": {"weight": {"kind": "codebook", "bits": 4, "method": "kmeans"}, "act": {"bits": 8}},
    "codebook_kde_lm": {"weight": {"kind": "codebook", "bits": 3, "method": "kde_lloyd_max"}, "act": {"bits": 8}},
    "uniform_lsq": {"weight": {"kind": "uniform", "bits": 4, "learn_scale": True}, "act": {"bits": 8}},
    "fixed": {"weight": {"kind": "fixed", "bits": 8, "frac_bits": 6}, "act": {"bits": 8, "method": "pact"}},
    "binary_a2": {"weight": {"kind": "binary", "bits": 1}, "act": {"bits": 2, "method": "pact"},
                  "input_act": {"bits": 8, "signed": True}},
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 convolutions would differ from the CPU by ~1e-3 and flip activation codes."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _cpu_and_cuda_models(name: str):
    torch.manual_seed(0)
    model = models.create("vgg_small", width=4)
    qcnn.quantize_(model, QUANT[name])
    model.eval()
    model(torch.randn(32, 1, 28, 28))  # calibrates the activation quantizers, fits the weight quantizers
    return model, copy.deepcopy(model).cuda()


@pytest.mark.parametrize("name", QUANT)
def test_quantized_weights_and_refits_equal_cpu(name):
    cpu, gpu = _cpu_and_cuda_models(name)
    for (layer_name, a), b in zip(quant_layers(cpu).items(), quant_layers(gpu).values()):
        if a.weight_quant is None:
            continue
        assert _rel_err(b.weight_quant(b.weight), a.weight_quant(a.weight)) < 1e-6, layer_name
    with torch.no_grad():  # move the latent weights, refit on both devices: same codebooks, same assignment
        for p in cpu.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for p, q in zip(cpu.parameters(), gpu.parameters()):
            q.copy_(p)
    change_cpu, change_gpu = refit_weights(cpu), refit_weights(gpu)
    assert change_gpu["change_fraction"] == pytest.approx(change_cpu["change_fraction"], abs=1e-3)
    for (layer_name, a), b in zip(quant_layers(cpu).items(), quant_layers(gpu).values()):
        if a.weight_quant is None:
            continue
        assert b.weight_quant.fit_assignment.device.type == "cuda"
        agree = (a.weight_quant.fit_assignment == b.weight_quant.fit_assignment.cpu()).float().mean()
        assert agree > 0.999, layer_name


@pytest.mark.parametrize("name", QUANT)
def test_forward_and_gradients_equal_cpu(name):
    """Weights quantized, activations float: any difference beyond float rounding is a bug. (With
    quantized activations, rounding differences flip codes, batch norm spreads them, and a width-4 net
    ends several percent apart: the activation quantizers are compared one by one below.)"""
    weight_only = {"weight": QUANT[name]["weight"]}
    torch.manual_seed(0)
    cpu = models.create("vgg_small", width=4)
    qcnn.quantize_(cpu, weight_only)
    cpu.eval()  # dropout masks would come from two different generators
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    out_cpu, out_gpu = cpu(x), gpu(x.cuda())
    assert _rel_err(out_gpu.detach(), out_cpu.detach()) < 1e-4
    torch.nn.functional.cross_entropy(out_cpu, y).backward()
    torch.nn.functional.cross_entropy(out_gpu, y.cuda()).backward()
    for (pname, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        assert (p.grad is None) == (q.grad is None), pname
        if p.grad is not None and p.grad.norm() > 0:
            assert _rel_err(q.grad, p.grad) < 1e-3, pname


@pytest.mark.parametrize("bits,method,signed", [(8, "lsq", True), (8, "lsq", False), (4, "pact", False),
                                                (2, "pact", False), (3, "lsq", False)])
def test_act_quantizer_equals_cpu(bits, method, signed):
    act = QuantAct(bits=bits, signed=signed, method=method)
    x = torch.randn(8, 16, 10, 10) * 3
    act(x)  # calibrates on the CPU
    act_gpu = copy.deepcopy(act).cuda()
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_cpu, out_gpu = act(xc), act_gpu(xg)
    assert torch.equal(out_gpu.cpu(), out_cpu)  # elementwise, same float arithmetic: bit for bit
    g = torch.randn_like(x)
    out_cpu.backward(g)
    out_gpu.backward(g.cuda())
    assert torch.equal(xg.grad.cpu(), xc.grad)
    for (pname, p), q in zip(act.named_parameters(), act_gpu.parameters()):
        # float32 sums of ~1e4 signed terms, added in another order: 1e-4 apart was seen
        assert _rel_err(q.grad, p.grad) < 1e-3, pname


def test_retrain_loop_runs_on_cuda(tmp_path):
    try:
        data.find_idx(qconfig.DataConfig().path, data.IDX_FILES["train"][0])
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    cfg = qconfig.from_dict({
        "name": "cuda", "out_dir": str(tmp_path),
        "data": {"train_subset": 1024, "val_subset": 256, "test_subset": 256, "batch_size": 64},
        "model": {"name": "vgg_small", "kwargs": {"width": 8}},
        "training": {"epochs": 1, "lr": 0.05},
        "quant": QUANT["codebook_kmeans"],
        "retrain": {"max_rounds": 2, "min_rounds": 2, "epochs_per_round": 1, "lr": 0.01},
    })
    engine.seed_everything(0)
    model = models.create(cfg.model.name, **cfg.model.kwargs).cuda()
    splits = data.build_loaders(cfg.data)
    qcnn.quantize_(model, cfg.quant)
    result = retrain.run(model, cfg, splits.train, splits.val, progress=False)
    assert len(result["rounds"]) == 2
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert 10.0 < result["rounds"][-1]["val_acc"] <= 100.0
