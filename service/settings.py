"""Service settings: environment variables with the AUSCULT_ prefix, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUSCULT_", extra="ignore")

    artifacts_dir: Path = Path("./artifacts")
    """Folder whose sub-folders are model bundles; every one is loaded at start-up."""

    default_model: str | None = None
    """Model used by the unversioned convenience routes and shown first; must exist if set."""

    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0)
    """Largest accepted file (each file of a batch); enforced while the body streams in."""

    max_batch_files: int = Field(64, gt=0)
    """Most files in one batch request."""

    max_audio_seconds: float = Field(300.0, gt=0)
    """Longest accepted clip, judged from the header before samples are decoded."""

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated keys; empty means the API is open. Never logged."""

    ort_threads: int = Field(1, ge=1, le=64)
    """onnxruntime intra-op threads per model session."""

    cpu_workers: int = Field(2, ge=1, le=64)
    """Threads that decode, compute features and run models (the CPU-bound work)."""

    max_concurrency: int = Field(16, ge=1)
    """Scoring requests in flight at once; more get 503 overloaded with Retry-After."""

    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    """Micro-batching: the longest a single-clip request is held to share one encoder run
    while another run of that model is in flight (an idle model runs it at once).
    0 turns micro-batching off."""

    max_micro_batch: int = Field(32, ge=1)
    """Largest encoder batch the micro-batcher forms."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("artifacts_dir")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"artifacts_dir {value} is not a folder")
        return value
