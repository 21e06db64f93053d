"""Multipart uploads read into memory with limits enforced while the body streams in.

Starlette's form parser spools files over 1 MB to a temporary file; uploads here
never touch the disk, and an oversized body is refused as soon as it crosses the
limit, not after it has been buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from service.budgets import BufferBudget, Lease, Upload  # noqa: F401  (moved; old imports work)
from service.errors import (
    BatchTooLarge,
    ClientDisconnected,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

FORM_OVERHEAD = 64 * 1024  # headers and boundaries, per request
MAX_PART_HEADER_BYTES = 8 * 1024  # one part's headers together
MAX_PREAMBLE_BYTES = 8 * 1024  # text before the first boundary
MAX_TEXT_FIELD_BYTES = 256  # a text field's value (e.g. `condition`)


@asynccontextmanager
async def body_deadline(timeout_s: float, what: Literal["upload", "body"]) -> AsyncIterator[None]:
    """Read a request's body inside this block: a body still arriving after `timeout_s`
    is a RequestTimeout (408) that closes the connection, a client gone before it was
    read is ClientDisconnected (499)."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as e:
        raise RequestTimeout(
            f"the {what} did not arrive within {timeout_s:g} s",
            headers={"Connection": "close"},
        ) from e
    except ClientDisconnect as e:
        noun = "upload" if what == "upload" else "request"
        raise ClientDisconnected(f"the client went away before its {noun} was read") from e


async def read_body(
    stream: AsyncIterator[bytes],
    limit: int,
    too_large: str,
    reserve: Callable[[int], None] | None = None,
) -> bytes:
    """A whole (non-multipart) body; PayloadTooLarge(too_large) as soon as it passes
    `limit` bytes. `reserve(n)` is called for every chunk before it is kept (see
    read_files)."""
    data = bytearray()
    async for chunk in stream:
        if len(data) + len(chunk) > limit:
            raise PayloadTooLarge(too_large)
        if reserve is not None:
            reserve(len(chunk))
        data += chunk
    return bytes(data)


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    out: BinaryIO | None = None  # where a spooled file part goes (see read_files' `sink`)


# What the service recognises by its content (magic bytes), whatever a part's Content-Type says.
UPLOAD_MEDIA_TYPES = (
    "audio/wav, audio/flac, audio/ogg, audio/mpeg, image/png, image/jpeg, application/octet-stream"
)
UPLOAD_DESCRIPTION = (
    "a file part (with a filename): wav, flac, ogg or mp3 audio, or a png/jpeg spectrogram "
    "of the model's input size; recognised by its content. Content that is neither gets 415 "
    "unsupported_media_type, audio or an image that does not decode or fit gets 422"
)


def openapi_body(field_name: str, many: bool, text: dict[str, str] | None = None) -> dict:
    """`openapi_extra` describing the multipart body, so /docs shows a file picker (and a
    box for each optional text field of `text`: name → description).

    A JSON schema cannot say "bytes that decode as audio": any binary is schema-valid,
    and the 415/422 answers to content are described in the operation's responses.
    """
    item = {"type": "string", "format": "binary", "description": UPLOAD_DESCRIPTION}
    prop: dict = {"type": "array", "items": item, "minItems": 1} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            field_name: prop,
                            **{
                                k: {
                                    "type": "string",
                                    "maxLength": MAX_TEXT_FIELD_BYTES,
                                    "description": d,
                                }
                                for k, d in (text or {}).items()
                            },
                        },
                        "required": [field_name],
                    },
                    "encoding": {field_name: {"contentType": UPLOAD_MEDIA_TYPES}},
                }
            },
        }
    }


async def read_files(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    field_name: str,
    max_files: int,
    max_file_bytes: int,
    max_body_bytes: int | None = None,
    max_parts: int | None = None,
    reserve: Callable[[int], None] | None = None,
    text_fields: dict[str, str] | None = None,
    sink: Callable[[int], BinaryIO] | None = None,
    body_setting: str = "AUSCULT_MAX_BATCH_BYTES",
) -> list[Upload]:
    """Parse a multipart/form-data body → the files of `field_name`, in order.

    Raises UnsupportedMediaType (not multipart), PayloadTooLarge (a file over
    max_file_bytes or a body over max_body_bytes, by default what max_files files
    need), BatchTooLarge (more than max_files files or max_parts parts of any field)
    and InvalidRequest (malformed body, no such field). `reserve(n)` is called for
    every chunk before it is kept; it may raise (a process-wide memory budget).
    `text_fields`: the names of short text fields to keep (e.g. `condition`); their values
    (UTF-8, at most MAX_TEXT_FIELD_BYTES) are written into it.
    `sink(i)`: where the i-th file's bytes are written as they arrive (a file opened for
    writing, closed here), instead of memory; its Upload then has empty `data`.
    """
    mime, options = parse_options_header(content_type or "")
    if mime != b"multipart/form-data":
        sent = mime.decode("latin-1") or "no content type"
        raise UnsupportedMediaType(
            f"send multipart/form-data with the field {field_name!r}, not {sent}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart body without a boundary")
    body_limit = max_files * (max_file_bytes + 4096) + FORM_OVERHEAD
    # the message names the setting a user can look up, not only the derived figure
    limit_says = (
        f"{body_limit} bytes: {max_files} file{'s' * (max_files > 1)} of at most "
        f"{max_file_bytes} bytes (AUSCULT_MAX_UPLOAD_BYTES) with the multipart framing"
    )
    if max_body_bytes is not None and max_body_bytes < body_limit:
        body_limit = max_body_bytes
        limit_says = f"{body_limit} bytes ({body_setting})"
    if content_length and content_length.isdigit() and int(content_length) > body_limit:
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {limit_says}")

    files: list[Upload] = []
    current = _Part()
    header_name, header_value = bytearray(), bytearray()
    parts = header_bytes = 0

    def on_part_begin() -> None:
        nonlocal current, parts, header_bytes
        current = _Part()
        parts += 1
        header_bytes = 0
        if max_parts is not None and parts > max_parts:
            raise BatchTooLarge(f"a request holds at most {max_parts} multipart parts")

    def count_header(n: int) -> None:
        nonlocal header_bytes
        header_bytes += n
        if header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidRequest(f"a multipart part's headers exceed {MAX_PART_HEADER_BYTES} bytes")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        current.headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(current.headers.get(b"content-disposition", b""))
        current.name = disp.get(b"name", b"").decode("utf-8", "replace")
        fname = disp.get(b"filename")
        current.filename = fname.decode("utf-8", "replace") if fname is not None else None
        if text_fields is not None and current.name in text_fields:
            if current.filename is not None:
                raise InvalidRequest(f"the field {current.name!r} takes text, not a file")
            return
        if current.name != field_name:
            return
        if current.filename is None:
            # a part without a filename is a text field, not an upload (curl -F f=<x, or a
            # value that is not a file at all)
            raise InvalidRequest(f"the field {field_name!r} takes file parts (with a filename)")
        if len(files) >= max_files:
            if max_files == 1:
                raise InvalidRequest(f"send exactly one file in the field {field_name!r}")
            raise BatchTooLarge(f"a batch holds at most {max_files} files")
        if sink is not None:
            current.out = sink(len(files))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if text_fields is not None and current.name in text_fields:
            current.data.extend(data[start:end])
            if len(current.data) > MAX_TEXT_FIELD_BYTES:
                raise InvalidRequest(
                    f"the field {current.name!r} is longer than {MAX_TEXT_FIELD_BYTES} bytes"
                )
            return
        if current.name != field_name:
            return  # other fields are read past, not kept
        current.size += end - start
        if current.out is not None:
            current.out.write(memoryview(data)[start:end])
        else:
            current.data.extend(memoryview(data)[start:end])  # no intermediate copy
        if current.size > max_file_bytes:
            raise PayloadTooLarge(
                f"file {current.filename or ''!r} is larger than {max_file_bytes} bytes"
            )

    def on_part_end() -> None:
        if text_fields is not None and current.name in text_fields:
            try:
                text_fields[current.name] = bytes(current.data).decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise InvalidRequest(f"the field {current.name!r} is not UTF-8 text") from e
        elif current.name == field_name:
            if current.out is not None:
                current.out.close()
            files.append(Upload(current.filename, bytes(current.data)))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    received = 0
    preamble: bytearray | None = bytearray()  # until the first boundary
    try:
        # the constructor refuses a boundary over 256 bytes (FormParserError)
        # a single header line may use the whole part-header budget (a long filename)
        parser = MultipartParser(
            boundary,
            callbacks,  # type: ignore[arg-type]
            max_header_size=MAX_PART_HEADER_BYTES,
        )
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise PayloadTooLarge(f"request body is larger than {limit_says}")
            if reserve is not None:
                reserve(len(chunk))
            if preamble is not None:  # RFC 2046: text before the first boundary is ignored
                preamble += chunk
                start = _first_delimiter(preamble, boundary)
                if start is None:
                    if len(preamble) > MAX_PREAMBLE_BYTES:
                        raise InvalidRequest(
                            f"no multipart boundary in the first {MAX_PREAMBLE_BYTES} bytes"
                        )
                    continue
                chunk, preamble = bytes(preamble[start:]), None
            parser.write(chunk)
        if preamble:
            parser.write(bytes(preamble))  # no boundary at all: the parser says what is wrong
        parser.finalize()
    except (MultipartParseError, FormParserError) as e:
        if "header size" in str(e):
            raise InvalidRequest(
                f"a multipart part's headers exceed {MAX_PART_HEADER_BYTES} bytes"
            ) from e
        raise InvalidRequest(f"malformed multipart body: {e}") from e
    if not files:
        raise InvalidRequest(f"the multipart field {field_name!r} is required")
    return files


def _first_delimiter(data: bytearray, boundary: bytes) -> int | None:
    """Where the first `--boundary` line starts in `data` (at its start or after a line
    break), or None when it has not arrived yet."""
    delimiter = b"--" + boundary
    if data.startswith(delimiter):
        return 0
    at = data.find(b"\n" + delimiter)
    return None if at < 0 else at + 1
