"""The explainer network: the bundle's frozen trunk, then small trainable heads that give every
class a value per grid cell.

``Trunk``: the grid stage's activation (one trunk cell under each grid cell) with the deeper
stages' activations (``context``) laid on the same grid bilinearly and stacked on it as more
channels: what a cell shows next to what the whole face adds up to in the stages that decide.

``Head``: ``(N, K, G, G)`` trunk features -> ``(N, C, G, G)`` raw cell values: the features
standardised (train-split mean and spread, fixed), two 3x3 convolutions for what a cell and its
neighbours show, plus one linear map of the whole face's mean features broadcast to every cell
(a cell's share of a class score depends on the rest of the face), then a 1x1 convolution to the
classes. Its output is not yet Shapley values: ``service.explain.one_pass.efficient`` adds to
every cell an equal share of what the cells miss of ``logit(x) - logit(baseline)`` (FastSHAP's
additive efficient normalisation), in training as in the service.

``Heads``: several heads fitted from different seeds, their raw values averaged (an ensemble:
the heads' errors on faces they never saw partly cancel).

``OnePassNet`` chains trunk and heads: the graph ``one_pass.onnx`` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
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


class Heads(nn.Module):
    """``(N, K, G, G)`` -> ``(N, C, G, G)``: the mean of its heads' raw cell values."""

    def __init__(self, heads: Sequence[Head]) -> None:
        super().__init__()
        if not heads:
            raise ValueError("an ensemble needs at least one head")
        self.heads = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(features) for head in self.heads]).mean(dim=0)


def grid_features(
    activations: Mapping[str, torch.Tensor], layer: str, context: Sequence[str] = ()
) -> torch.Tensor:
    """``layer``'s activation with each ``context`` stage's laid on its grid (bilinear,
    cell centres) and stacked on it as more channels."""
    base = activations[layer]
    deeper = [
        F.interpolate(activations[name], size=base.shape[-2:], mode="bilinear", align_corners=False)
        for name in context
    ]
    return torch.cat([base, *deeper], dim=1) if deeper else base


class Trunk(nn.Module):
    """The classifier's backbone stages from the input up to the deepest of ``layer`` and
    ``context``: ``grid_features`` of their activations."""

    def __init__(self, classifier: FaceClassifier, layer: str, context: Sequence[str] = ()) -> None:
        super().__init__()
        stages = classifier.backbone.stages()
        names = [name for name, _ in stages]
        for name in (layer, *context):
            if name not in names:
                raise ValueError(f"the backbone has no stage {name!r}; valid: {', '.join(names)}")
        if any(names.index(name) <= names.index(layer) for name in context):
            raise ValueError(f"context stages must come after {layer}: {', '.join(context)}")
        last = max(names.index(name) for name in (layer, *context))
        self.names = names[: last + 1]
        self.stages = nn.ModuleList(module for _, module in stages[: last + 1])
        self.layer, self.context = layer, tuple(context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activations = {}
        for name, stage in zip(self.names, self.stages, strict=True):
            x = stage(x)
            activations[name] = x
        return grid_features(activations, self.layer, self.context)


class OnePassNet(nn.Module):
    """``(N, 3, H, W)`` model input -> ``(N, C, G, G)`` raw cell values (one pass)."""

    def __init__(self, trunk: Trunk, head: Head | Heads) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
