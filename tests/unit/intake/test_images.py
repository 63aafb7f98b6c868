from __future__ import annotations

import asyncio
import io

import image_bytes as ib
import numpy as np
import pytest
from fastapi import UploadFile
from PIL import Image

from service.errors import (
    CorruptImage,
    EmptyFile,
    FileTooLarge,
    ImageTooSmall,
    ServiceError,
    TooManyPixels,
    UnsupportedFormat,
)
from service.intake.images import (
    ImageLimits,
    decode_image,
    decode_pixels,
    read_header,
    read_upload,
    sniff_format,
    to_rgb,
)
from service.render.png import encode_png

LIMITS = ImageLimits(max_upload_bytes=2_000_000, max_image_pixels=4_000_000, min_image_side=16)


@pytest.mark.parametrize(
    ("image_format", "params"),
    [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})],
)
def test_supported_formats_decode_to_rgb_of_the_same_size(image_format, params):
    data = ib.encode(ib.noise_image((70, 50)), image_format, **params)

    image = decode_image(data, LIMITS)

    assert image.format == image_format
    assert image.rgb.mode == "RGB"
    assert (image.width, image.height) == (70, 50)
    assert image.frames == 1
    assert image.byte_size == len(data)


def test_real_face_png_decodes_unchanged(celebs_root):
    data = ib.face_png(celebs_root, "tom_hanks")

    image = decode_image(data, LIMITS)

    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert image.format == "PNG"
    np.testing.assert_array_equal(np.asarray(image.rgb), expected)


@pytest.mark.parametrize(
    ("make", "error", "code"),
    [
        (lambda: b"", EmptyFile, "empty_file"),
        (lambda: b"this is plain text, not a JPEG\n" * 4, UnsupportedFormat, "unsupported_format"),
        (lambda: ib.encode(ib.noise_image(), "GIF"), UnsupportedFormat, "unsupported_format"),
        (lambda: ib.encode(ib.noise_image(), "TIFF"), UnsupportedFormat, "unsupported_format"),
        (
            lambda: ib.animated("GIF", ((255, 0, 0), (0, 0, 255))),
            UnsupportedFormat,
            "unsupported_format",
        ),
        (lambda: ib.truncated(ib.encode(ib.noise_image(), "PNG")), CorruptImage, "corrupt_image"),
        (lambda: ib.truncated(ib.encode(ib.noise_image(), "JPEG")), CorruptImage, "corrupt_image"),
        (lambda: ib.truncated(ib.encode(ib.noise_image(), "WEBP")), CorruptImage, "corrupt_image"),
        (lambda: ib.truncated(ib.encode(ib.noise_image(), "BMP")), CorruptImage, "corrupt_image"),
        (lambda: ib.PNG_SIGNATURE + b"\x00" * 40, CorruptImage, "corrupt_image"),
        (lambda: b"\xff\xd8\xff" + b"\x00" * 40, CorruptImage, "corrupt_image"),
        (lambda: ib.encode(Image.new("RGB", (1, 1)), "PNG"), ImageTooSmall, "image_too_small"),
        (lambda: ib.encode(Image.new("RGB", (200, 8)), "PNG"), ImageTooSmall, "image_too_small"),
        (lambda: ib.png_header_only(100_000, 100_000), TooManyPixels, "too_many_pixels"),
        (lambda: ib.png_header_only(2001, 2000), TooManyPixels, "too_many_pixels"),
        (lambda: ib.png_bomb(2500), TooManyPixels, "too_many_pixels"),
        (lambda: b"\xff\xd8\xff" + b"\x00" * 2_000_000, FileTooLarge, "file_too_large"),
    ],
    ids=[
        "empty",
        "text",
        "gif",
        "tiff",
        "animated-gif",
        "truncated-png",
        "truncated-jpeg",
        "truncated-webp",
        "truncated-bmp",
        "png-signature-only",
        "jpeg-marker-only",
        "1x1",
        "too-thin",
        "png-header-100000x100000",
        "just-over-pixel-limit",
        "decompression-bomb",
        "over-byte-limit",
    ],
)
def test_bad_inputs_raise_their_error(make, error, code):
    with pytest.raises(error) as caught:
        decode_image(make(), LIMITS)

    assert caught.value.code == code
    assert isinstance(caught.value, ServiceError)


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "BMP"])
def test_any_truncation_is_a_corrupt_image(image_format, keep):
    data = ib.truncated(ib.encode(ib.noise_image((64, 64)), image_format), keep)

    with pytest.raises(CorruptImage):
        decode_image(data, LIMITS)


def test_pillow_bomb_guard_is_reported_as_too_many_pixels():
    # far beyond Pillow's own limit: Pillow refuses at open, which must still map to 413
    limits = ImageLimits(max_upload_bytes=10**7, max_image_pixels=10**12, min_image_side=1)

    with pytest.raises(TooManyPixels):
        decode_image(ib.png_header_only(100_000, 100_000), limits)


def test_cmyk_jpeg_becomes_rgb():
    image = decode_image(ib.cmyk_jpeg(), LIMITS)

    assert (image.source_mode, image.rgb.mode) == ("CMYK", "RGB")


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
    image = decode_image(ib.grey16_png((64, 48)), LIMITS)

    row = np.asarray(image.rgb)[0, :, 0]
    assert image.source_mode.startswith("I")
    assert (row[0], row[-1]) == (0, 255)
    assert np.all(np.diff(row.astype(int)) >= 0)
    assert 100 < row[32] < 155  # the middle of the ramp stays mid-grey


def test_rgba_is_composited_on_white():
    image = decode_image(ib.rgba_png(alpha=0), LIMITS)

    assert image.source_mode == "RGBA"
    assert np.asarray(image.rgb).min() == 255


def test_opaque_rgba_keeps_its_colour():
    image = decode_image(ib.rgba_png(alpha=255), LIMITS)

    assert np.asarray(image.rgb).max() == 0


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F"]
)
def test_every_mode_converts_to_rgb(mode):
    converted = to_rgb(Image.new(mode, (20, 10)))

    assert converted.mode == "RGB"
    assert converted.size == (20, 10)


def test_palette_transparency_is_composited():
    palette_image = Image.new("P", (20, 20), 0)
    palette_image.putpalette([0, 0, 0] * 256)
    palette_image.info["transparency"] = 0

    assert np.asarray(to_rgb(palette_image)).min() == 255


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_animation_uses_the_first_frame(image_format):
    data = ib.animated(image_format, ((255, 0, 0), (0, 0, 255), (0, 255, 0)))

    image = decode_image(data, LIMITS)

    assert image.frames == 3
    red, green, blue = np.asarray(image.rgb)[16, 16]
    assert red > 200 and green < 50 and blue < 50


def test_exif_orientation_is_applied():
    image = decode_image(ib.exif_rotated_jpeg((80, 40), orientation=6), LIMITS)

    assert (image.width, image.height) == (40, 80)


def test_grey_jpeg_from_the_wild_decodes(data_root):
    path = sorted((data_root / "wild_others").glob("*.jpg"))[0]

    image = decode_image(path.read_bytes(), LIMITS)

    assert image.format == "JPEG"
    assert image.source_mode == "L"
    assert image.rgb.mode == "RGB"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (ib.PNG_SIGNATURE, "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"BM\x00\x00", "BMP"),
        (b"GIF89a", "GIF"),
        (b"II*\x00", "TIFF"),
        (b"\x00\x00\x00\x18ftypheic", "HEIF/AVIF"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"<html>", None),
    ],
)
def test_sniff_format_reads_magic_bytes(head, expected):
    assert sniff_format(head) == expected


def test_read_upload_stops_at_the_limit():
    upload = UploadFile(io.BytesIO(b"x" * 1001))

    with pytest.raises(FileTooLarge):
        asyncio.run(read_upload(upload, max_bytes=1000))

    assert (
        asyncio.run(read_upload(UploadFile(io.BytesIO(b"x" * 1000)), max_bytes=1000)) == b"x" * 1000
    )


def test_encode_png_round_trips():
    original = ib.noise_image((30, 20), "RGBA")

    decoded = Image.open(io.BytesIO(encode_png(original)))

    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(original))


def test_the_header_is_read_and_checked_before_any_pixel_is_decoded():
    """The intake asks the pixel budget for ``header.pixels`` between the two steps: reading the
    header must not decode, so a PNG whose pixel data is cut off passes it and fails later."""
    noise = ib.noise_image()
    data = encode_png(noise)
    header = read_header(data[: len(data) // 2], LIMITS)
    assert (header.format, header.byte_size) == ("PNG", len(data) // 2)
    assert header.pixels == noise.width * noise.height
    with pytest.raises(CorruptImage):
        decode_pixels(header)
    whole = decode_pixels(read_header(data, LIMITS))
    assert whole.rgb.size == noise.size and whole.byte_size == len(data)
