"""Augmentation presets: shapes, ranges, no vertical flips; the eval preset is deterministic."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from training.augment import eval_transforms, train_transforms


def _top_bright(size=(3, 150, 150)) -> torch.Tensor:
    image = torch.zeros(size, dtype=torch.uint8)
    image[:, : size[1] // 2] = 230  # bright top half, dark bottom half
    return image


def test_train_preset_keeps_shape_dtype_and_range():
    torch.manual_seed(0)
    transform = train_transforms(preset="faces")
    for _ in range(20):
        out = transform(_top_bright())
        assert out.shape == (3, 150, 150) and out.dtype == torch.uint8
    changed = sum(not torch.equal(transform(_top_bright()), _top_bright()) for _ in range(10))
    assert changed >= 8  # it really augments


def test_train_preset_never_flips_vertically():
    flips = [
        t
        for t in train_transforms(preset="faces").transforms
        if isinstance(t, v2.RandomVerticalFlip)
    ]
    assert flips == []
    torch.manual_seed(1)
    transform = train_transforms(preset="faces")
    for _ in range(50):  # rotations are small: the top half stays brighter than the bottom half
        out = transform(_top_bright()).float()
        assert out[:, 30:60].mean() > out[:, 90:120].mean()


def test_eval_preset_is_identity():
    image = _top_bright()
    assert torch.equal(eval_transforms()(image), image)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="faces, none"):
        train_transforms(preset="rotations")
