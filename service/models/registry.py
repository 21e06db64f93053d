"""The model registry: every bundle under the artifacts folder, loaded or failed.

Reloading (after Triton's explicit model control): a bundle is read again into a new
runtime *beside* the one serving; only a runtime that verified and warmed up replaces
it, by swapping the whole name → runtime mapping in one assignment. A request holds
the runtime it looked up, so it finishes on the version it started with; the old
session is freed when the last such request ends. A broken new version leaves the old
one serving and is reported (`reload_errors`, shown by GET /v1/models).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import ModelNotFound, NotReady, WrongModelKind
from service.models.bundle import MANIFEST
from service.models.runtimes import (
    AnomalyRuntime,
    ClassifierRuntime,
    GeneratorRuntime,
    ModelRuntime,
    open_runtime,
)

log = logging.getLogger("auscult.registry")

ReloadAction = Literal["loaded", "failed", "removed"]


def disable_ort_telemetry() -> None:
    """onnxruntime may send usage events (its Windows builds do by default); a service
    scoring other people's recordings sends nothing anywhere."""
    import onnxruntime as ort

    ort.disable_telemetry_events()


def bundle_folders(artifacts_dir: Path) -> dict[str, Path]:
    """name → folder, for every sub-folder (hidden ones are work in progress and skipped)."""
    return {
        path.name: path
        for path in sorted(Path(artifacts_dir).iterdir())
        if path.is_dir() and not path.name.startswith(".")
    }


def fingerprint(bundle_dir: Path) -> str:
    """What identifies a bundle folder's content cheaply: every file's name, size and
    mtime, and the manifest's bytes (which hold the sha256 of every other file). A
    folder that vanishes while it is read gets an empty fingerprint."""
    h = hashlib.sha256()
    try:
        for f in sorted(Path(bundle_dir).iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        manifest = Path(bundle_dir) / MANIFEST
        if manifest.is_file():
            h.update(manifest.read_bytes())
    except OSError:
        return ""
    return h.hexdigest()


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did to one model."""

    model: str
    action: ReloadAction
    version: str | None  # the version serving now (None: nothing serves under this name)
    previous_version: str | None
    reason: str | None = None  # why the new version failed


def _version(rt: ModelRuntime | None) -> str | None:
    return rt.manifest.version if rt is not None and rt.ready and rt.manifest else None


class ModelRegistry:
    """name → runtime. A failed bundle stays listed with its reason; others keep serving.

    `runtimes` is never changed in place: every change builds a new mapping and assigns
    it, so a reader on the event loop sees either the old or the new one, whole.
    """

    def __init__(
        self,
        runtimes: dict[str, ModelRuntime] | None = None,
        artifacts_dir: Path | None = None,
        threads: int = 1,
    ) -> None:
        self.runtimes: dict[str, ModelRuntime] = dict(runtimes or {})
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else None
        self.threads = threads
        self.fingerprints: dict[str, str] = {}  # of the content last loaded (or tried)
        self.reload_errors: dict[str, str] = {}  # name → why its last reload failed
        self._lock = threading.Lock()  # one reload at a time (they run in threads)

    @classmethod
    def from_dir(cls, artifacts_dir: Path, threads: int = 1) -> ModelRegistry:
        """Load every sub-folder (hidden ones are work in progress and skipped)."""
        disable_ort_telemetry()
        reg = cls(artifacts_dir=artifacts_dir, threads=threads)
        runtimes = {}
        for name, path in bundle_folders(artifacts_dir).items():
            reg.fingerprints[name] = fingerprint(path)
            runtimes[name] = open_runtime(path, threads)
        reg.runtimes = runtimes
        log.info(
            "registry_loaded",
            extra={"ready": sum(r.ready for r in runtimes.values()), "total": len(runtimes)},
        )
        return reg

    @property
    def ready_count(self) -> int:
        return sum(rt.ready for rt in self.runtimes.values())

    def reload(self, name: str | None = None, force: bool = False) -> list[ReloadOutcome]:
        """Re-read bundles from the artifacts folder (blocking: call it in a thread).

        With a name: that bundle, always re-read (404 when it neither exists nor is
        listed; unloaded when its folder is gone). Without: a scan — new folders load,
        removed ones unload, changed ones (by `fingerprint`) are re-read, the rest are
        left alone unless `force`.
        """
        if self.artifacts_dir is None:
            raise NotReady("this registry was not loaded from an artifacts folder")
        with self._lock:
            folders = bundle_folders(self.artifacts_dir)
            if name is not None:
                if name not in folders and name not in self.runtimes:
                    raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
                names, force = [name], True
            else:
                names = sorted(set(folders) | set(self.runtimes))
            outcomes = []
            for n in names:
                outcome = self._reload_one(n, folders.get(n), force)
                if outcome is not None:
                    outcomes.append(outcome)
            return outcomes

    def _swap(self, name: str, runtime: ModelRuntime | None) -> None:
        runtimes = {k: v for k, v in self.runtimes.items() if k != name}
        if runtime is not None:
            runtimes[name] = runtime
        self.runtimes = dict(sorted(runtimes.items()))  # one assignment: the atomic swap

    def _reload_one(self, name: str, folder: Path | None, force: bool) -> ReloadOutcome | None:
        old = self.runtimes.get(name)
        before = _version(old)
        if folder is None:  # the folder is gone: unload
            self._swap(name, None)
            self.fingerprints.pop(name, None)
            self.reload_errors.pop(name, None)
            log.info("model_unloaded", extra={"model": name, "version": before})
            return ReloadOutcome(name, "removed", None, before)
        mark = fingerprint(folder)
        if not force and old is not None and self.fingerprints.get(name) == mark:
            return None  # unchanged since it was last read
        self.fingerprints[name] = mark
        new = open_runtime(folder, self.threads)  # verified and warmed up beside the old
        if new.ready:
            self._swap(name, new)
            self.reload_errors.pop(name, None)
            log.info(
                "model_reloaded",
                extra={"model": name, "version": _version(new), "previous": before},
            )
            return ReloadOutcome(name, "loaded", _version(new), before)
        reason = new.reason or "failed"
        if old is not None and old.ready:
            self.reload_errors[name] = reason  # the old version keeps serving
            log.error(
                "model_reload_failed",
                extra={"model": name, "reason": reason, "serving": before},
            )
        else:
            self._swap(name, new)  # nothing served: list the failure itself
        return ReloadOutcome(name, "failed", before, before, reason)

    def get(self, name: str) -> ModelRuntime:
        rt = self.runtimes.get(name)
        if rt is None:
            raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
        if not rt.ready:
            raise NotReady(f"model {name!r} is not ready: {rt.reason or rt.status}")
        return rt

    def anomaly(self, name: str) -> AnomalyRuntime:
        rt = self.get(name)
        if not isinstance(rt, AnomalyRuntime):
            raise WrongModelKind(f"model {name!r} is a {rt.kind}; use {_route(rt)}")
        return rt

    def classifier(self, name: str) -> ClassifierRuntime:
        rt = self.get(name)
        if not isinstance(rt, ClassifierRuntime):
            raise WrongModelKind(f"model {name!r} is a {rt.kind}; use {_route(rt)}")
        return rt

    def generator(self, name: str) -> GeneratorRuntime:
        rt = self.get(name)
        if not isinstance(rt, GeneratorRuntime):
            raise WrongModelKind(f"model {name!r} is a {rt.kind}; use {_route(rt)}")
        return rt


def _route(rt: ModelRuntime) -> str:
    """The route a model of rt's kind answers (for wrong_model_kind messages)."""
    verb = {"anomaly": "score", "classifier": "classify", "generator": "generate"}
    return f"POST /v1/models/{rt.name}/{verb.get(rt.kind or '', 'score')}"
