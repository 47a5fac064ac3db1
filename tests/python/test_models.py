import pytest
import torch
from torch import nn

from qcnn import models


@pytest.mark.parametrize("name", models.names())
def test_forward_shape_and_backward(name):
    model = models.create(name)
    x = torch.randn(3, 1, 28, 28)
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sequential_matches_goyal_description():
    model = models.create("sequential")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 14 and all(c.kernel_size == (3, 3) for c in convs)
    assert {c.out_channels for c in convs} == {32, 64}
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 14
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.AdaptiveMaxPool2d) for m in model.modules()) == 1
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        models.create("vgg19")
    with pytest.raises(TypeError, match="lenet5"):
        models.create("lenet5", depth=3)
    with pytest.raises(ValueError, match="width"):
        models.create("vgg_small", width=0)
    with pytest.raises(ValueError, match="dropout"):
        models.create("vgg_small", dropout=1.5)
