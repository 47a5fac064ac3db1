"""The networks. Every conv is followed by its BatchNorm in the same nn.Sequential (or, in the ResNet
blocks, by an explicit conv/bn attribute pair) so that qcnn.fold.fold_batchnorm can find the pairs."""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _check_positive(name: str, **values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")


class LeNet5(nn.Module):
    """LeNet-5 style: conv5x5(6) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(classes), with BN and ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        _check_positive("LeNet5", num_classes=num_classes, in_channels=in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SequentialNet(nn.Module):
    """Goyal et al. 2021 'Sequential': 14 conv3x3 (the first 7 with `width` channels, the rest with
    2*width), each with BN and ReLU, max-pool after every 4 convs, global max-pool, one dense layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, depth: int = 14):
        super().__init__()
        _check_positive("SequentialNet", num_classes=num_classes, in_channels=in_channels, width=width, depth=depth)
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(depth):
            cout = width if i < depth // 2 else 2 * width
            layers += _conv_bn_relu(cin, cout)
            if i % 4 == 3 and i != depth - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small ResNet: a conv stem and three stages of BasicBlocks (widths w, 2w, 4w; strides 1, 2, 2)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16, blocks_per_stage: int = 1):
        super().__init__()
        _check_positive("ResNetSmall", num_classes=num_classes, in_channels=in_channels, width=width,
                        blocks_per_stage=blocks_per_stage)
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        stages: list[nn.Module] = []
        cin = width
        for s, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks_per_stage):
                stages.append(BasicBlock(cin, cout, stride=2 if (s > 0 and b == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))))


class VGGSmall(nn.Module):
    """The default demo net, small enough for two CPU cores: conv(w) - pool - conv(2w) - conv(2w) - pool -
    conv(4w) - conv(4w) - pool - global average pool - dropout - dense, all convs 3x3 with BN and ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24, dropout: float = 0.1):
        super().__init__()
        _check_positive("VGGSmall", num_classes=num_classes, in_channels=in_channels, width=width)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VGGSmall: dropout must be in [0, 1), got {dropout!r}")
        w = width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w), nn.MaxPool2d(2),
            *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
