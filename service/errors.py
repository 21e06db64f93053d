"""Typed domain errors: each carries the HTTP status and the error code of DESIGN.md.

One exception handler (service/app.py) turns them into
`{"error": {"code": ..., "message": ...}}`.
"""

from __future__ import annotations


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


class Unauthorized(AuscultError):
    status_code, code = 401, "unauthorized"


class Overloaded(AuscultError):
    status_code, code = 503, "overloaded"


class NotReady(AuscultError):
    status_code, code = 503, "not_ready"


class BundleError(Exception):
    """A model bundle failed verification; the message says why."""


class InvalidRequest(AuscultError):
    """The request itself is malformed (not multipart, missing field, bad form)."""

    status_code, code = 422, "invalid_request"
