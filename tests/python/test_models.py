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


class UserNet(nn.Module):
    """A user's own model, built by name as 'test_models:UserNet' (this module is importable in the tests)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.fc = nn.Linear(channels, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build_user_net() -> UserNet:
    return UserNet(channels=3)


def unannotated_builder(**kwargs):
    raise AssertionError("called")


def test_user_models_by_module_path():
    from qcnn import config

    model = models.create("test_models:UserNet", channels=6)
    assert isinstance(model, UserNet) and model.conv.out_channels == 6
    cfg = config.from_dict({"model": {"name": "test_models:UserNet", "kwargs": {"channels": 2}}})
    assert cfg.model.name == "test_models:UserNet"
    with pytest.raises(ImportError, match="cannot import 'no_such_module'"):
        models.create("no_such_module:Net")
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        models.create("test_models:Missing")
    assert isinstance(models.create("test_models:build_user_net"), UserNet)
    # a config names the code it runs: anything but a model builder is refused before it is called
    for name in ("builtins:int", "os:system", "subprocess:Popen", "test_models:unannotated_builder"):
        with pytest.raises(TypeError, match="must be an nn.Module subclass or a function annotated to return one"):
            models.create(name, command="true")
    with pytest.raises(config.ConfigError, match="model.name: unknown model 'not a name'"):
        config.from_dict({"model": {"name": "not a name"}})
    with pytest.raises(config.ConfigError, match="model.kwargs.input_adapter: must be one of"):
        config.from_dict({"model": {"name": "vgg_small", "kwargs": {"input_adapter": "rgb"}}})


def test_gray28_adapter_gives_a_cifar_style_stem():
    class Imagenetish(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.pool(self.conv2(self.maxpool(self.conv1(x)))).mean((2, 3)))

    model = models.adapt_to_gray28(Imagenetish())
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (1, (3, 3), (1, 1))
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity) and isinstance(model.pool, nn.MaxPool2d)  # only the stem's pool
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name,kwargs", [("torchvision.resnet18", {"num_classes": 10}),
                                         ("torchvision.mobilenet_v2", {"num_classes": 10, "width_mult": 0.25})])
def test_torchvision_models_by_name(name, kwargs):
    pytest.importorskip("torchvision")
    model = models.create(name, input_adapter="gray28", **kwargs)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="torchvision has no model builder 'resnet1000'"):
        models.create("torchvision.resnet1000")
