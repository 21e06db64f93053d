"""Multipart uploads read into memory with limits enforced while the body streams in.

Starlette's form parser spools files over 1 MB to a temporary file; uploads here
never touch the disk, and an oversized body is refused as soon as it crosses the
limit, not after it has been buffered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import BatchTooLarge, InvalidRequest, PayloadTooLarge, UnsupportedMediaType

FORM_OVERHEAD = 64 * 1024  # headers and boundaries, per request


@dataclass
class Upload:
    filename: str | None
    data: bytes


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def openapi_body(field_name: str, many: bool) -> dict:
    """`openapi_extra` describing the multipart body, so /docs shows a file picker."""
    item = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": item} if many else item
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {field_name: prop},
                        "required": [field_name],
                    }
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
) -> list[Upload]:
    """Parse a multipart/form-data body → the files of `field_name`, in order.

    Raises UnsupportedMediaType (not multipart), PayloadTooLarge (a file over
    max_file_bytes or a body over the whole budget), BatchTooLarge (more than
    max_files files) and InvalidRequest (malformed body, no such field).
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
    if content_length and content_length.isdigit() and int(content_length) > body_limit:
        raise PayloadTooLarge(f"request body is {content_length} bytes; the limit is {body_limit}")

    files: list[Upload] = []
    current = _Part()
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
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
        if current.name == field_name and len(files) >= max_files:
            if max_files == 1:
                raise InvalidRequest(f"send exactly one file in the field {field_name!r}")
            raise BatchTooLarge(f"a batch holds at most {max_files} files")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current.name != field_name:
            return  # other fields are read past, not kept
        current.data.extend(memoryview(data)[start:end])  # no intermediate copy
        if len(current.data) > max_file_bytes:
            raise PayloadTooLarge(
                f"file {current.filename or ''!r} is larger than {max_file_bytes} bytes"
            )

    def on_part_end() -> None:
        if current.name == field_name:
            files.append(Upload(current.filename, bytes(current.data)))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > body_limit:
                raise PayloadTooLarge(f"request body is larger than {body_limit} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise InvalidRequest(f"malformed multipart body: {e}") from e
    if not files:
        raise InvalidRequest(f"the multipart field {field_name!r} is required")
    return files
