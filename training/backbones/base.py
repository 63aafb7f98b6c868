"""The interface every backbone implements (see the package docstring), as a base class, so
that the classifier and staged unfreezing are written against it rather than a bare module."""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """A feature extractor in named stages, (N, 3, H, W) -> (N, ``embedding_dim``)."""

    embedding_dim: int
    gradcam_layer: str  # a stage name

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named convolutional parts, input side first."""
        raise NotImplementedError

    def embedding_layers(self) -> nn.Module:
        """The parameters of ``embed`` (a unit of staged unfreezing of its own)."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's activation (N, C, h, w) -> feature vector (N, ``embedding_dim``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return self.embed(x)
