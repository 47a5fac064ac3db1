"""Weight and activation quantizers against plain-PyTorch references."""
import importlib.util

import pytest
import torch

import qcnn

if not (hasattr(qcnn.ops, "fake_quant") and importlib.util.find_spec("qcnn.codebook") is not None):
    pytest.skip("qcnn.ops.fake_quant / qcnn.codebook not built yet", allow_module_level=True)

from qcnn.weight_format import snap_to_grid  # noqa: E402
from qcnn.quantizers import (BinaryWeightQuantizer, CodebookWeightQuantizer, FixedPointWeightQuantizer,  # noqa: E402
                             QuantAct, UniformWeightQuantizer)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_uniform_max_matches_torch_fake_quantize(per_channel, symmetric):
    w = torch.randn(6, 3, 3, 3)
    q = UniformWeightQuantizer(w.shape, 4, per_channel=per_channel, symmetric=symmetric, calibration="max")
    out = q(w)
    flat = w.reshape(6, -1) if per_channel else w.reshape(1, -1)
    lo, hi = flat.min(1).values.clamp(max=0), flat.max(1).values.clamp(min=0)
    if symmetric:
        qmin, qmax = -7, 7
        scale = torch.maximum(-lo, hi) / 7
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        qmin, qmax = 0, 15
        scale = (hi - lo) / 15
        zp = (-torch.round(lo / scale)).clamp(0, 15).to(torch.int32)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
    else:
        ref = torch.fake_quantize_per_tensor_affine(w, float(scale), int(zp), qmin, qmax)
    torch.testing.assert_close(out, ref)
    levels = out.reshape(6, -1) if per_channel else out.reshape(1, -1)
    assert all(len(torch.unique(row)) <= 16 for row in levels)


def test_uniform_mse_calibration_lowers_error():
    w = torch.randn(8, 200)
    w[:, 0] *= 20  # outliers: clipping them pays off
    err = {}
    for cal in ("max", "mse"):
        out = UniformWeightQuantizer(w.shape, 3, calibration=cal)(w)
        err[cal] = (out - w).pow(2).sum().item()
    assert err["mse"] < 0.9 * err["max"]


def test_uniform_lsq_scale_receives_gradient_and_refit_keeps_it():
    w = torch.randn(4, 10, requires_grad=True)
    q = UniformWeightQuantizer(w.shape, 4, learn_scale=True)
    q(w).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0
    assert w.grad is not None
    with torch.no_grad():
        q.scale.mul_(1.5)
    kept = q.scale.detach().clone()
    change = q.refit(w)
    assert torch.equal(q.scale.detach(), kept) and 0.0 <= change <= 1.0


def test_lsq_scale_stepped_across_zero_acts_as_its_magnitude():
    w = torch.randn(4, 10)
    q = UniformWeightQuantizer(w.shape, 4, learn_scale=True)
    q.refit(w)
    expected = q(w).detach()
    with torch.no_grad():
        q.scale[1] = -q.scale[1]          # an optimizer step can cross zero
        q.scale[2] = 0.0
    out = q(w).detach()
    assert torch.equal(out[[0, 1, 3]], expected[[0, 1, 3]])
    assert torch.isfinite(out[2]).all() and out[2].abs().max() <= torch.finfo(torch.float32).tiny * 7


def test_optimizer_has_no_weight_decay_on_quantizer_parameters():
    from torch import nn

    from qcnn import config as qconfig, engine
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2))
    qcnn.quantize_(model, {"weight": {"kind": "uniform", "bits": 4, "learn_scale": True},
                           "act": {"bits": 8, "method": "lsq"}})
    opt = engine.build_optimizer(model, qconfig.TrainingConfig(weight_decay=0.01), 0.1)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        quantizer = "weight_quant" in name or "act_quant" in name
        assert decay[id(p)] == (0.0 if quantizer else 0.01), name
    assert len(decay) == len(list(model.parameters()))


@pytest.mark.parametrize("per_channel", [True, False])
def test_binary_is_mean_abs_times_sign(per_channel):
    w = torch.randn(5, 4, 3, 3)
    out = BinaryWeightQuantizer(w.shape, per_channel=per_channel)(w)
    alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True) if per_channel else w.abs().mean()
    torch.testing.assert_close(out, alpha * torch.sign(w))


def test_fixed_point_auto_fraction_bits():
    w = torch.randn(3, 50) * 0.7
    q = FixedPointWeightQuantizer(w.shape, 8)
    out = q(w)
    frac = 8 - 1 - int(torch.ceil(torch.log2(w.abs().max())))
    assert int(q.frac_bits) == frac
    ref = torch.clamp(torch.round(w * 2 ** frac), -127, 127) / 2 ** frac
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("per_channel", [True, False])
def test_codebook_forward_is_nearest_centroid_with_ste(per_channel):
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    q = CodebookWeightQuantizer(w.shape, 2, per_channel=per_channel)
    out = q(w)
    cb = q.codebook if per_channel else q.codebook.expand(4, -1)
    assert cb.shape == (4, 4)
    flat = w.detach().reshape(4, -1)
    nearest = (flat[:, :, None] - cb[:, None, :]).abs().argmin(-1)
    ref = cb.gather(1, nearest).reshape(w.shape)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(w)
    out.backward(g)
    torch.testing.assert_close(w.grad, g)  # straight through


def test_trained_centroids_get_per_cluster_summed_gradients():
    w = torch.randn(3, 40, requires_grad=True)
    q = CodebookWeightQuantizer(w.shape, 2, per_channel=True, train_centroids=True)
    out = q(w)
    g = torch.randn_like(w)
    out.backward(g)
    idx = q.nearest(w)
    ref = torch.zeros(3, 4)
    for c in range(3):  # brute force reference
        for j in range(40):
            ref[c, idx[c, j]] += g[c, j]
    torch.testing.assert_close(q.codebook.grad, ref)
    torch.testing.assert_close(w.grad, g)


@pytest.mark.parametrize("per_channel", [True, False])
def test_trained_centroids_that_cross_still_map_to_the_nearest(per_channel):
    """An optimizer step can move trained centroids past each other (this crashed the w4_incremental run)."""
    w = torch.randn(3, 40)
    q = CodebookWeightQuantizer(w.shape, 2, per_channel=per_channel, train_centroids=True)
    q.refit(w)
    with torch.no_grad():
        q.codebook.copy_(q.codebook.flip(-1))  # descending: every pair has crossed
    idx = q.nearest(w)
    book = q.codebook.detach() if per_channel else q.codebook.detach().expand(3, -1)
    dist = (w[:, :, None] - book[:, None, :]).abs()
    torch.testing.assert_close(dist.gather(2, idx[:, :, None]).squeeze(2), dist.min(dim=2).values)
    torch.testing.assert_close(q(w), book.gather(1, idx))
    assert q.refit(w, fit=False) is not None


def test_refit_change_fraction_and_freeze():
    torch.manual_seed(3)
    w = torch.randn(2, 500)
    q = CodebookWeightQuantizer(w.shape, 3, per_channel=False)
    assert q.refit(w) is None
    assert q.refit(w) == 0.0
    w2 = w + 0.3 * torch.randn_like(w)
    change = q.refit(w2)
    old, new = q.nearest(w), q.nearest(w2)
    assert 0.0 < change <= 1.0
    frac = q.freeze(w2, 0.5)
    assert frac == pytest.approx(0.5, abs=1e-3)
    frozen_mag = w2.abs()[q.frozen]
    assert frozen_mag.min() >= w2.abs()[~q.frozen].max()  # largest magnitude first
    out = q(w2.requires_grad_())
    torch.testing.assert_close(out[q.frozen], q.codebook[q.nearest(w2)][q.frozen])
    torch.testing.assert_close(out[~q.frozen], w2[~q.frozen])
    out.sum().backward()
    assert torch.all(w2.grad[q.frozen] == 0) and torch.all(w2.grad[~q.frozen] == 1)
    assert q.freeze(w2, 1.0) == 1.0
    assert len(torch.unique(q(w2))) <= 8
    del old, new


@pytest.mark.parametrize("method", ["lsq", "pact"])
@pytest.mark.parametrize("signed", [False, True])
def test_act_quantizer_levels_and_calibration(method, signed):
    act = QuantAct(bits=3, signed=signed, method=method, observer="max")
    x = torch.randn(64, 10) * 2 if signed else torch.rand(64, 10) * 3
    act.start_calibration()
    assert torch.equal(act(x), x)  # observing is a pass-through
    act.finish_calibration()
    peak = x.abs().max().item()
    qmax = 3 if signed else 7
    assert float(act.step) == pytest.approx(peak / qmax, rel=1e-5)
    y = act(x)
    codes = y / act.step
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-4, rtol=0)
    assert len(torch.unique(y)) <= 8
    assert (y - x.clamp(-peak if signed else 0, peak)).abs().max() <= float(act.step) / 2 + 1e-5


def test_pact_alpha_gradient_counts_clipped_inputs():
    act = QuantAct(bits=4, method="pact")
    act.start_calibration(); act(torch.tensor([1.0])); act.finish_calibration()
    x = torch.tensor([0.2, 0.5, 1.5, 3.0, -1.0])
    act(x).sum().backward()
    assert act.alpha.grad.item() == pytest.approx(2.0)  # two inputs above alpha=1


def test_lsq_act_scale_gets_gradient():
    act = QuantAct(bits=2, method="lsq")
    x = torch.rand(16, 8) * 4
    act(x).sum().backward()
    assert act.scale.grad is not None and act.scale.grad.abs() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        QuantAct(bits=9)
    with pytest.raises(ValueError, match="bits"):
        QuantAct(bits=1, signed=True)
    with pytest.raises(ValueError, match="method"):
        QuantAct(method="dorefa")
    with pytest.raises(ValueError, match="bits"):
        UniformWeightQuantizer((2, 2), 1)
    with pytest.raises(ValueError, match="shape"):
        CodebookWeightQuantizer((2, 2), 2).refit(torch.randn(3, 2))
    with pytest.raises(ValueError, match="fraction"):
        CodebookWeightQuantizer((2, 2), 2).freeze(torch.randn(2, 2), 0.0)


@pytest.mark.parametrize("per_channel,shape,bits", [(True, (8, 1, 3, 3), 4), (False, (3, 2, 2), 4),
                                                    (True, (5, 4), 2)])
def test_a_table_with_no_more_weights_than_levels_follows_its_weights(per_channel, shape, bits):
    """Every weight of such a table is a level of its own: the forward is each latent weight on the table's
    integer grid, after any optimizer step and without a refit; no weight ever changes level; what the
    exporter reads computes the same values."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=g).requires_grad_()
    q = CodebookWeightQuantizer(w.shape, bits, per_channel=per_channel)
    assert q.tracks_weights
    assert q.refit(w) is None
    for step in range(3):
        out = q(w)
        tables = w.detach().reshape(shape[0], -1) if per_channel else w.detach().reshape(1, -1)
        expected = snap_to_grid(tables, q.level_limit).reshape(shape)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert (out - w).abs().max() <= tables.abs().max() / q.level_limit / 2 + 1e-7
        grad = torch.randn(shape, generator=g)
        out.backward(grad)
        torch.testing.assert_close(w.grad, grad)  # straight through
        indices, book = q.deployed(w)
        values = book.expand(shape[0], -1).gather(1, indices.reshape(shape[0], -1)).reshape(shape)
        torch.testing.assert_close(values, out.detach(), rtol=0, atol=0)
        with torch.no_grad():
            w.add_(0.2 * torch.randn(shape, generator=g))
            w.grad = None
    assert q.refit(w) == 0.0
    assert not CodebookWeightQuantizer(w.shape, bits, per_channel=per_channel, track_weights=False).tracks_weights
    # One weight more than levels: an ordinary k-means table, fixed between refits.
    wide = torch.randn(2, 2 ** bits + 1, generator=g)
    fixed = CodebookWeightQuantizer(wide.shape, bits, per_channel=True)
    assert not fixed.tracks_weights
    fixed(wide)
    book = fixed.codebook.clone()
    moved = fixed(wide + 0.05)
    assert torch.equal(fixed.codebook, book)
    assert bool((moved[:, :, None] == book[:, None, :]).any(-1).all())  # every value a fixed level


def test_warm_refit_keeps_clusters_of_drifted_weights():
    """The retraining loop's refit on slightly moved latent weights: from the previous codebook, few weights
    change level; a cold k-means++ refit re-draws the clusters."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)
    drifted = w + 0.05 * torch.randn(w.shape, generator=g)
    changes = {}
    for warm in (False, True):
        q = CodebookWeightQuantizer(w.shape, 4, method="kmeans", per_channel=True, warm_start=warm, seed=0)
        assert q.refit(w) is None
        before = q.codebook.clone()
        changes[warm] = q.refit(drifted)
        if warm:
            assert (q.codebook - before).abs().max() < 0.2  # the clusters moved, they were not re-drawn
    assert changes[True] < changes[False]
    # Methods without a warm start refit from scratch; the flag is ignored for them.
    assert not CodebookWeightQuantizer(w.shape, 4, method="kmeans_optimal", warm_start=True).warm_start


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_calibration_batch_is_named_not_a_reset_clip(bad):
    from torch import nn
    from qcnn.quantize import calibrate_activations
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    qcnn.quantize_(model, {"weight": {"kind": "uniform", "bits": 8}, "act": {"bits": 8}})
    x = torch.randn(4, 1, 8, 8)
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"calibrate_activations: 0.act_quant: the calibration data reached this quantizer "
                                         r"with NaN or infinite values in 1 batch"):
        calibrate_activations(model, [x], 1)


def test_quantize_replaces_every_name_of_an_aliased_layer():
    from torch import nn

    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 4, 3)
            self.b = self.a  # the same layer under a second name
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.b(self.a(x)[:, :1]).mean((2, 3)))

    model = qcnn.quantize_(Aliased(), {"weight": {"kind": "uniform", "bits": 4}, "act": {"bits": 8}})
    assert type(model.a).__name__ == "QuantConv2d" and model.a is model.b
