"""torchvision ImageNet backbones (resnet18, resnet50, vgg16_bn) behind the backbone interface.

Weights come from torchvision's weights API (which downloads them where a network exists), from
a local ``.pth`` state dict, or nowhere (``none``: random initialisation, for plumbing tests).
Offline, the download fails with a message that names the two alternatives.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

from training.backbones.base import Backbone
from training.preprocess import Preprocessing

TORCHVISION_BACKBONES = ("resnet18", "resnet50", "vgg16_bn")
IMAGENET = Preprocessing(
    height=224,
    width=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    value_range=(0.0, 1.0),
)


class TorchvisionResNet(Backbone):
    gradcam_layer = "layer4"

    def __init__(self, net: models.ResNet) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.embedding_dim = net.fc.in_features

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            (name, getattr(self, name)) for name in ("stem", "layer1", "layer2", "layer3", "layer4")
        ]

    def embedding_layers(self) -> nn.Module:
        return nn.Identity()  # global average pooling has no parameters

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class TorchvisionVGG(Backbone):
    """VGG's features cut at each max-pool into ``block1..block5``; ``embed`` is its classifier
    without the last (ImageNet) layer: 4096-d."""

    gradcam_layer = "block5"

    def __init__(self, net: models.VGG) -> None:
        super().__init__()
        blocks, current = [], []
        for layer in net.features:
            current.append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append(nn.Sequential(*current))
                current = []
        for i, block in enumerate(blocks, start=1):
            self.add_module(f"block{i}", block)
        self.pool = net.avgpool
        self.classifier = nn.Sequential(*list(net.classifier)[:-1])
        self.embedding_dim = net.classifier[-1].in_features

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, 6)]

    def embedding_layers(self) -> nn.Module:
        return self.classifier

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))


def _load(name: str, weights: str) -> nn.Module:
    factory = getattr(models, name)
    if weights == "none":
        return factory(weights=None)
    if weights == "default":
        try:
            return factory(weights="DEFAULT")
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise RuntimeError(
                f"could not fetch the ImageNet weights of {name} ({error}). Offline, pass "
                f"--weights PATH to a local .pth state dict, or --weights none for random weights."
            ) from error
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    net = factory(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


def build_torchvision(name: str, weights: str) -> tuple[Backbone, Preprocessing]:
    net = _load(name, weights)
    wrapped = TorchvisionVGG(net) if name.startswith("vgg") else TorchvisionResNet(net)
    return wrapped, IMAGENET
