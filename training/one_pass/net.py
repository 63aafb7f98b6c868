"""The explainer network: the bundle's frozen trunk up to one stage, then a small trainable head
that gives every class a value per grid cell.

``Head``: ``(N, K, G, G)`` trunk features -> ``(N, C, G, G)`` raw cell values: the features
standardised (train-split mean and spread, fixed), two 3x3 convolutions for what a cell and its
neighbours show, plus one linear map of the whole face's mean features broadcast to every cell
(a cell's share of a class score depends on the rest of the face), then a 1x1 convolution to the
classes. Its output is not yet Shapley values: ``service.explain.one_pass.efficient`` adds to
every cell an equal share of what the cells miss of ``logit(x) - logit(baseline)`` (FastSHAP's
additive efficient normalisation), in training as in the service.

``OnePassNet`` chains trunk and head: the graph ``one_pass.onnx`` holds.
"""

from __future__ import annotations

import torch
from torch import nn

from training.model import FaceClassifier


class Head(nn.Module):
    """``(N, K, G, G)`` -> ``(N, C, G, G)`` raw cell values."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        classes: int,
        width: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = len(mean)
        self.register_buffer("mean", mean.reshape(1, channels, 1, 1).float())
        self.register_buffer("std", std.reshape(1, channels, 1, 1).float().clamp_min(1e-6))
        self.dropout = nn.Dropout2d(dropout)  # whole channels, in training only
        self.local = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.context = nn.Linear(channels, width)
        self.out = nn.Conv2d(width, classes, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.dropout((features - self.mean) / self.std)
        hidden = self.local(z) + self.context(z.mean(dim=(2, 3)))[:, :, None, None]
        return self.out(torch.relu(hidden))


class Trunk(nn.Module):
    """The classifier's backbone stages from the input up to and including ``layer``."""

    def __init__(self, classifier: FaceClassifier, layer: str) -> None:
        super().__init__()
        stages = classifier.backbone.stages()
        names = [name for name, _ in stages]
        if layer not in names:
            raise ValueError(f"the backbone has no stage {layer!r}; valid: {', '.join(names)}")
        self.stages = nn.Sequential(*(module for _, module in stages[: names.index(layer) + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


class OnePassNet(nn.Module):
    """``(N, 3, H, W)`` model input -> ``(N, C, G, G)`` raw cell values (one pass)."""

    def __init__(self, trunk: Trunk, head: Head) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
