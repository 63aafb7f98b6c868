"""Backbones by name: unknown names list the valid ones; ImageNet weights fail clearly offline."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torchvision.models import ResNet18_Weights

from training.backbones import BACKBONES, build_backbone


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(ValueError, match="dlib-resnet29, resnet18, resnet50, vgg16_bn"):
        build_backbone("alexnet")


def test_imagenet_download_failure_names_the_alternatives(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"--weights PATH.*--weights none"):
        build_backbone("resnet18", "default")


def test_local_weights_file_and_random_init(tmp_path):
    net, prep = build_backbone("resnet18", "none")
    assert prep.height == 224 and prep.value_range == (0.0, 1.0)
    path = tmp_path / "resnet18.pth"
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    loaded, _ = build_backbone("resnet18", str(path))
    assert torch.equal(loaded.stem[0].weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("name", [n for n in BACKBONES if n != "dlib-resnet29"])
def test_torchvision_backbones_give_embeddings_and_stages(name):
    net, prep = build_backbone(name, "none")
    x = torch.zeros(2, 3, 64, 64)
    for _, stage in net.stages():
        x = stage(x)
    assert net.embed(x).shape == (2, net.embedding_dim)
    assert net.gradcam_layer in dict(net.stages())
