"""The documented way to publish a new version under AUSCULT_WATCH=1 (issue 24): the served
folder is a symlink into a hidden versions folder, and a new version goes live with one
rename of a new link over it (`mv -T`). The two-`mv` swap left a moment with no folder at
all, and the watcher unloaded the model (50 of 1600 requests got 404)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from service.app import create_app
from service.models.bundle import read_manifest, update_bundle
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.helpers import GOOD_WAV, serve

pytestmark = pytest.mark.anyio


def flip(root: Path, name: str, target: str) -> None:
    """`ln -s TARGET ROOT/.NAME-next && mv -T ROOT/.NAME-next ROOT/NAME`: one rename(2)."""
    link = root / f".{name}-next"
    link.unlink(missing_ok=True)
    os.symlink(target, link)
    os.replace(link, root / name)


async def test_a_symlink_flip_under_the_watcher_never_answers_404(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    versions = root / ".versions"
    shutil.copytree(ARTIFACTS / "gearbox", versions / "gearbox-1")
    flip(root, "gearbox", ".versions/gearbox-1")
    v1 = read_manifest(root / "gearbox").version
    settings = Settings(artifacts_dir=root, watch=True, watch_interval_s=0.1, log_level="warning")  # type: ignore[arg-type]
    async with serve(create_app(settings)) as client:
        seen: list[tuple[int, str | None]] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                r = await client.post(
                    "/v1/models/gearbox/score", files={"file": ("a.wav", GOOD_WAV)}
                )
                seen.append((r.status_code, r.json().get("model_version")))
                await asyncio.sleep(0)

        task = asyncio.create_task(load())
        for k in range(2, 6):  # four new versions, each live with one rename
            shutil.copytree(versions / f"gearbox-{k - 1}", versions / f"gearbox-{k}")
            update_bundle(versions / f"gearbox-{k}", {}, version=f"{v1}-{k}")
            flip(root, "gearbox", f".versions/gearbox-{k}")
            for _ in range(200):
                if seen and seen[-1][1] == f"{v1}-{k}":
                    break
                await asyncio.sleep(0.05)
            assert seen[-1][1] == f"{v1}-{k}", seen[-5:]
        stop.set()
        await task
    assert len(seen) > 20
    assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
    assert {v for _, v in seen} <= {v1, *(f"{v1}-{k}" for k in range(2, 6))}
