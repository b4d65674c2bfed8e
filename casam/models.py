"""Networks used by casam's experiments. Any `nn.Module` that maps a batch to logits works with the
rest of the package; these are the ones the CLI can name.

| name              | input        | parameters (10 classes) | why it is here                                  |
| ----------------- | ------------ | ----------------------- | ----------------------------------------------- |
| `mlp`             | any (flat)   | 0.27 M (28x28)          | fastest; unit tests and quick studies            |
| `cnn`             | 28x28 (any)  | 0.42 M                  | the Fashion-MNIST benchmark network              |
| `preact_resnet18` | 32x32        | 11.2 M                  | the usual CIFAR network of noisy-label papers    |
| `resnet34`        | 32x32        | 21.3 M                  | the larger CIFAR network (Co-teaching+, ELR ...) |

Every network with batch norm is compatible with `casam.optim.frozen_bn_stats`, which SAM-style
optimizers use so that the pass at the perturbed weights leaves the running statistics alone.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

MODELS = ("mlp", "cnn", "preact_resnet18", "resnet34")


class MLP(nn.Module):
    """Two hidden ReLU layers on the flattened image."""

    def __init__(self, *, num_classes: int, in_features: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks and a two-layer head.

    Small enough to train on 2 CPU cores in minutes (about 1,300 Fashion-MNIST images/s under SAM),
    large enough to memorise wrong labels, which is what a noisy-label benchmark has to show.
    Adaptive pooling makes it accept any input size (7x7 feature map for 28x28 inputs).
    """

    def __init__(self, *, num_classes: int, in_channels: int = 1, width: int = 32, hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 49, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _PreActBlock(nn.Module):
    """BN-ReLU-conv twice, identity (or 1x1 conv) shortcut taken after the first BN-ReLU (He et al., 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class _BasicBlock(nn.Module):
    """Conv-BN-ReLU-conv-BN plus shortcut, then ReLU (the original ResNet block)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem without max-pool, four stages of widths 64-512, global pooling."""

    def __init__(self, block: type[nn.Module], num_blocks: tuple[int, ...], *, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.preact = block is _PreActBlock
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.stem_bn = None if self.preact else nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            for i in range(blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(512) if self.preact else None
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        if self.stem_bn is not None:
            out = F.relu(self.stem_bn(out))
        out = self.layers(out)
        if self.final_bn is not None:
            out = F.relu(self.final_bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def preact_resnet18(*, num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet(_PreActBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)


def resnet34(*, num_classes: int, in_channels: int = 3) -> ResNet:
    return ResNet(_BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels)


def build_model(name: str, *, num_classes: int, in_channels: int = 1, image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Build a network by name. `image_size` is used only by the MLP (its input width)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name == "mlp":
        return MLP(num_classes=num_classes, in_features=in_channels * image_size[0] * image_size[1])
    if name == "cnn":
        return SmallCNN(num_classes=num_classes, in_channels=in_channels)
    if name == "preact_resnet18":
        return preact_resnet18(num_classes=num_classes, in_channels=in_channels)
    if name == "resnet34":
        return resnet34(num_classes=num_classes, in_channels=in_channels)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
