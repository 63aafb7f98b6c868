"""Error codes: every error a client can get, as a plain exception with a stable code.

Guard clauses anywhere in the service (intake, faces, explanations, jobs) raise a
``ServiceError`` subclass; nothing here knows HTTP beyond the status each code is answered
with. ``service.http.errors`` is the one place that renders them (and FastAPI's and
Starlette's own errors) as ``{"error": {"code", "message"}}``. The codes are part of the API:
clients match on them, so never rename one (docs/api.md, "Error codes").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class ServiceError(Exception):
    """An error with a stable code. Subclasses fix ``status`` and ``code``; ``headers`` go with
    the answer (``Retry-After``)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        Exception.__init__(self, message)
        self.message = message
        self.headers = headers


class EmptyFile(ServiceError):
    status, code = 400, "empty_file"


class CorruptImage(ServiceError):
    status, code = 400, "corrupt_image"


class MissingApiKey(ServiceError):
    status, code = 401, "missing_api_key"


class InvalidApiKey(ServiceError):
    status, code = 401, "invalid_api_key"


class RequestTimeout(ServiceError):
    """The request head or body did not arrive in time (``connection_limits``)."""

    status, code = 408, "request_timeout"


class FileTooLarge(ServiceError):
    status, code = 413, "file_too_large"


class TooManyPixels(ServiceError):
    status, code = 413, "too_many_pixels"


class UnsupportedFormat(ServiceError):
    status, code = 415, "unsupported_format"


class HeadersTooLarge(ServiceError):
    """The request line and headers exceed ``max_header_bytes`` (``connection_limits``)."""

    status, code = 431, "headers_too_large"


class CorsRefused(ServiceError):
    """A CORS preflight for an origin, method or header that the service does not allow."""

    status, code = 403, "cors_refused"


class ImageTooSmall(ServiceError):
    status, code = 422, "image_too_small"


class NoFace(ServiceError):
    status, code = 422, "no_face"


class FaceNotFound(ServiceError):
    status, code = 422, "face_index_out_of_range"


class BadMap(ServiceError):
    """A map to grade (``POST /explain/evaluate``) that is not a JSON grid of numbers or a
    greyscale PNG, or not at a size it can be laid on the face at."""

    status, code = 422, "bad_map"


class RequestMistake(ServiceError, ValueError):
    """A request naming something the model does not have. Also a ``ValueError``, so that
    code below the HTTP layer (the explainers) raises the same class the client's code names."""


class UnknownClass(RequestMistake):
    """A class id (``target=``, ``class=``) or class index that the model does not have."""

    status, code = 422, "unknown_class"


class OpenSetUnavailable(RequestMistake):
    """``target=open_set`` on a model whose bundle has no open-set score, or whose twin has no
    embedding for a gradient method to explain it with."""

    status, code = 422, "open_set_unavailable"


class UnknownLayer(RequestMistake):
    """A layer name (Grad-CAM's ``layer=``, the insight endpoints') the model does not have."""

    status, code = 422, "unknown_layer"


class UnknownChannel(RequestMistake):
    """A channel index past the layer's channels."""

    status, code = 422, "unknown_channel"


class UnknownMethod(RequestMistake):
    """An explanation method that ``GET /explain`` does not list."""

    status, code = 404, "unknown_method"


class UnknownModel(ServiceError):
    """A ``model=`` query parameter, or an Open Inference Protocol path (``/v2/models/{name}``),
    naming a model (or a version) that this service does not serve."""

    status, code = 404, "unknown_model"


class MalformedBody(ServiceError):
    """An Open Inference Protocol request body that cannot be read: JSON that does not parse,
    or an ``Inference-Header-Content-Length`` or ``binary_data_size`` that does not fit the
    body (its binary tensor data)."""

    status, code = 400, "malformed_body"


class TooCostly(ServiceError):
    """A request whose parameters plan more forward passes than ``max_passes_per_request``."""

    status, code = 422, "too_costly"


class MethodUnavailable(ServiceError):
    """A method the served bundle lacks a part for (``fastshap`` without its one-pass
    explainer)."""

    status, code = 422, "method_unavailable"


class NoTopPatches(ServiceError):
    status, code = 404, "no_top_patches"


class UnknownTrainingFace(ServiceError):
    """``GET /evidence/{class_id}/{file}`` for a file that the bundle's train split does not
    list under that class (a test image, a made-up name, an unknown class)."""

    status, code = 404, "unknown_training_face"


class EvidenceUnavailable(ServiceError):
    """Training-face thumbnails asked for where the service has no training images: the
    ``evidence_dir`` setting is empty or names no folder, the bundle's data root is not there,
    the bundle names no training faces, or the listed file is missing from the folder."""

    status, code = 404, "evidence_unavailable"


class UnknownJob(ServiceError):
    """A job id that was never made, has expired, or belongs to another API key."""

    status, code = 404, "unknown_job"


class JobNotDone(ServiceError):
    """A job's result asked for before the job is done (or after it failed or was cancelled)."""

    status, code = 409, "job_not_done"


class TooManyJobs(ServiceError):
    """The job limits (in all, per API key) are reached; Retry-After says when to try again."""

    status, code = 429, "too_many_jobs"


class TooManyStreams(ServiceError):
    """The caps on open event streams (per job, per API key) are reached."""

    status, code = 429, "too_many_streams"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class ModelUnavailable(ServiceError):
    """A model of ``GET /models`` (not the default) that failed its load-time checks: it is
    not tried again until the service restarts; the other models go on serving."""

    status, code = 503, "model_unavailable"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class ClientClosedRequest(ServiceError):
    """The client hung up before the answer was ready and its work was dropped. Nobody reads
    the response (uvicorn drops it, and logs no access line): the status, nginx's 499, is
    there for ``/metrics``."""

    status, code = 499, "client_closed_request"


VALIDATION_ERROR = "validation_error"
INTERNAL_ERROR = "internal_error"
# Codes for errors that Starlette/FastAPI raise themselves, by status.
HTTP_STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: FileTooLarge.code,
}


_OBJECT_REPR = re.compile(r"\s*<[^<>]*? at 0x[0-9a-fA-F]+>")
_CLASS_REPR = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def exception_text(exc: BaseException) -> str:
    """``str(exc)`` fit for a client: without object reprs such as Pillow's
    ``<_io.BytesIO object at 0x7f...>``, which say nothing to it and show the server's memory."""
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    return text or type(exc).__name__


def describe_validation_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line, ``where: what; ...``, each problem once.

    Only the location and message are kept: never the input value, a URL or a type dump, which
    say nothing to a client and may echo what it sent. The same problem reported twice (a
    parameter read by two dependencies, a union's branches) is said once.
    """
    problems: list[str] = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        message = _CLASS_REPR.sub(r"\1", message)  # "<class 'str'>" -> "str"
        problem = f"{where}: {message}" if where else message
        if problem not in problems:
            problems.append(problem)
    return "; ".join(problems)


def all_error_codes() -> dict[str, int]:
    """Every code the service can answer with, mapped to its HTTP status (for docs and tests)."""
    codes = {cls.code: cls.status for cls in _subclasses(ServiceError)}
    codes.update({code: status for status, code in HTTP_STATUS_CODES.items()})
    codes[VALIDATION_ERROR] = 422
    codes[INTERNAL_ERROR] = 500
    return codes


def _subclasses(cls: type[ServiceError]) -> list[type[ServiceError]]:
    found: list[type[ServiceError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found
