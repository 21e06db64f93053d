"""v2 inference requests and responses ↔ arrays, after MLServer's codecs.

A request is JSON, or — with the binary tensor data extension (Triton's, which
`tritonclient` uses by default) — a JSON header of `Inference-Header-Content-Length`
bytes followed by the raw tensors, each input's size in `parameters.binary_data_size`.
Binary BYTES tensors are elements each preceded by its length (4 bytes, little endian);
in JSON, a BYTES element is a string, here the base64 of the encoded audio (a JSON
string cannot carry arbitrary bytes). FP32 tensors are little-endian float32.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import AuscultError, NonFiniteValues, PayloadTooLarge

HEADER_LENGTH = "inference-header-content-length"


class InvalidInference(AuscultError):
    """A malformed inference request (400, as Triton and KServe answer it)."""

    status_code, code = 400, "invalid_inference_request"


class RequestTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestTensor]
    outputs: list[RequestedOutput] | None = None


@dataclass
class Tensor:
    """One decoded input: `array` for FP32, `elements` for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None
    elements: list[bytes] = field(default_factory=list)


MAX_DIMS = 8
MAX_DIM = 2**31 - 1


def parse_request(
    body: bytes, header_length: str | None, max_values: int = 1 << 20
) -> tuple[InferenceRequest, list[Tensor]]:
    """A whole request body → the request and its decoded inputs, in order.

    The JSON part holds at most `max_values` array elements (counted from its commas
    before parsing: a JSON number costs ~32 bytes of Python objects per 2 bytes of
    text), else PayloadTooLarge; shapes have at most MAX_DIMS dimensions of at most
    MAX_DIM each and at most `max_values` elements in JSON data."""
    n = len(body)
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError as e:
            raise InvalidInference("Inference-Header-Content-Length is not an integer") from e
        if not 0 < n <= len(body):
            raise InvalidInference("Inference-Header-Content-Length is outside the body")
    if body.count(b",", 0, n) >= max_values:
        raise PayloadTooLarge(
            f"the request's JSON holds more than {max_values} values "
            "(AUSCULT_MAX_JSON_VALUES); send FP32 tensors as binary tensor data"
        )
    try:
        raw = json.loads(body[:n])
    except (ValueError, RecursionError) as e:
        raise InvalidInference(f"the inference request is not valid JSON: {e}") from e
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()[:3])
        raise InvalidInference(f"not an inference request: {where}") from e
    binary = memoryview(body)[n:]
    tensors = []
    offset = 0
    for t in request.inputs:
        size = t.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidInference(f"input {t.name!r}: binary_data_size is outside the body")
            tensors.append(_decode(t, bytes(binary[offset : offset + size])))
            offset += size
        else:
            tensors.append(_decode(t, None))
    if offset != len(binary):
        raise InvalidInference("the body holds more binary data than the inputs declare")
    return request, tensors


def _count(t: RequestTensor) -> int:
    if len(t.shape) > MAX_DIMS:
        raise InvalidInference(
            f"input {t.name!r}: a shape of {len(t.shape)} dimensions (at most {MAX_DIMS})"
        )
    if any(d < 0 for d in t.shape):
        raise InvalidInference(f"input {t.name!r}: a shape has no negative dimensions")
    if any(d > MAX_DIM for d in t.shape):
        raise InvalidInference(f"input {t.name!r}: a dimension over {MAX_DIM}")
    if math.prod(max(d, 1) for d in t.shape) > MAX_DIM:  # even with a zero: numpy refuses
        raise InvalidInference(f"input {t.name!r}: shape {t.shape} is too large")
    return math.prod(t.shape)


def _flat(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:  # iterative: a deeply nested list must not exhaust the stack
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _decode(t: RequestTensor, raw: bytes | None) -> Tensor:
    count = _count(t)
    if t.datatype == "BYTES":
        elements = _bytes_binary(t.name, raw) if raw is not None else _bytes_json(t)
        if len(elements) != count:
            raise InvalidInference(
                f"input {t.name!r} has {len(elements)} elements, its shape {t.shape} says {count}"
            )
        return Tensor(t.name, t.datatype, t.shape, elements=elements)
    if t.datatype == "FP32":
        if raw is not None:
            if len(raw) != 4 * count:
                raise InvalidInference(
                    f"input {t.name!r}: {len(raw)} bytes of FP32 data for shape {t.shape}"
                )
            array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        else:
            values = _flat(t.data) if t.data is not None else []
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                raise InvalidInference(f"input {t.name!r}: FP32 data must be numbers")
            if len(values) != count:
                raise InvalidInference(
                    f"input {t.name!r} has {len(values)} values, its shape {t.shape} says {count}"
                )
            try:
                with np.errstate(over="ignore"):
                    array = np.asarray(values, dtype=np.float64).astype(np.float32)
            except OverflowError as e:  # an integer beyond any float
                raise NonFiniteValues(f"input {t.name!r}: a value too large to compute with") from e
        return Tensor(t.name, t.datatype, t.shape, array=array.reshape(t.shape))
    raise InvalidInference(f"input {t.name!r}: datatype {t.datatype} is not served (BYTES, FP32)")


def _bytes_binary(name: str, raw: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise InvalidInference(f"input {name!r}: a BYTES element's length is cut short")
        (k,) = struct.unpack_from("<I", raw, i)
        if i + 4 + k > len(raw):
            raise InvalidInference(f"input {name!r}: a BYTES element is longer than the data")
        out.append(raw[i + 4 : i + 4 + k])
        i += 4 + k
    return out


def _bytes_json(t: RequestTensor) -> list[bytes]:
    values = _flat(t.data) if t.data is not None else []
    out = []
    for v in values:
        if not isinstance(v, str):
            raise InvalidInference(f"input {t.name!r}: BYTES data in JSON must be strings")
        try:
            out.append(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError) as e:
            raise InvalidInference(
                f"input {t.name!r}: a BYTES element in JSON is the base64 of the encoded "
                "audio (or send it as binary tensor data)"
            ) from e
    return out


@dataclass
class Output:
    name: str
    datatype: str  # FP64, FP32 or BYTES
    shape: list[int]
    values: np.ndarray | list[str]


def _binary_wanted(request: InferenceRequest, name: str) -> bool:
    for o in request.outputs or []:
        if o.name == name and "binary_data" in o.parameters:
            return bool(o.parameters["binary_data"])
    return bool(request.parameters.get("binary_data_output", False))


def encode_response(
    request: InferenceRequest, model: str, version: str | None, outputs: list[Output]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it.
    Only the outputs the request names are sent (all when it names none)."""
    known = {o.name for o in outputs}
    if request.outputs:
        unknown = [o.name for o in request.outputs if o.name not in known]
        if unknown:
            raise InvalidInference(f"unknown output {unknown[0]!r}; this model has {sorted(known)}")
        wanted = {o.name for o in request.outputs}
        outputs = [o for o in outputs if o.name in wanted]
    header: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        header["id"] = request.id
    blobs = []
    for o in outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if _binary_wanted(request, o.name):
            if o.datatype == "BYTES":
                blob = b"".join(
                    struct.pack("<I", len(b)) + b for b in (s.encode() for s in o.values)
                )
            else:
                dtype = "<f8" if o.datatype == "FP64" else "<f4"
                blob = np.ascontiguousarray(o.values, dtype=dtype).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif o.datatype == "BYTES":
            entry["data"] = list(o.values)
        else:
            entry["data"] = np.asarray(o.values, dtype=np.float64).ravel().tolist()
        header["outputs"].append(entry)
    text = json.dumps(header).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
