import pytest
import torch
from torch import nn

import qcnn
from qcnn import models
from qcnn.fold import conv_bn_pairs, fold_batchnorm


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize("name", models.names())
def test_folded_equals_unfolded_in_eval_mode(name):
    model = models.create(name)
    _randomize_bn(model)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_fold_matches_manual_formula():
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    _randomize_bn(nn.Sequential(bn))
    model = nn.Sequential(conv, bn).eval()
    folded = fold_batchnorm(model)[0]
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight, conv.weight * s[:, None, None, None])
    torch.testing.assert_close(folded.bias, bn.bias + (conv.bias - bn.running_mean) * s)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_folding_keeps_the_padding_mode(mode):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode), bn).eval()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.allclose(qcnn.fold_batchnorm(model)(x), model(x), atol=1e-5)


def test_pairs_skip_conv_with_two_users():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert conv_bn_pairs(TwoUsers()) == []
    assert len(conv_bn_pairs(models.create("resnet_small"))) == 9


def test_untracked_bn_is_an_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(model)
