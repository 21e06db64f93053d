"""v2 inference under hostile numbers (issue 24): property-based requests whose shapes,
datatypes and data reach the edges — huge and negative dimensions, many dimensions,
NaN and infinities (Python's JSON reads `NaN`/`Infinity`), integers of thousands of digits,
floats beyond float32 — against the committed bundles in-process. Every answer is a 2xx or
a 4xx with the protocol's error body; never a 500.

The schemathesis run (test_schema_fuzz.py) covers the documented request shapes; its
generator cannot write NaN, so these strategies are here. SCHEMA_FUZZ_EXAMPLES=500 runs
deeper by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.models.bundle import read_manifest
from service.settings import Settings
from tests.conftest import ARTIFACTS

MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "150"))
GEARBOX = read_manifest(ARTIFACTS / "gearbox").features
DIGITS = read_manifest(ARTIFACTS / "digits").features

dims = st.one_of(
    st.integers(0, 4),
    st.sampled_from([GEARBOX.height, GEARBOX.width, DIGITS.height, DIGITS.width]),
    st.integers(-(2**70), 2**70),
    st.just(3037000500),
)
shapes = st.one_of(
    st.lists(dims, max_size=5),
    st.lists(dims, max_size=5).map(lambda d: [0, *d]),
    st.lists(st.just(1), min_size=9, max_size=70),
    st.tuples(st.integers(0, 2), st.sampled_from([(64, 32), (24, 126), (32, 64)])).map(
        lambda t: [t[0], *t[1]]
    ),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1),
    st.integers(-(10**4000), 10**4000),
    st.sampled_from([3.5e38, -3.5e38, 1e308, 1e-320]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
data = st.one_of(
    st.just([]),
    st.lists(numbers, max_size=40),
    st.lists(st.lists(numbers, max_size=4)),
    numbers,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    model = draw(st.sampled_from(["gearbox", "digits"]))
    shape = draw(shapes)
    tensor = {
        "name": draw(st.sampled_from(["spectrogram"] * 4 + ["audio", "x"])),
        "shape": shape,
        "datatype": draw(st.sampled_from(["FP32"] * 4 + ["BYTES", "FP64", "INT8"])),
        "data": draw(data),
    }
    if draw(st.booleans()) and all(isinstance(d, int) and 0 <= d <= 64 for d in shape):
        n = 1
        for d in shape:
            n *= d
        tensor["data"] = draw(st.lists(numbers, min_size=n, max_size=n)) if n <= 8192 else []
    body: dict = {"inputs": [tensor]}
    if draw(st.booleans()):
        body["parameters"] = {"condition": draw(st.one_of(st.none(), st.integers(), st.text()))}
    return model, json.dumps(body)  # allow_nan: NaN and Infinity as Python writes them


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(artifacts_dir=ARTIFACTS, log_level="warning"))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@given(request_=requests())
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_v2_infer_answers_hostile_numbers_with_a_4xx_in_the_protocols_shape(
    client: TestClient, request_: tuple[str, str]
) -> None:
    model, body = request_
    r = client.post(
        f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])
    if r.status_code >= 400:
        error = r.json()
        assert set(error) == {"error"} and isinstance(error["error"], str), error
