"""Feature extractors, chosen by name: pretrained ones, and a small CNN to train from scratch.

Every backbone is an ``nn.Module`` with
* ``stages()``: its named convolutional parts, input side first -- the units of staged
  unfreezing and the layers whose activations the bundle exposes;
* ``embed(x)``: last stage's activation (N, C, h, w) -> feature vector (N, embedding_dim),
  computed by the parameters of ``embedding_layers()`` (a unit of its own);
* ``embedding_dim`` and ``gradcam_layer`` (a stage name);
and comes with the ``Preprocessing`` its weights expect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from training.backbones.base import Backbone
from training.backbones.dlib_resnet import DlibResNet29, default_weights_path
from training.backbones.scratch_cnn import NAME as SCRATCH
from training.backbones.scratch_cnn import build_scratch
from training.backbones.torchvision_nets import TORCHVISION_BACKBONES, build_torchvision
from training.preprocess import Preprocessing

BACKBONES = ("dlib-resnet29", *TORCHVISION_BACKBONES, SCRATCH)


def _dlib(weights: str) -> tuple[Backbone, Preprocessing]:
    net = DlibResNet29()
    if weights != "none":
        net.load_dlib(None if weights == "default" else weights)
    return net, DlibResNet29.preprocessing


def build_backbone(name: str, weights: str = "default") -> tuple[Backbone, Preprocessing]:
    """``weights``: ``default`` (the backbone's pretrained weights; a random initialisation for
    ``scratch-cnn``, which has none), ``none`` (random initialisation) or a path to a weights
    file. Unknown names fail and list the valid ones."""
    builders: dict[str, Callable[[str], tuple[Backbone, Preprocessing]]] = {"dlib-resnet29": _dlib}
    builders.update({n: partial(build_torchvision, n) for n in TORCHVISION_BACKBONES})
    builders[SCRATCH] = build_scratch
    if name not in builders:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return builders[name](weights)


__all__ = ["BACKBONES", "Backbone", "build_backbone", "default_weights_path"]
