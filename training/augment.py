"""Named augmentation presets (torchvision ``transforms.v2``) on (3, H, W) uint8 tensors.

Faces in photos are upright, so there are no vertical flips: an upside-down face is not a
plausible input and would only teach the model to spend capacity on it. Horizontal flips,
small rotations, shifts and zooms, colour jitter and random grayscale (photos from the internet
are sometimes black and white) are plausible, and they stretch a small data set.
"""

from __future__ import annotations

from torchvision.transforms import v2

PRESETS = ("faces", "none")


def train_transforms(*, preset: str = "faces") -> v2.Transform:
    """Random augmentation for training; output keeps the input's shape and uint8 dtype."""
    if preset == "none":
        return v2.Identity()
    if preset != "faces":
        raise ValueError(
            f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}"
        )
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            v2.RandomGrayscale(p=0.15),
        ]
    )


def eval_transforms() -> v2.Transform:
    """Evaluation: no randomness. Resizing and standardisation are ``Preprocessing``'s job."""
    return v2.Identity()


__all__ = ["PRESETS", "eval_transforms", "train_transforms"]
