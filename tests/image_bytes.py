"""Builders of image files, good and bad, as bytes: made in the tests, never committed.

Importable from every test module (the root ``tests/conftest.py`` puts ``tests/`` on the path).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **params)
    return buffer.getvalue()


def noise_image(size: tuple[int, int] = (96, 80), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels: compresses badly, so truncating its file cuts into pixel data."""
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def face_png(celebs_root: Path, class_id: str, index: int = 0) -> bytes:
    """The bytes of one real face photo of ``class_id``."""
    return sorted((celebs_root / class_id).glob("*.png"))[index].read_bytes()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit RGB pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(side: int) -> bytes:
    """A valid ``side x side`` 8-bit grey PNG of zeros: tens of KB that decode to side^2 bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def cmyk_jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(noise_image(size).convert("CMYK"), "JPEG", quality=90)


def grey16_png(size: tuple[int, int] = (64, 48)) -> bytes:
    """A 16-bit greyscale PNG: a horizontal ramp from 0 to 65535."""
    ramp = np.linspace(0, 65535, size[0]).round().astype(np.uint16)
    return encode(Image.fromarray(np.tile(ramp, (size[1], 1))), "PNG")


def rgba_png(size: tuple[int, int] = (64, 64), alpha: int = 0) -> bytes:
    """RGBA PNG: black pixels with alpha ``alpha`` everywhere."""
    return encode(Image.new("RGBA", size, (0, 0, 0, alpha)), "PNG")


def animated(image_format: str, colours: tuple[tuple[int, int, int], ...], size=(32, 32)) -> bytes:
    """An animation of solid-colour frames (GIF, PNG = APNG, or WEBP)."""
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100)


def exif_rotated_jpeg(size: tuple[int, int] = (80, 40), orientation: int = 6) -> bytes:
    """A ``size`` JPEG whose EXIF says to rotate it (6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.new("RGB", size, (200, 10, 10)), "JPEG", exif=exif)
