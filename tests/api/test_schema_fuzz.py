"""Schemathesis against the app in-process (ASGI) on the committed bundles: every
operation of /openapi.json, positive and negative cases, every check, 0 failures.

The schema is loaded at import (schemathesis's lazy fixture loader does not run under
this pytest); the app's lifespan starts with the first request and ends with the
session. Examples per operation are bounded so the module runs in well under a minute.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema

from service.app import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS, tone, wav_bytes

KEY = "schema-fuzz-key"
# per operation; SCHEMA_FUZZ_EXAMPLES=500 for a deeper run by hand
MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "50"))

# A JSON schema cannot say "bytes that decode as audio": every binary is a schema-valid
# upload, and what schemathesis makes of one is noise, which the service rightly answers
# with 415 unsupported_media_type or 422 invalid_* (both described in each operation's
# responses). Every other answer to a schema-valid upload is still a failure. Likewise a
# v2 inference request the schema allows may name no input of the model or hold data
# that does not fit its shape: 400 (the protocol's bad request), 413, 415 or 422. A
# generate request's label must be one of the model's labels and its count within
# AUSCULT_MAX_GENERATE_COUNT, which the schema cannot say either: 422 invalid_request.
# A fit job's name must be a folder name and its clips enough readable audio (422), a
# name may be taken (409), and the service may hold as many jobs as it takes (503).
UPLOADS = """
[[operations]]
include-path-regex = "^/v1/models/\\\\{name\\\\}/(score|classify|spectrogram|generate|conditions)"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "415", "422"]

[[operations]]
include-path-regex = "^/v1/fits"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "401", "404", "409", "413", "415", "422", "503",
]

[[operations]]
include-path-regex = "^/v2/models/.*/infer$"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "404", "413", "415", "422",
]
"""
AUTH = f"""
[auth.openapi.APIKeyHeader]
api_key = "{KEY}"
"""


def _schema(keys: list[str]) -> BaseSchema:
    """The app with or without API keys, and its document as the service serves it."""
    settings_ = Settings(
        artifacts_dir=ARTIFACTS,
        api_keys=keys,
        log_level="warning",
        jobs_dir=Path(tempfile.mkdtemp(prefix="fuzz-jobs-")),  # fit jobs on, spooled there
    )  # type: ignore[call-arg]
    config = SchemathesisConfig.from_str((AUTH if keys else "") + UPLOADS)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_), config=config)


keyed = _schema([KEY])
open_ = _schema([])

_settings = settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
)


@keyed.parametrize()
@_settings
def test_api_with_keys_conforms_to_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()


@open_.parametrize()
@_settings
def test_open_api_conforms_to_its_schema(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate()


def _multipart(field: str, filename: str | None, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "fuzzboundary"
    disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
    body = (
        f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.anyio
@pytest.mark.parametrize("path, field", [("score", "file"), ("score/batch", "files")])
async def test_upload_field_without_filename_is_invalid_request(client, path, field) -> None:  # type: ignore[no-untyped-def]
    body, headers = _multipart(field, None, wav_bytes(tone(1.0)))
    r = await client.post(f"/v1/models/tiny/{path}", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "file parts (with a filename)" in r.json()["error"]["message"]


@pytest.mark.anyio
async def test_empty_batch_is_invalid_request_as_the_schema_says(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/models/tiny/score/batch",
        content=b"--b--\r\n",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/v1/models/{name}/score/batch"]["post"]["requestBody"]
    assert body["content"]["multipart/form-data"]["schema"]["properties"]["files"]["minItems"] == 1


def test_security_requirements_say_whether_a_key_is_needed() -> None:
    def security(keys: list[str]) -> list:
        app = create_app(Settings(artifacts_dir=ARTIFACTS, api_keys=keys, log_level="warning"))  # type: ignore[arg-type]
        return app.openapi()["paths"]["/v1/models/{name}/score"]["post"]["security"]

    assert security([]) == [{"APIKeyHeader": []}, {"HTTPBearer": []}, {}]  # open: optional
    assert security([KEY]) == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
