"""A backbone plus a new classification head, and the switches for staged unfreezing.

The head is the course's recipe for a small data set: batch norm on the backbone's features
(standardises them, so one learning rate suits every backbone), dropout (regularises the few
thousand head weights), then a linear layer to one logit per class.
"""

from __future__ import annotations

import torch
from torch import nn

from training.backbones import Backbone


class FaceClassifier(nn.Module):
    """(N, 3, H, W) standardised input -> (N, num_classes) logits."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.BatchNorm1d(backbone.embedding_dim),
            nn.Dropout(dropout),
            nn.Linear(backbone.embedding_dim, num_classes),
        )
        self.frozen_units: set[str] = set()  # see set_trainable

    def units(self) -> list[tuple[str, nn.Module]]:
        """Trainable units, input side first: the backbone's stages, its embedding layer(s)
        (``embed``), and the ``head``."""
        return [
            *self.backbone.stages(),
            ("embed", self.backbone.embedding_layers()),
            ("head", self.head),
        ]

    def forward_with_activations(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, activations, _ = self.forward_with_embedding(x)
        return logits, activations

    def forward_with_embedding(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(logits, every stage's activation, the backbone's embedding)."""
        activations = {}
        for name, stage in self.backbone.stages():
            x = stage(x)
            activations[name] = x
        embedding = self.backbone.embed(x)
        return self.head(embedding), activations, embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(x)[0]

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the backbone's embedding): the open-set score reads both."""
        logits, _, embedding = self.forward_with_embedding(x)
        return logits, embedding


class WithEmbedding(nn.Module):
    """The served graph's forward: ``(logits, embedding)`` (ONNX outputs of those names)."""

    def __init__(self, model: FaceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.logits_and_embedding(x)


def set_trainable(model: FaceClassifier, trainable: set[str]) -> None:
    """Make exactly the named units trainable; the others get ``requires_grad=False``."""
    names = [name for name, _ in model.units()]
    unknown = trainable - set(names)
    if unknown:
        raise ValueError(f"unknown unit(s) {sorted(unknown)}; units are {names}")
    for name, unit in model.units():
        for p in unit.parameters():
            p.requires_grad_(name in trainable)
    model.frozen_units = set(names) - trainable


def train_mode(model: FaceClassifier) -> None:
    """``model.train()``, except that batch norms inside frozen units stay in eval mode:
    their running statistics are part of the pretrained weights and must not drift."""
    model.train()
    for name, unit in model.units():
        if name in model.frozen_units:
            for m in unit.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
