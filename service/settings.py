"""Service settings: environment variables with the AUSCULT_ prefix, validated at start-up."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
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

    max_generate_count: int = Field(16, ge=1, le=1000)
    """Most clips one `POST /v1/models/{name}/generate` makes (each costs a generator run
    and a Griffin-Lim reconstruction); more get 422 invalid_request."""

    max_batch_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """Largest request body (a batch's files together, with the multipart framing); a
    larger Content-Length is refused before reading, a larger stream as it crosses it."""

    max_form_parts: int = Field(128, gt=0)
    """Most multipart parts (any field) in one request: a body of many tiny parts costs
    parser time on the event loop out of all proportion to its size."""

    max_buffered_bytes: int = Field(256 * 1024 * 1024, gt=0)
    """Upload bytes held in memory by all requests together; a request that would cross it
    gets 503 overloaded. With the per-file working set this bounds the service's memory
    (docs/operations.md, "Limits and timeouts")."""

    max_json_values: int = Field(1 << 20, gt=0)
    """Most array values in one v2 JSON request (counted before it is parsed: each JSON
    number costs ~32 bytes of Python objects); more gets 413. Binary tensor data is
    bounded by AUSCULT_MAX_BATCH_BYTES alone."""

    max_audio_seconds: float = Field(300.0, gt=0)
    """Longest accepted clip, judged from the header before samples are decoded."""

    min_sample_rate: int = Field(1000, gt=0)
    """Lowest accepted sample rate (Hz): a 692-byte WAV claiming 1 Hz is minutes of audio
    once resampled."""

    max_sample_rate: int = Field(384_000, gt=0)
    """Highest accepted sample rate (Hz)."""

    max_request_samples: int = Field(1 << 25, gt=0)
    """Samples one request may decode and resample, all its files together (about 35 min
    of 16-kHz audio): what bounds its CPU time when a small compressed file claims a lot."""

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated keys; empty means the API is open. Never logged."""

    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated keys for the admin routes (reload), separate from `api_keys`.
    Empty: the admin routes are open when `api_keys` is empty too, closed (401) when
    it is not. Never logged."""

    watch: bool = False
    """Poll the artifacts folder for changes every `watch_interval_s`: a new folder is
    loaded, a removed one unloaded, a changed one re-read beside the version serving."""

    watch_interval_s: float = Field(2.0, ge=0.1, le=3600)
    """Seconds between two polls of the artifacts folder (with `watch`)."""

    jobs_dir: Path | None = None
    """Spool folder of fit jobs (`POST /v1/fits`), shared with the trainer (`python -m
    training worker --jobs DIR`); created if missing. Unset: the service takes no fit jobs
    (503 fits_disabled). The only place uploads are written to disk."""

    fit_max_job_bytes: int = Field(200 * 1024 * 1024, gt=0)
    """Largest fit job upload (all its clips, or its archive unpacked); more gets 413."""

    fit_max_clips: int = Field(500, ge=1)
    """Most clips in one fit job (files, or members of its archive); more gets 413."""

    fit_max_spool_bytes: int = Field(2 * 1024 * 1024 * 1024, gt=0)
    """Bytes the jobs folder may hold, all jobs together; an upload that would cross it
    gets 507 insufficient_storage."""

    fit_max_jobs: int = Field(4, ge=1)
    """Fit jobs queued and running at once; one more gets 503 overloaded."""

    fit_min_seconds: float = Field(30.0, gt=0)
    """Least readable healthy audio (seconds, all clips together) a fit job takes; less
    gets 422 not_enough_audio naming the clips that could not be read."""

    ort_threads: int = Field(1, ge=1, le=64)
    """onnxruntime intra-op threads per model session."""

    cpu_workers: int = Field(2, ge=1, le=64)
    """Threads that decode, compute features and run models (the CPU-bound work)."""

    workers: int | None = Field(None, ge=1, le=64)
    """Server processes sharing the HTTP port (`python -m service`); unset: the CPUs the
    process may use (affinity and cgroup quota). Each worker applies the other limits on
    its own (threads, connections, requests in flight, buffered bytes)."""

    max_concurrency: int = Field(16, ge=1)
    """Scoring requests in flight at once; more get 503 overloaded with Retry-After."""

    batch_wait_ms: float = Field(2.0, ge=0, le=1000)
    """Micro-batching: the longest a single-clip request is held to share one encoder run
    while another run of that model is in flight (an idle model runs it at once).
    0 turns micro-batching off."""

    max_micro_batch: int = Field(32, ge=1)
    """Largest encoder batch the micro-batcher forms."""

    max_connections: int = Field(256, ge=1)
    """Open HTTP connections (`python -m service`, per worker); a connection beyond takes
    the place of the oldest idle one, or is closed at once when none is idle."""

    max_connections_per_client: int = Field(128, ge=1)
    """Open HTTP connections from one client address (per worker). A connection beyond
    this, or beyond `max_connections`, closes the oldest idle connection (of that client)
    to make room, or is closed at once when none is idle; beyond this cap, a connection in
    its first second that sent nothing is not idle yet (its request may be unread), and a
    newcomer finding only such ones waits that second first. Upgraded WebSockets are not
    counted (`listen_max_streams` bounds them). Behind a reverse proxy every connection
    comes from the proxy: raise it to `max_connections`."""

    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Request line and headers together; more gets 431 and the connection is closed."""

    header_timeout_s: float = Field(10.0, gt=0)
    """Seconds from the first byte of a request to the end of its headers; a slower
    client's connection is closed."""

    body_timeout_s: float = Field(60.0, gt=0)
    """Seconds to receive an upload's whole body once its headers are in; slower gets 408
    request_timeout (and the connection is closed a little later if still unread)."""

    keep_alive_timeout_s: int = Field(5, ge=1)
    """Seconds an idle keep-alive connection stays open."""

    drain_bytes: int = Field(1024 * 1024, ge=0)
    """An error answered before the body was read first reads (and drops) up to this many
    more bytes, for at most a second, so the client sees the answer, not a reset."""

    listen_max_streams: int = Field(128, ge=1)
    """Live-listening streams (`WS /v1/models/{name}/listen`) open at once, per worker; one
    more gets the error `overloaded` and close code 1013 (try again later)."""

    listen_max_seconds: float = Field(3600.0, gt=0)
    """Longest stream, in seconds of audio: at this length the server sends the summary
    (`ended`: `max_seconds`) and closes with 1008."""

    listen_idle_timeout_s: float = Field(30.0, gt=0)
    """Seconds a stream may go without a message from its client (the start message
    included), or take to accept one of the server's; then `request_timeout` and 1008."""

    listen_max_frame_bytes: int = Field(256 * 1024, ge=1024)
    """Largest message a stream's client may send; larger gets `payload_too_large` and
    close 1009 (twice this is refused by the WebSocket protocol itself, unread)."""

    listen_max_queued_bytes: int = Field(512 * 1024, ge=1024)
    """Audio bytes a stream may have received but not yet scored; beyond, the server stops
    reading it (TCP back-pressure) until the backlog is scored: a fast or stalled client
    cannot make it buffer more."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("workers", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ordered(self) -> Settings:
        if self.min_sample_rate > self.max_sample_rate:
            raise ValueError("AUSCULT_MIN_SAMPLE_RATE must not exceed AUSCULT_MAX_SAMPLE_RATE")
        if self.max_upload_bytes > self.max_batch_bytes:
            raise ValueError("AUSCULT_MAX_UPLOAD_BYTES must not exceed AUSCULT_MAX_BATCH_BYTES")
        if self.listen_max_frame_bytes > self.listen_max_queued_bytes:
            raise ValueError(
                "AUSCULT_LISTEN_MAX_FRAME_BYTES must not exceed AUSCULT_LISTEN_MAX_QUEUED_BYTES"
            )
        if self.max_batch_bytes > self.max_buffered_bytes:
            raise ValueError("AUSCULT_MAX_BATCH_BYTES must not exceed AUSCULT_MAX_BUFFERED_BYTES")
        return self

    @field_validator("artifacts_dir")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"artifacts_dir {value} is not a folder")
        return value

    @field_validator("jobs_dir", mode="before")
    @classmethod
    def _jobs_unset_if_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("jobs_dir")
    @classmethod
    def _jobs_usable(cls, value: Path | None) -> Path | None:
        if value is not None and value.exists() and not value.is_dir():
            raise ValueError(f"jobs_dir {value} is not a folder")
        return value


def describe_problems(error: ValidationError) -> str:
    """A settings error as one line naming the variables, e.g.
    `AUSCULT_MAX_CONCURRENCY='x': Input should be a valid integer, …`."""
    parts = []
    for e in error.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            var = "AUSCULT_" + "_".join(map(str, e["loc"])).upper()
            parts.append(f"{var}={e.get('input')!r}: {msg}")
        else:
            parts.append(msg)
    return "; ".join(parts)


def load_settings() -> Settings:
    """Settings from the environment; a bad value ends the process with one line on
    stderr and exit status 2 (a usage error), not a traceback."""
    try:
        return Settings()
    except ValidationError as e:
        print(f"auscult: bad setting: {describe_problems(e)}", file=sys.stderr)
        raise SystemExit(2) from None
