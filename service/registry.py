"""The model registry: every bundle under the artifacts folder, loaded or failed."""

from __future__ import annotations

import logging
from pathlib import Path

from service.errors import ModelNotFound, NotReady, WrongModelKind
from service.runtime import AnomalyRuntime, ClassifierRuntime, ModelRuntime, open_runtime

log = logging.getLogger("auscult.registry")


def disable_ort_telemetry() -> None:
    """onnxruntime may send usage events (its Windows builds do by default); a service
    scoring other people's recordings sends nothing anywhere."""
    import onnxruntime as ort

    ort.disable_telemetry_events()


class ModelRegistry:
    """name → runtime. A failed bundle stays listed with its reason; others keep serving."""

    def __init__(self, runtimes: dict[str, ModelRuntime] | None = None) -> None:
        self.runtimes: dict[str, ModelRuntime] = dict(runtimes or {})

    @classmethod
    def from_dir(cls, artifacts_dir: Path, threads: int = 1) -> ModelRegistry:
        """Load every sub-folder (hidden ones are work in progress and skipped)."""
        disable_ort_telemetry()
        runtimes = {}
        for path in sorted(Path(artifacts_dir).iterdir()):
            if path.is_dir() and not path.name.startswith("."):
                runtimes[path.name] = open_runtime(path, threads)
        log.info(
            "registry_loaded",
            extra={"ready": sum(r.ready for r in runtimes.values()), "total": len(runtimes)},
        )
        return cls(runtimes)

    @property
    def ready_count(self) -> int:
        return sum(rt.ready for rt in self.runtimes.values())

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
            raise WrongModelKind(
                f"model {name!r} is a {rt.kind}; use POST /v1/models/{name}/classify"
            )
        return rt

    def classifier(self, name: str) -> ClassifierRuntime:
        rt = self.get(name)
        if not isinstance(rt, ClassifierRuntime):
            raise WrongModelKind(f"model {name!r} is a {rt.kind}; use POST /v1/models/{name}/score")
        return rt
