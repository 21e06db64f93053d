"""Response models: what the API returns, with examples for the docs page."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Level = Literal["normal", "needs_maintenance", "severe"]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_audio"])
    message: str = Field(examples=["could not decode audio: Format not recognised."])


class ErrorBody(BaseModel):
    """Every error response has this body."""

    error: ErrorDetail


class InputInfo(BaseModel):
    kind: Literal["audio", "image"]
    format: str = Field(examples=["wav"])
    duration_s: float | None = Field(None, examples=[10.0])
    sample_rate: int | None = Field(None, examples=[16000])
    channels: int | None = Field(None, examples=[1])
    bandwidth_hz: float | None = Field(
        None,
        description="audio: the highest frequency the sound carries at the model's sample "
        "rate (a lossy codec's low-pass at a low bitrate, or a low recording rate, ends it "
        "early); none for a picture or silence",
        examples=[8000.0],
    )
    bitrate_kbps: float | None = Field(
        None,
        description="audio: the upload's size over its duration, in kbit/s (a lossy upload "
        "is judged by the thresholds measured at its codec's nearest bitrate)",
        examples=[256.0],
    )


class InputWarningDetail(BaseModel):
    """Something about the input that limits what its verdict can say."""

    code: str = Field(
        description="low_bandwidth: the input carries no sound in the model's top mel "
        "bands (input.bandwidth_hz ends below the centre of the highest one); its level is "
        "then at most needs_maintenance, never severe, because the missing bands alone can "
        "put a healthy clip there; low_bitrate: a lossy upload judged by thresholds measured "
        "at its codec and bitrate, which the detector was not fitted on, so a fault may "
        "read normal (the level is kept)",
        examples=["low_bandwidth"],
    )
    message: str = Field(
        examples=[
            "the input carries sound up to ~5.9 kHz; the model was fitted on sound up to "
            "6.4 kHz, so its top bands are empty here: the level is at most "
            "needs_maintenance (send a higher bitrate or sample rate to judge it)"
        ]
    )


class ThresholdValues(BaseModel):
    needs_maintenance: float = Field(examples=[1.05])
    severe: float = Field(examples=[2.11])


class WindowScore(BaseModel):
    """The score of one window of the model's length, in the units of the clip's `score`
    (normalised for the clip's operating condition)."""

    start_s: float = Field(examples=[8.0])
    end_s: float = Field(examples=[10.0])
    score: float = Field(examples=[1.12])


class WorstStretch(BaseModel):
    """The stretch of consecutive windows that decided the level (the worst one)."""

    start_s: float = Field(examples=[4.0])
    end_s: float = Field(examples=[6.0])
    score: float = Field(description="mean of its windows' scores", examples=[2.31])


class ConditionUsed(BaseModel):
    """The operating condition the clip was judged under."""

    name: str = Field(examples=["section_00_source"])
    chosen: Literal["request", "nearest", "only"] = Field(
        description="request: named in the request; nearest: the known condition whose "
        "healthy sound the clip is nearest to; only: the model knows one",
        examples=["nearest"],
    )


class ScoreResult(BaseModel):
    """One clip's anomaly score: larger is further from normal. The level compares the
    score with the thresholds: a healthy clip from a recording the model never saw reaches
    `needs_maintenance` at the model's stated false-alarm rate (GET /v1/models/{name})."""

    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(examples=["gearbox"])
    model_version: str = Field(examples=["20261121-1a2b3c4d"])
    score: float = Field(examples=[1.93])
    level: Level = Field(examples=["normal"])
    thresholds: ThresholdValues
    input: InputInfo
    filename: str | None = Field(None, examples=["pump-2026-11-21.wav"])
    windows: list[WindowScore] | None = Field(
        None,
        description="every window of the model's length in the clip with its score, in "
        "time order (audio only; none for a spectrogram picture)",
    )
    worst: WorstStretch | None = Field(
        None, description="the worst stretch of windows, which decides the level (audio only)"
    )
    condition: ConditionUsed | None = None
    warnings: list[InputWarningDetail] = Field(
        default_factory=list,
        description="what limits this verdict (empty when nothing does): low_bandwidth (a "
        "low-bitrate or low-rate upload missing the model's top bands; its level is then at "
        "most needs_maintenance), low_bitrate (judged at a codec and bitrate the detector was "
        "not fitted on; a fault may read normal)",
    )


class FileError(BaseModel):
    """A batch entry whose file could not be scored; the others are unaffected."""

    filename: str | None = Field(None, examples=["broken.wav"])
    error: ErrorDetail


class BatchScoreResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    results: list[ScoreResult | FileError] = Field(description="one entry per file, in order")


class ClassifyResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(examples=["digits"])
    model_version: str = Field(examples=["20261121-5e6f7a8b"])
    label: str = Field(examples=["7"])
    confidence: float = Field(examples=[0.98])
    probabilities: dict[str, float] = Field(examples=[{"7": 0.98, "1": 0.02}])
    input: InputInfo
    filename: str | None = None


class BatchClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    model_version: str
    results: list[ClassifyResult | FileError]


class ModelInfo(BaseModel):
    name: str = Field(examples=["gearbox"])
    kind: Literal["anomaly", "classifier", "generator"] | None = Field(None, examples=["anomaly"])
    status: Literal["ready", "failed", "loading"] = Field(examples=["ready"])
    reason: str | None = Field(None, description="why a bundle failed to load", examples=[None])
    version: str | None = Field(None, examples=["20261121-1a2b3c4d"])
    created_at: str | None = None
    reload_error: str | None = Field(
        None,
        description="why the last reload of this model failed; the version shown keeps serving",
        examples=[None],
    )
    labels: list[str] | None = Field(
        None, description="classes, in output order (classifiers and generators)", examples=[None]
    )


class ModelList(BaseModel):
    default_model: str | None = None
    models: list[ModelInfo]


class ModelDetail(ModelInfo):
    features: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    thresholds: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = Field(
        None,
        description="anomaly models: the false-alarm and severe rates the thresholds stand "
        "for, how they were estimated (recordings, groups, warnings), the known conditions",
    )
    generator: dict[str, Any] | None = None
    scoring: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    versions: dict[str, str] | None = None


class ReloadResult(BaseModel):
    """What a reload did to one model."""

    model: str = Field(examples=["gearbox"])
    action: Literal["loaded", "failed", "removed"] = Field(
        description="loaded: the new version serves; failed: the previous version (if any) "
        "keeps serving; removed: the folder is gone and the model unloaded",
        examples=["loaded"],
    )
    version: str | None = Field(
        None, description="the version serving now", examples=["20261130-c8eda3b5"]
    )
    previous_version: str | None = Field(None, examples=["20261121-1a2b3c4d"])
    reason: str | None = Field(None, description="why the new version failed", examples=[None])


class EnrolledCondition(BaseModel):
    name: str = Field(examples=["rpm_1800"])
    clips: int = Field(examples=[12])
    loc: float = Field(description="median healthy window score (raw units)", examples=[1.02])
    scale: float = Field(description="spread of healthy window scores", examples=[0.08])


class EnrolResult(BaseModel):
    """A condition enrolled: the new version serves."""

    model: str = Field(examples=["gearbox"])
    condition: EnrolledCondition
    version: str = Field(examples=["20261207-9a8b7c6d"])
    previous_version: str | None = Field(None, examples=["20261201-3b44aedb"])
    conditions: list[str] = Field(
        description="every condition the model knows now",
        examples=[["section_00_source", "section_00_target", "rpm_1800"]],
    )


class ReloadResponse(BaseModel):
    """Every model the scan changed (or tried to); unchanged ones are not listed."""

    results: list[ReloadResult]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    models_ready: int = Field(examples=[2])


class GenerateRequest(BaseModel):
    """What to generate: `count` clips of class `label`; the same seed gives the same clips."""

    label: StrictStr | StrictInt = Field(examples=["7"], description="one of the model's labels")
    count: int = Field(
        1,
        ge=1,
        strict=True,
        examples=[1],
        description="clips to make, at most AUSCULT_MAX_GENERATE_COUNT",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        strict=True,
        examples=[0],
        description="random seed (noise and phases); none: a random one, returned in the "
        "X-Auscult-Seed header",
    )


class ListenStart(BaseModel):
    """The first message of `WS /v1/models/{name}/listen` (JSON text): how the binary
    frames that follow encode the audio."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["start"]
    sample_rate: StrictInt = Field(examples=[16000], description="samples per second")
    channels: StrictInt = Field(1, ge=1, le=32, description="interleaved channels, downmixed")
    format: Literal["pcm_s16le", "f32le"] = Field(
        "pcm_s16le", description="16-bit signed or 32-bit float samples, little-endian"
    )
    condition: StrictStr | None = Field(
        None, description="the operating condition, one of the model's; none: the nearest"
    )
    api_key: StrictStr | None = Field(
        None,
        description="for browsers, which cannot set headers on a WebSocket: one of "
        "AUSCULT_API_KEYS (never logged)",
        repr=False,
    )


class FitProgress(BaseModel):
    epoch: int | None = Field(None, description="autoencoder epochs done")
    epochs: int | None = Field(None, description="epochs the preset runs at most")
    percent: float = Field(0.0, description="the whole job, 0-100")


class FitModel(BaseModel):
    name: str
    version: str | None = None
    served: bool = Field(False, description="whether this service answers with that version")


class SkippedClip(BaseModel):
    filename: str
    code: str
    reason: str


class FitTrainer(BaseModel):
    seen: bool = Field(description="a trainer wrote its heartbeat within the last 30 s")
    last_seen_s: float | None = Field(None, description="seconds since any trainer was seen")
    message: str | None = None


class FitJob(BaseModel):
    id: str
    url: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None = None
    progress: FitProgress
    name: str
    preset: Literal["quick", "standard"]
    false_alarm_rate: float | None = None
    replace: bool = False
    clips: int
    audio_seconds: float
    skipped: list[SkippedClip] = Field(default_factory=list)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    log: list[str] = Field(default_factory=list, description="the last lines of its log")
    model: FitModel | None = Field(None, description="on success: the bundle written")
    error: str | None = Field(None, description="on failure: why")
    cancel_requested: bool = False
    trainer: FitTrainer
    report: dict[str, Any] | None = Field(
        None, description="on success: score distribution, thresholds and their rates"
    )


class FitAccepted(BaseModel):
    id: str
    state: Literal["queued"]
    url: str


class FitLimits(BaseModel):
    min_seconds: float = Field(description="least readable healthy audio a job takes")
    recommended_seconds: float = Field(description="what a useful model wants")
    max_clips: int
    max_job_bytes: int


class FitList(BaseModel):
    fits: list[FitJob]
    limits: FitLimits
