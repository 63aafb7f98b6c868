"""A small CNN trained from scratch: what a deep-learning course builds before transfer learning.

Four blocks of 3x3 convolutions with batch norm and ReLU, each of the first three ending in a
2x2 max-pool (64 -> 32 -> 16 -> 8 px), then global average pooling to a ``WIDTHS[-1]``-d
embedding. About 0.33 M parameters (the dlib ResNet has 5.6 M), so the bundle stays a few MB.
There are no pretrained weights: ``default`` and ``none`` both mean a (seeded) random
initialisation, which the log says; a path loads a state dict of this architecture.

Its input is the face crop framed like dlib's chips (``fit --framing dlib-chip``), at
``INPUT_SIZE`` px, scaled to [0, 1] and standardised with the training faces' rough channel
statistics: at 64 px the network is small enough to train on ~1,200 faces on a 2-core CPU in
minutes, and large enough to show what training from scratch on so few images gets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from training.backbones.base import Backbone
from training.preprocess import Preprocessing

NAME = "scratch-cnn"
INPUT_SIZE = 64
# (output channels, convolutions) per block, input side first
WIDTHS = (24, 48, 96, 192)
CONVS = (2, 2, 2, 1)
PREPROCESSING = Preprocessing(
    height=INPUT_SIZE,
    width=INPUT_SIZE,
    value_range=(0.0, 1.0),
    mean=(0.5, 0.42, 0.38),
    std=(0.28, 0.26, 0.26),
)

log = logging.getLogger(__name__)


def _block(inputs: int, outputs: int, convs: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(inputs if i == 0 else outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
        ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ScratchCNN(Backbone):
    """(N, 3, 64, 64) standardised input -> (N, 192) embedding; stages ``block1..block4``."""

    gradcam_layer = "block4"

    def __init__(self) -> None:
        super().__init__()
        inputs = 3
        for i, (width, convs) in enumerate(zip(WIDTHS, CONVS, strict=True), start=1):
            self.add_module(f"block{i}", _block(inputs, width, convs, pool=i < len(WIDTHS)))
            inputs = width
        self.embedding_dim = WIDTHS[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, len(WIDTHS) + 1)]

    def embedding_layers(self) -> nn.Module:
        return nn.Identity()  # global average pooling has no parameters

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_scratch(weights: str) -> tuple[Backbone, Preprocessing]:
    """``weights``: ``default``/``none`` (random initialisation: there is no pretrained file)
    or a path to a state dict saved from a ``ScratchCNN``."""
    net = ScratchCNN()
    if weights in ("default", "none"):
        log.info("%s: random initialisation (trained from scratch; no pretrained weights)", NAME)
        return net, PREPROCESSING
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net, PREPROCESSING
