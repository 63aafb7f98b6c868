"""Staged unfreezing: exactly which parameters learn in each stage; frozen batch norm stays put."""

from __future__ import annotations

import pytest
import torch

from training.backbones import build_backbone
from training.fit import param_groups, trainable_units
from training.model import FaceClassifier, set_trainable, train_mode


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def dlib_model():
    backbone, _ = build_backbone("dlib-resnet29", "none")
    return FaceClassifier(backbone, 8)


def test_head_stage_trains_only_the_head(dlib_model):
    set_trainable(dlib_model, trainable_units(dlib_model, "head", unfreeze_last=2))
    assert _trainable(dlib_model) == {
        "head.0.weight",
        "head.0.bias",
        "head.2.weight",
        "head.2.bias",
    }


def test_top_stage_adds_embedding_and_last_blocks(dlib_model):
    set_trainable(dlib_model, trainable_units(dlib_model, "top", unfreeze_last=2))
    names = _trainable(dlib_model)
    prefixes = {n.split(".")[1] if n.startswith("backbone.") else "head" for n in names}
    assert prefixes == {"layer4", "layer5", "fc", "head"}
    assert not any(
        n.startswith(("backbone.stem", "backbone.layer1", "backbone.layer3")) for n in names
    )


def test_all_stage_trains_everything_with_smaller_rates_below(dlib_model):
    set_trainable(dlib_model, trainable_units(dlib_model, "all", unfreeze_last=2))
    assert _trainable(dlib_model) == {name for name, _ in dlib_model.named_parameters()}
    groups = param_groups(dlib_model, lr=1e-3, lr_decay=0.5)
    rates = {g["unit"]: g["lr"] for g in groups}
    assert rates["head"] == 1e-3
    assert (
        rates["embed"] == 5e-4
        and rates["layer5"] == 2.5e-4
        and rates["stem"] == pytest.approx(1e-3 * 0.5**7)
    )
    assert sum(len(g["params"]) for g in groups) == len(list(dlib_model.parameters()))


def test_unknown_stage_and_unit_fail_clearly(dlib_model):
    with pytest.raises(ValueError, match="head, top, all"):
        trainable_units(dlib_model, "middle", unfreeze_last=2)
    with pytest.raises(ValueError, match="unknown unit"):
        set_trainable(dlib_model, {"layer9"})


def test_frozen_batchnorm_statistics_do_not_move():
    backbone, _ = build_backbone("resnet18", "none")
    model = FaceClassifier(backbone, 8)
    set_trainable(model, trainable_units(model, "head", unfreeze_last=1))
    train_mode(model)
    before = model.backbone.stem[1].running_mean.clone()
    head_before = model.head[0].running_mean.clone()
    model(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert torch.equal(model.backbone.stem[1].running_mean, before)
    assert not model.backbone.stem[1].training
    assert not torch.equal(model.head[0].running_mean, head_before)  # the head's own BN learns
