"""Image intake: the one path from uploaded bytes to an RGB image, used by every endpoint.

``read_upload`` reads the multipart file with a size cap; ``decode_image`` sniffs the real
format from the leading bytes (never the filename or Content-Type), checks the pixel count from
the header before any pixel is decoded, decodes the first frame, applies EXIF orientation and
converts any mode to 8-bit RGB. It is two steps, ``read_header`` (cheap: no pixel decoded) and
``decode_pixels`` (the costly one), so that the intake can wait for room in the app's
``PixelBudget`` in between. Every failure is a ``ServiceError`` with a stable code:

- nothing uploaded: 400 ``empty_file``; truncated or corrupt data: 400 ``corrupt_image``
- more bytes than allowed: 413 ``file_too_large``; more pixels than allowed: 413 ``too_many_pixels``
- not JPEG, PNG, WebP or BMP (GIF, TIFF, text, ...): 415 ``unsupported_format``
- a side shorter than the minimum: 422 ``image_too_small``
"""

from __future__ import annotations

import io
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import (
    CorruptImage,
    EmptyFile,
    FileTooLarge,
    ImageTooSmall,
    TooManyPixels,
    UnsupportedFormat,
    exception_text,
)
from service.settings import Settings

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
SUPPORTED_TEXT = "JPEG, PNG, WebP or BMP"
READ_CHUNK_BYTES = 256 * 1024
# Alpha is composited onto this colour: what a viewer shows on a white page.
ALPHA_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# What Pillow raises on bad data, depending on format and where the data breaks.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what the intake accepts (from ``Settings``)."""

    max_upload_bytes: int
    max_image_pixels: int
    min_image_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side)


@dataclass(frozen=True)
class DecodedImage:
    """An uploaded image after intake.

    ``rgb`` is 8-bit RGB, EXIF orientation applied, first frame only; its size is the size the
    client sees, so boxes and heatmaps are in these coordinates.
    """

    rgb: Image.Image
    format: str
    source_mode: str
    frames: int
    byte_size: int
    received_at: float
    """``time.perf_counter()`` when intake began, for end-to-end timings."""
    decode_ms: float

    @property
    def width(self) -> int:
        return self.rgb.width

    @property
    def height(self) -> int:
        return self.rgb.height


def sniff_format(head: bytes) -> str | None:
    """The image format named by the leading bytes (Pillow's format name), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
        return "HEIF/AVIF"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG2000"
    if head.startswith(b"%PDF"):
        return "PDF"
    return None


class Upload(Protocol):
    """An uploaded file being received (FastAPI's ``UploadFile``)."""

    async def read(self, size: int = -1) -> bytes: ...


async def read_upload(upload: Upload, max_bytes: int) -> bytes:
    """All bytes of ``upload``, read in chunks; 413 as soon as more than ``max_bytes`` arrive."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await upload.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLarge(f"upload is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class ImageHeader:
    """An upload whose header has been read and checked; no pixel is decoded yet.

    ``pixels`` (width x height) is what decoding it will cost, known before paying it: the
    intake holds that many pixels of the app's ``PixelBudget`` while the request lasts.
    """

    image: Image.Image
    format: str
    byte_size: int
    read_ms: float

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


def decode_image(
    data: bytes, limits: ImageLimits, received_at: float | None = None
) -> DecodedImage:
    """Decode uploaded bytes into a ``DecodedImage`` or raise the matching ``ServiceError``."""
    return decode_pixels(read_header(data, limits), received_at)


def read_header(data: bytes, limits: ImageLimits) -> ImageHeader:
    """Sniff, open and size-check uploaded bytes without decoding a pixel (cheap, bounded)."""
    started = time.perf_counter()
    if not data:
        raise EmptyFile("the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise FileTooLarge(f"upload is larger than the limit of {limits.max_upload_bytes} bytes")
    image_format = sniff_format(data[:16])
    if image_format is None:
        raise UnsupportedFormat(f"not a recognised image; send {SUPPORTED_TEXT}")
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedFormat(f"{image_format} images are not supported; send {SUPPORTED_TEXT}")

    image = _open(data, image_format, limits.max_image_pixels)
    _check_size(image.size, limits)
    return ImageHeader(image, image_format, len(data), (time.perf_counter() - started) * 1000)


def decode_pixels(header: ImageHeader, received_at: float | None = None) -> DecodedImage:
    """Decode the first frame of a checked header into 8-bit RGB, EXIF orientation applied.

    Memory: the decoded frame in its own mode (1 to 4 bytes a pixel) plus the conversions of
    ``to_rgb``, about 20 bytes a pixel of ``header.pixels`` at the worst (RGBA), 3 once done;
    the pixel limit and the intake's ``PixelBudget`` bound how many such pixels exist at once.
    """
    started = time.perf_counter()
    image, image_format = header.image, header.format
    source_mode = image.mode
    try:
        frames = int(getattr(image, "n_frames", 1))
        image.load()  # the first frame: Image.open leaves an animation positioned there
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(str(exc)) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage(
            f"{image_format} data is truncated or corrupt: {exception_text(exc)}"
        ) from exc
    rgb = to_rgb(_apply_exif_orientation(image))
    return DecodedImage(
        rgb=rgb,
        format=image_format,
        source_mode=source_mode,
        frames=frames,
        byte_size=header.byte_size,
        received_at=started if received_at is None else received_at,
        decode_ms=header.read_ms + (time.perf_counter() - started) * 1000,
    )


def _open(data: bytes, image_format: str, max_pixels: int) -> Image.Image:
    """Parse the header only (Pillow decodes lazily), as the sniffed format and no other."""
    try:
        return Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"image has more pixels than the limit of {max_pixels}: {exc}") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"cannot read the {image_format} header: {exception_text(exc)}") from exc


def _check_size(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_image_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_image_pixels}"
        )
    if min(width, height) < limits.min_image_side:
        raise ImageTooSmall(
            f"image is {width}x{height}; each side must be at least {limits.min_image_side} pixels"
        )


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when nothing to turn
        return image
    except _DECODE_ERRORS as exc:
        # A broken EXIF block does not make the pixels unusable: keep them as stored.
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB.

    16-bit and 32-bit integer grey (PNG ``I;16``/``I``) is scaled from 0..65535 to 0..255
    rather than clipped; alpha or palette transparency is composited onto ``ALPHA_BACKGROUND``;
    everything else (L, 1, P, CMYK, YCbCr, LAB, ...) goes through Pillow's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # In int32, in place: rint(v / 257) == (v + 128) // 257 for integers (no v / 257 is a
        # half), at 4 bytes a pixel where float64 temporaries took 24.
        grey = np.clip(np.asarray(image), 0, 65535).astype(np.int32)
        grey += 128
        grey //= 257
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
