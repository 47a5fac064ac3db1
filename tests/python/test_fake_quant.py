import math

import pytest
import torch

import qcnn
from qcnn.ops import fake_quant, fake_quant_binary, fake_quant_fixed

BITS = [(0, 1), (-1, 0), (-8, 7), (0, 15), (-128, 127), (0, 255), (-32768, 32767), (0, 65535), (-7, 7)]


def _qparams(channels, qmin, qmax, device):
    scale = (torch.rand(channels, device=device) * 0.2 + 0.01).float()
    zero_point = torch.randint(qmin, qmax + 1, (channels,), device=device, dtype=torch.int32)
    return scale, zero_point


@pytest.mark.parametrize("qmin,qmax", BITS)
@pytest.mark.parametrize("shape", [(1000,), (3, 17, 5), (2, 1, 4, 4), (0, 3)])
def test_per_tensor_equals_torch(device, qmin, qmax, shape):
    x = torch.randn(shape, device=device) * 4
    scale, zp = _qparams(1, qmin, qmax, device)
    # exact ties: values that land on .5 after scaling
    if x.numel():
        x.view(-1)[: min(50, x.numel())] = (torch.arange(min(50, x.numel()), device=device) - 25 + 0.5) * scale
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp.item()), qmin, qmax)
    assert torch.equal(fake_quant(x, scale, zp, qmin, qmax), ref)


@pytest.mark.parametrize("qmin,qmax", BITS)
@pytest.mark.parametrize("shape,axis", [((8, 3, 3, 3), 0), ((4, 6, 5, 5), 1), ((4, 6, 5, 7), -1), ((5, 9), 1),
                                        ((7,), 0), ((2, 3, 1), 2)])
def test_per_channel_equals_torch(device, qmin, qmax, shape, axis):
    x = torch.randn(shape, device=device) * 3
    scale, zp = _qparams(shape[axis], qmin, qmax, device)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis % len(shape), qmin, qmax)
    assert torch.equal(fake_quant(x, scale, zp, qmin, qmax, axis=axis), ref)


def test_non_contiguous_input(device):
    x = torch.randn(16, 12, device=device).t()
    scale, zp = _qparams(16, -8, 7, device)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, 1, -8, 7)
    assert torch.equal(fake_quant(x, scale, zp, -8, 7, axis=1), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_matches_torch(device, dtype):
    x = (torch.randn(4, 8, 33, device=device) * 2).to(dtype)
    scale, zp = _qparams(8, -8, 7, device)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, 1, -8, 7)
    out = fake_quant(x, scale, zp, -8, 7, axis=1)
    assert out.dtype == dtype
    assert torch.equal(out, ref)


def test_nan_propagates_and_inf_saturates(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.3], device=device)
    out = fake_quant(x, torch.tensor([0.1], device=device), torch.tensor([0], dtype=torch.int32, device=device), -8, 7)
    assert math.isnan(out[0].item())
    assert out[1:].tolist() == pytest.approx([0.7, -0.8, 0.3])


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_ste_gradient(device, axis):
    x = (torch.randn(6, 10, 7, device=device) * 3).requires_grad_()
    channels = 1 if axis is None else x.shape[axis]
    scale, zp = _qparams(channels, -4, 3, device)
    g = torch.randn_like(x)
    fake_quant(x, scale, zp, -4, 3, axis=axis).backward(g)
    view = [1] * 3
    if axis is not None:
        view[axis] = -1
    code = zp.view(view) + torch.round(x.detach() * (1.0 / scale.view(view)))
    expected = g * ((code >= -4) & (code <= 3))
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("grad_factor", [1.0, 0.25])
def test_lsq_gradients_match_torch_per_tensor(device, grad_factor):
    x = torch.randn(3000, device=device) * 2
    g = torch.randn_like(x)
    s0, z0 = torch.tensor([0.07], device=device), torch.tensor([3.0], device=device)
    xr, sr, zr = (t.clone().requires_grad_() for t in (x, s0, z0))
    torch._fake_quantize_learnable_per_tensor_affine(xr, sr, zr, -16, 15, grad_factor).backward(g)
    xq, sq, zq = (t.clone().requires_grad_() for t in (x, s0, z0))
    out = fake_quant(xq, sq, zq, -16, 15, grad_factor=grad_factor)
    out.backward(g)
    assert torch.allclose(xq.grad, xr.grad)
    assert torch.allclose(sq.grad, sr.grad, rtol=1e-4, atol=1e-3)
    assert torch.allclose(zq.grad, zr.grad, rtol=1e-4, atol=1e-3)


def test_lsq_gradients_match_torch_per_channel(device):
    x = torch.randn(8, 5, 9, device=device) * 2
    g = torch.randn_like(x)
    s0 = torch.rand(5, device=device) * 0.1 + 0.02
    z0 = torch.randint(0, 16, (5,), device=device).float()
    xr, sr, zr = (t.clone().requires_grad_() for t in (x, s0, z0))
    torch._fake_quantize_learnable_per_channel_affine(xr, sr, zr, 1, 0, 15, 1.0).backward(g)
    xq, sq, zq = (t.clone().requires_grad_() for t in (x, s0, z0))
    fake_quant(xq, sq, zq, 0, 15, axis=1).backward(g)
    assert torch.allclose(xq.grad, xr.grad)
    assert torch.allclose(sq.grad, sr.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(zq.grad, zr.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_binary_forward_and_gradient(device, axis):
    w = torch.randn(6, 5, 3, device=device) * 0.8
    w[0, 0, 0] = 0.0
    g = torch.randn_like(w)
    wq = w.clone().requires_grad_()
    out = fake_quant_binary(wq, axis=axis)
    out.backward(g)
    dims = [d for d in range(3) if d != axis] if axis is not None else [0, 1, 2]
    # reference: autograd through alpha = mean|w| and a clipped-identity sign
    wr = w.clone().requires_grad_()
    sign = torch.where(wr.detach() >= 0, 1.0, -1.0)
    alpha = (wr * sign).mean(dim=dims, keepdim=True)  # |w| with d|w|/dw = sign(w), sign(0) = +1
    ste_sign = sign + (wr - wr.detach()) * (wr.detach().abs() <= 1)
    ref = alpha * ste_sign
    assert torch.allclose(out, ref.detach(), atol=1e-6)
    assert out.view(-1)[0].item() > 0  # sign(0) = +1
    ref.backward(g)
    assert torch.allclose(wq.grad, wr.grad, atol=1e-5)


@pytest.mark.parametrize("bits,frac", [(8, 4), (4, 0), (6, -2), (5, 9), (16, 10), (2, 1)])
def test_fixed_point(device, bits, frac):
    x = torch.randn(500, device=device) * 8
    q = torch.clamp(torch.round(x * 2.0 ** frac), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) / 2.0 ** frac
    assert torch.equal(fake_quant_fixed(x, bits, frac), q)


def test_opcheck(device):
    x = torch.randn(4, 6, 3, device=device)
    scale, zp = _qparams(6, -8, 7, device)
    ops = torch.ops.qcnn
    torch.library.opcheck(ops.fake_quant.default, (x, scale, zp, -8, 7, 1))
    torch.library.opcheck(ops.fake_quant.default, (x.requires_grad_(), scale.requires_grad_(),
                                                   zp.float().requires_grad_(), -8, 7, 1))
    torch.library.opcheck(ops.fake_quant.default, (x, scale[:1], zp[:1], 0, 255, None))
    g = torch.randn_like(x)
    torch.library.opcheck(ops.fake_quant_backward.default, (g, x.detach(), scale.detach(), zp, -8, 7, 1, 0.5, True))
    torch.library.opcheck(ops.fake_quant_backward.default, (g, x.detach(), scale.detach(), zp, -8, 7, 1, 1.0, False))
    w = torch.randn(5, 3, 2, device=device, requires_grad=True)
    torch.library.opcheck(ops.fake_quant_binary.default, (w, 0))
    torch.library.opcheck(ops.fake_quant_binary.default, (w, None))
    torch.library.opcheck(ops.fake_quant_binary_backward.default, (torch.randn(5, 3, 2, device=device), w.detach(), 0))


def test_torch_compile_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.scale = torch.nn.Parameter(torch.tensor([0.05]))

        def forward(self, x):
            w = fake_quant(self.conv.weight, torch.full((4,), 0.02), torch.zeros(4, dtype=torch.int32), -8, 7, axis=0)
            y = torch.nn.functional.conv2d(x, w, self.conv.bias)
            return fake_quant(y, self.scale, torch.zeros(1, dtype=torch.int32), -128, 127) + fake_quant_binary(y, None)

    net = Net()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), net(x))
    compiled(x).sum().backward()
    assert net.scale.grad is not None and net.conv.weight.grad is not None


@pytest.mark.parametrize("call,match", [
    (lambda x: fake_quant(x.double(), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), 0, 7), "x must be"),
    (lambda x: fake_quant(x, torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), 7, 7), "qmin"),
    (lambda x: fake_quant(x, torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), 0, 70000), "16 bits"),
    (lambda x: fake_quant(x, torch.tensor([-0.1]), torch.tensor([0], dtype=torch.int32), 0, 7), "scale"),
    (lambda x: fake_quant(x, torch.tensor([0.1]), torch.tensor([9], dtype=torch.int32), 0, 7), "zero_point"),
    (lambda x: fake_quant(x, torch.tensor([0.1, 0.2]), torch.tensor([0, 0], dtype=torch.int32), 0, 7), "per-tensor"),
    (lambda x: fake_quant(x, torch.ones(3), torch.zeros(3, dtype=torch.int32), 0, 7, axis=3), "axis"),
    (lambda x: fake_quant(x, torch.ones(3), torch.zeros(3, dtype=torch.int32), 0, 7, axis=1), "channels"),
    (lambda x: fake_quant(x, torch.tensor([0.1], dtype=torch.float64), torch.tensor([0]), 0, 7), "scale must be"),
    (lambda x: fake_quant_binary(x.int()), "w must be"),
    (lambda x: fake_quant_binary(x, axis=3), "axis=3 is out of range"),
    (lambda x: fake_quant_binary(x, axis=-3), "axis=-3 is out of range"),
    (lambda x: torch.ops.qcnn.fake_quant_binary_backward(x, x, 2), "axis=2 is out of range"),
    (lambda x: fake_quant_fixed(x, 1, 0), "bits"),
    (lambda x: fake_quant(x, 0.1, 0, 0, 7, grad_factor=float("nan")), "grad_factor"),
])
def test_bad_arguments_name_the_argument(call, match):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        call(torch.randn(4, 5))


def test_a_meta_tensor_among_cpu_ones_is_refused_not_uninitialized_memory():
    """A meta argument dispatches to the fake kernel, which returned empty memory on the CPU."""
    meta_scale = torch.tensor([0.1], device="meta")
    with pytest.raises(RuntimeError, match=r"qcnn::fake_quant: the tensor arguments must be on one device, got "
                                           r"\['cpu', 'meta'\]"):
        fake_quant(torch.ones(8), meta_scale, torch.tensor([0], dtype=torch.int32), -8, 7)
    with pytest.raises(RuntimeError, match=r"qcnn::kmeans_1d: the tensor arguments must be on one device"):
        qcnn.codebook.kmeans_1d(torch.randn(10), 2, sample_weight=torch.ones(10, device="meta"))
    with pytest.raises(RuntimeError, match=r"qcnn::quantize_to_codebook: the tensor arguments must be on one device"):
        qcnn.codebook.quantize_to_codebook(torch.randn(10), torch.tensor([-1.0, 1.0], device="meta"))
    on_meta = fake_quant(torch.ones(8, device="meta"), meta_scale, torch.tensor([0], dtype=torch.int32, device="meta"),
                         -8, 7)
    assert on_meta.device.type == "meta" and on_meta.shape == (8,)


@pytest.mark.parametrize("qmin, qmax", [(-8.7, 7), (-8, 7.9), (True, 7)])
def test_fractional_or_bool_code_bounds_are_refused_not_truncated(qmin, qmax):
    with pytest.raises(TypeError, match=r"qcnn.ops.fake_quant: qm(in|ax) must be an int"):
        fake_quant(torch.randn(4), 0.1, 0, qmin, qmax)
