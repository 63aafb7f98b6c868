"""Images without a human face, for the face detector's other side: skimage's sample photos
(each checked by eye: no person in any), the same resized to a face crop's 112x112 and cut to
their centre square, and synthetic textures. Made on the fly, never committed.

Importable from every test module, and from bench/ as ``tests.nonface_images``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import skimage.data
from PIL import Image, ImageFilter

# Left out: astronaut (a face), camera (a person), lfw_subset (faces); coins shows heads in
# profile, a few millimetres high, on ancient coins: a photo of coins, not of a face.
SKIMAGE_PHOTOS = (
    "rocket",
    "coins",
    "coffee",
    "chelsea",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "text",
    "page",
    "horse",
    "moon",
    "checkerboard",
    "logo",
    "clock",
    "colorwheel",
    "cell",
    "immunohistochemistry",
    "retina",
    "shepp_logan_phantom",
    "microaneurysms",
    "binary_blobs",
)
CROP_SIDE = 112


def skimage_photo(name: str) -> Image.Image:
    """One of skimage's sample images as 8-bit RGB."""
    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = (255 * (array - low) / (high - low)).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def crop_sized(image: Image.Image) -> Image.Image:
    """``image`` squeezed to a face crop's size."""
    return image.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.BILINEAR)


def centre_square(image: Image.Image) -> Image.Image:
    """The centre square of ``image``, resized to a face crop's size."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((CROP_SIDE, CROP_SIDE), Image.Resampling.BILINEAR)


def smoothed_noise(size: tuple[int, int], seed: int) -> Image.Image:
    """Smoothed colour noise: blobs and edges everywhere, a face nowhere."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (max(2, size[1] // 8), max(2, size[0] // 8), 3), dtype=np.uint8)
    smooth = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    return smooth.filter(ImageFilter.GaussianBlur(3))


def _synthetic() -> dict[str, Callable[[], Image.Image]]:
    ramp = np.tile(np.linspace(0, 255, CROP_SIDE), (CROP_SIDE, 1)).astype(np.uint8)
    stripes = np.tile(((np.arange(CROP_SIDE) // 8) % 2 * 255).astype(np.uint8), (CROP_SIDE, 1))
    white = np.random.default_rng(9).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    made: dict[str, Callable[[], Image.Image]] = {
        "white-noise": lambda: Image.fromarray(white),
        "grey": lambda: Image.new("RGB", (CROP_SIDE, CROP_SIDE), (128, 128, 128)),
        "ramp": lambda: Image.fromarray(ramp).convert("RGB"),
        "stripes": lambda: Image.fromarray(stripes).convert("RGB"),
    }
    for seed in range(6):
        for size in ((300, 240), (CROP_SIDE, CROP_SIDE)):
            made[f"noise-{seed}-{size[0]}"] = lambda s=size, k=seed: smoothed_noise(s, k)
    return made


def nonface_images() -> dict[str, Callable[[], Image.Image]]:
    """Every non-face image by name, each made when called (82 in all)."""
    made: dict[str, Callable[[], Image.Image]] = {}
    for name in SKIMAGE_PHOTOS:
        made[name] = lambda n=name: skimage_photo(n)
        made[f"{name}@112"] = lambda n=name: crop_sized(skimage_photo(n))
        made[f"{name}@centre"] = lambda n=name: centre_square(skimage_photo(n))
    made.update(_synthetic())
    return made
