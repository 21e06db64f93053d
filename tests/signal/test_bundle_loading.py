"""Bundle verification at start-up: a broken bundle is listed as failed with its reason,
the good one keeps serving, and readiness reflects what loaded."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from service.models.bundle import MANIFEST, sha256_file
from tests.helpers import assert_error, assert_still_scores, serve

pytestmark = pytest.mark.anyio


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def corrupt_encoder(bundle: Path) -> None:
    data = bytearray((bundle / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "encoder.onnx").write_bytes(bytes(data))


def wrong_schema_version(bundle: Path) -> None:
    _edit_manifest(bundle, lambda m: m.update(schema_version=99))


def missing_array(bundle: Path) -> None:
    (bundle / "inv_cov.npy").unlink()


def inconsistent_shapes(bundle: Path) -> None:
    # A well-formed file with a valid checksum: only the shape check can catch it.
    mean_vec = np.load(bundle / "mean_vec.npy")
    np.save(bundle / "mean_vec.npy", np.concatenate([mean_vec, mean_vec]))
    digest = sha256_file(bundle / "mean_vec.npy")
    _edit_manifest(bundle, lambda m: m["files"].update({"mean_vec.npy": digest}))


def no_manifest(bundle: Path) -> None:
    (bundle / MANIFEST).unlink()


def manifest_not_json(bundle: Path) -> None:
    (bundle / MANIFEST).write_text("{not json")


def manifest_of(text: str) -> Callable[[Path], None]:
    """Valid JSON that is not an object (issue 24: it stopped the service from starting)."""

    def write(bundle: Path) -> None:
        (bundle / MANIFEST).write_text(text)

    return write


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        pytest.param(corrupt_encoder, "checksum mismatch for encoder.onnx", id="checksum-mismatch"),
        pytest.param(wrong_schema_version, "schema_version 99", id="wrong-schema-version"),
        pytest.param(missing_array, "missing file inv_cov.npy", id="missing-file"),
        pytest.param(inconsistent_shapes, "mean_vec has shape", id="inconsistent-shapes"),
        pytest.param(no_manifest, "no manifest.json", id="no-manifest"),
        pytest.param(manifest_not_json, "unreadable manifest.json", id="manifest-not-json"),
        *(
            pytest.param(manifest_of(text), "not an object", id=f"manifest-{kind}")
            for text, kind in (("null", "null"), ("[]", "list"), ("3", "number"), ('"x"', "string"))
        ),
    ],
)
async def test_broken_bundle_is_listed_as_failed_and_the_other_keeps_serving(
    settings_factory, artifacts_dir: Path, breakage: Callable[[Path], None], reason: str
) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(artifacts_dir / "tiny", artifacts_dir / "broken")
    breakage(artifacts_dir / "broken")

    async with serve(create_app(settings_factory())) as client:
        models = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
        assert models["tiny"]["status"] == "ready" and models["tiny"]["reason"] is None
        assert models["broken"]["status"] == "failed"
        assert reason in models["broken"]["reason"]

        r = await client.get("/v1/models/broken")
        assert r.status_code == 200 and r.json()["status"] == "failed"
        r = await client.post("/v1/models/broken/score", files={"file": ("a.wav", b"RIFF")})
        assert_error(r, 503, "not_ready")

        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models_ready"] == 1
        await assert_still_scores(client, "tiny")


async def test_failed_bundle_is_logged_with_its_reason(
    settings_factory, artifacts_dir: Path, log_lines
) -> None:  # type: ignore[no-untyped-def]
    shutil.copytree(artifacts_dir / "tiny", artifacts_dir / "broken")
    corrupt_encoder(artifacts_dir / "broken")
    async with serve(create_app(settings_factory())):
        pass
    failed = [line for line in log_lines() if line["event"] == "bundle_failed"]
    assert failed == [
        {**failed[0], "model": "broken", "reason": "checksum mismatch for encoder.onnx"}
    ]


async def test_readyz_is_not_ready_without_bundles(tmp_path: Path) -> None:
    from service.settings import Settings

    empty = tmp_path / "empty"
    empty.mkdir()
    async with serve(create_app(Settings(artifacts_dir=empty))) as client:
        assert_error(await client.get("/readyz"), 503, "not_ready")
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/v1/models")).json()["models"] == []
        r = await client.post("/v1/models/tiny/score", files={"file": ("a.wav", b"x")})
        assert_error(r, 404, "model_not_found")


async def test_readyz_is_not_ready_when_every_bundle_failed(
    settings_factory, artifacts_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    corrupt_encoder(artifacts_dir / "tiny")
    async with serve(create_app(settings_factory())) as client:
        assert_error(await client.get("/readyz"), 503, "not_ready")


async def test_hidden_folders_are_not_bundles(settings_factory, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    # write_bundle builds in ".<name>.*" folders and renames: work in progress, not a bundle.
    shutil.copytree(artifacts_dir / "tiny", artifacts_dir / ".tiny.partial")
    async with serve(create_app(settings_factory())) as client:
        names = [m["name"] for m in (await client.get("/v1/models")).json()["models"]]
        assert names == ["tiny"]


async def test_a_manifest_that_is_not_an_object_found_by_a_reload_does_not_stop_the_scan(
    settings_factory, artifacts_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    async with serve(create_app(settings_factory())) as client:
        (artifacts_dir / "a-broken").mkdir()
        (artifacts_dir / "a-broken" / MANIFEST).write_text("null")
        shutil.copytree(artifacts_dir / "tiny", artifacts_dir / "z-good")  # scanned after it
        r = await client.post("/v1/models/reload")
        assert r.status_code == 200, r.text
        actions = {o["model"]: o["action"] for o in r.json()["results"]}
        assert actions == {"a-broken": "failed", "z-good": "loaded"}
        await assert_still_scores(client, "z-good")
