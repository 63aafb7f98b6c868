"""Every bad input gets its documented status and error code, and the service stays healthy."""

from __future__ import annotations

import image_bytes as ib
import pytest


def _oversized(settings) -> bytes:
    # a real JPEG start, then padding past the upload limit
    return b"\xff\xd8\xff\xe0" + b"\x00" * settings.max_upload_bytes


def _far_oversized(settings) -> bytes:
    # beyond the whole-body limit: refused while the body is read, before multipart parsing
    return b"\xff\xd8\xff\xe0" + b"\x00" * (2 * settings.max_upload_bytes)


def _bomb(settings) -> bytes:
    side = int(settings.max_image_pixels**0.5) + 100
    return ib.png_bomb(side)


# (id, build(settings) -> bytes, filename, content type, expected status, expected code)
BAD_UPLOADS = [
    ("empty-file", lambda s: b"", "face.png", "image/png", 400, "empty_file"),
    (
        "text-named-jpg",
        lambda s: b"just some text\n" * 20,
        "face.jpg",
        "image/jpeg",
        415,
        "unsupported_format",
    ),
    (
        "truncated-png",
        lambda s: ib.truncated(ib.encode(ib.noise_image(), "PNG")),
        "a.png",
        "image/png",
        400,
        "corrupt_image",
    ),
    (
        "truncated-jpeg",
        lambda s: ib.truncated(ib.encode(ib.noise_image(), "JPEG")),
        "a.jpg",
        "image/jpeg",
        400,
        "corrupt_image",
    ),
    (
        "1x1",
        lambda s: ib.encode(ib.noise_image((1, 1)), "PNG"),
        "dot.png",
        "image/png",
        422,
        "image_too_small",
    ),
    (
        "png-header-100000x100000",
        lambda s: ib.png_header_only(100_000, 100_000),
        "big.png",
        "image/png",
        413,
        "too_many_pixels",
    ),
    ("decompression-bomb", _bomb, "bomb.png", "image/png", 413, "too_many_pixels"),
    (
        "animated-gif",
        lambda s: ib.animated("GIF", ((255, 0, 0), (0, 255, 0))),
        "anim.gif",
        "image/gif",
        415,
        "unsupported_format",
    ),
    (
        "tiff",
        lambda s: ib.encode(ib.noise_image(), "TIFF"),
        "a.tiff",
        "image/tiff",
        415,
        "unsupported_format",
    ),
    (
        "gif-named-png",
        lambda s: ib.encode(ib.noise_image(), "GIF"),
        "a.png",
        "image/png",
        415,
        "unsupported_format",
    ),
    ("oversized-upload", _oversized, "big.jpg", "image/jpeg", 413, "file_too_large"),
    ("oversized-body", _far_oversized, "big.jpg", "image/jpeg", 413, "file_too_large"),
]


@pytest.mark.parametrize(
    ("build", "filename", "content_type", "status", "code"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_upload_gets_its_status_and_code(
    post_image, api_settings, face_bytes, build, filename, content_type, status, code
):
    response = post_image(build(api_settings), filename=filename, content_type=content_type)

    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert post_image(face_bytes).status_code == 200


# Accepted despite being unusual: (id, bytes, expected source mode)
ODD_BUT_VALID = [
    ("cmyk-jpeg", lambda: ib.cmyk_jpeg(), "CMYK"),
    ("16-bit-png", lambda: ib.grey16_png(), "I;16"),
    ("rgba-png", lambda: ib.rgba_png(alpha=128), "RGBA"),
    ("animated-png", lambda: ib.animated("PNG", ((255, 0, 0), (0, 0, 255))), "RGB"),
    ("animated-webp", lambda: ib.animated("WEBP", ((255, 0, 0), (0, 0, 255))), "RGB"),
    ("bmp", lambda: ib.encode(ib.noise_image(), "BMP"), "RGB"),
]


@pytest.mark.parametrize(
    ("build", "mode"), [case[1:] for case in ODD_BUT_VALID], ids=[case[0] for case in ODD_BUT_VALID]
)
def test_unusual_modes_and_formats_are_accepted(post_image, build, mode):
    # synthetic pictures without a face: classify them whole (detection is tested in test_faces)
    response = post_image(
        build(),
        filename="upload.bin",
        content_type="application/octet-stream",
        path="/predict?detect=false",
    )

    assert response.status_code == 200, response.text
    assert response.json()["image"]["mode"] == mode


def test_empty_body_is_a_validation_error(client, face_bytes, post_image):
    response = client.post("/predict")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert post_image(face_bytes).status_code == 200


def test_missing_file_field_is_a_validation_error(client, face_bytes, post_image):
    response = client.post("/predict", files={"image": ("face.png", face_bytes, "image/png")})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "file" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/predict", "/explain/gradient", "/jobs/gradient"])
def test_two_file_parts_are_a_validation_error(client, face_bytes, post_image, path):
    two = [
        ("file", ("a.png", face_bytes, "image/png")),
        ("file", ("b.png", face_bytes, "image/png")),
    ]
    response = client.post(path, files=two)

    assert response.status_code == 422
    assert response.json()["error"] == {
        "code": "validation_error",
        "message": "body.file: send one image, not 2",
    }
    assert post_image(face_bytes).status_code == 200


def test_non_multipart_body_is_a_validation_error(client):
    response = client.post("/predict", content=b"\x89PNG", headers={"Content-Type": "image/png"})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("headers", "code"),
    [({"X-API-Key": "wrong"}, "invalid_api_key"), ({"X-API-Key": ""}, "missing_api_key")],
    ids=["wrong-key", "empty-key"],
)
def test_wrong_or_missing_api_key_is_401(post_image, face_bytes, headers, code):
    response = post_image(face_bytes, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert post_image(face_bytes).status_code == 200


def test_no_api_key_header_is_401(client, post_image, face_bytes):
    key = client.headers.pop("X-API-Key")
    try:
        response = post_image(face_bytes)
    finally:
        client.headers["X-API-Key"] = key

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert post_image(face_bytes).status_code == 200


def test_oversized_chunked_body_is_refused_while_reading(
    client, api_settings, post_image, face_bytes
):
    boundary = "celebxai-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    chunk = b"\x00" * 65536
    chunks = 2 * api_settings.max_upload_bytes // len(chunk)

    def body():  # no Content-Length: the size is known only by counting
        yield head + ib.PNG_SIGNATURE
        for _ in range(chunks):
            yield chunk

    response = client.post(
        "/predict",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert post_image(face_bytes).status_code == 200


def test_a_keyless_upload_is_refused_before_its_body_is_read(client, face_bytes):
    sent: list[int] = []

    def body():
        sent.append(1)
        yield face_bytes

    key = client.headers.pop("X-API-Key")
    try:
        response = client.post(
            "/predict",
            content=body(),
            headers={
                "Content-Type": "multipart/form-data; boundary=x",
                "Content-Length": str(10 * 2**20),
            },
        )
    finally:
        client.headers["X-API-Key"] = key

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    assert response.headers["connection"] == "close"
    assert sent == [], "the body was read before the key was checked"


def test_a_corrupt_png_is_described_without_an_object_repr(post_image):
    response = post_image(ib.PNG_SIGNATURE + b"\x00not a png" * 10)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "corrupt_image"
    assert " at 0x" not in error["message"] and "BytesIO" not in error["message"]
