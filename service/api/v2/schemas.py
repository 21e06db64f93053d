"""Response models of the v2 routes (for the OpenAPI document), named as in the protocol."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class V2Error(BaseModel):
    """Every v2 error has this body (the protocol's), with a 4xx or 503 status."""

    error: str = Field(examples=["no model named 'pump'; GET /v1/models lists them"])


class ServerMetadata(BaseModel):
    name: str = Field(examples=["auscult"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data"]])


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str = Field(examples=["audio"])
    datatype: Literal["BYTES", "FP32", "FP64"] = Field(examples=["BYTES"])
    shape: list[int] = Field(examples=[[-1]])
    description: str | None = None


class ModelMetadata(BaseModel):
    name: str = Field(examples=["gearbox"])
    versions: list[str] = Field(examples=[["20261130-c8eda3b5"]])
    platform: str = Field(examples=["auscult_anomaly"])
    inputs: list[TensorMetadata] = Field(
        description="alternatives: send exactly one of them per request"
    )
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ResponseTensor(BaseModel):
    name: str = Field(examples=["score"])
    datatype: Literal["BYTES", "FP32", "FP64"]
    shape: list[int] = Field(examples=[[1]])
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size when the tensor follows the JSON as binary data"
    )
    data: list[Any] | None = Field(None, examples=[[1.93]])


class InferenceResponse(BaseModel):
    model_config = {"protected_namespaces": ()}

    model_name: str = Field(examples=["gearbox"])
    model_version: str | None = Field(None, examples=["20261130-c8eda3b5"])
    id: str | None = None
    outputs: list[ResponseTensor]
