"""Typed domain errors: each carries the HTTP status and the error code of DESIGN.md.

One exception handler (service/app.py) turns them into
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations

import re


class AuscultError(Exception):
    """Base: an error with a stable code and an HTTP status."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class ModelNotFound(AuscultError):
    status_code, code = 404, "model_not_found"


class WrongModelKind(AuscultError):
    status_code, code = 409, "wrong_model_kind"


class PayloadTooLarge(AuscultError):
    status_code, code = 413, "payload_too_large"


class BatchTooLarge(AuscultError):
    status_code, code = 413, "batch_too_large"


class UnsupportedMediaType(AuscultError):
    status_code, code = 415, "unsupported_media_type"


class InvalidInput(AuscultError):
    """Base for 422s about the content of an upload."""

    status_code, code = 422, "invalid_input"


class InvalidAudio(InvalidInput):
    code = "invalid_audio"


class InvalidImage(InvalidInput):
    code = "invalid_image"


class AudioTooShort(InvalidInput):
    code = "audio_too_short"


class AudioTooLong(InvalidInput):
    code = "audio_too_long"


class NonFiniteValues(InvalidInput):
    """Samples, features or scores that are NaN, infinite or too large to compute with:
    never reported as a score (a corrupt stream must not read as a healthy machine)."""

    code = "non_finite_values"


class SampleRateOutOfRange(InvalidInput):
    code = "sample_rate_out_of_range"


class Unauthorized(AuscultError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="auscult"'})


class RequestTimeout(AuscultError):
    status_code, code = 408, "request_timeout"


class ClientDisconnected(AuscultError):
    """The client went away before its request was read; nobody reads the answer.
    499 (the status nginx uses for this) so logs and metrics tell it from a server fault."""

    status_code, code = 499, "client_disconnected"


class Overloaded(AuscultError):
    status_code, code = 503, "overloaded"


class NotReady(AuscultError):
    status_code, code = 503, "not_ready"


class EnrolFailed(AuscultError):
    """The enrolled version could not be written or loaded; the served one is unchanged."""

    status_code, code = 409, "enrol_failed"


class FitNotFound(AuscultError):
    status_code, code = 404, "fit_not_found"


class ModelExists(AuscultError):
    """A fit job for a name that is already a model, without `replace=true`."""

    status_code, code = 409, "model_exists"


class FitInProgress(AuscultError):
    """Another fit job for the same model name is queued or running."""

    status_code, code = 409, "fit_in_progress"


class NotEnoughAudio(InvalidInput):
    """Too little readable healthy audio for a fit job (the skipped clips are named)."""

    code = "not_enough_audio"


class FitsDisabled(AuscultError):
    """No jobs folder (AUSCULT_JOBS_DIR) is set: the service takes no fit jobs."""

    status_code, code = 503, "fits_disabled"


class InsufficientStorage(AuscultError):
    """The jobs folder is full (its quota, or the disk itself); nothing was kept."""

    status_code, code = 507, "insufficient_storage"


class BundleError(Exception):
    """A model bundle failed verification; the message says why."""


class InvalidRequest(AuscultError):
    """The request itself is malformed (not multipart, missing field, bad form)."""

    status_code, code = 422, "invalid_request"


class Failure(AuscultError):
    """An error rebuilt from stored data (status, code, message): a batch keeps its
    per-file errors as data, not as exception objects whose tracebacks would keep
    every frame's locals (the upload bytes among them) alive."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.code = status_code, code


_OBJECT_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")
# an absolute path of the server's file system; the API's own routes (/v1/…, /v2/…) stay
_ABS_PATH = re.compile(r"(?<![\w.:/-])(?!/v\d+/)(?:/[^/\s'\"():,;]+)+/([^/\s'\"():,;]+)")


def public_message(message: str) -> str:
    """A message safe to send: object reprs lose their heap address and absolute paths
    keep only their last component (the server's folders are nobody's business)."""
    message = _OBJECT_REPR.sub(r"<\1>", message)
    return _ABS_PATH.sub(r"\1", message)
