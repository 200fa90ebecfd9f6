"""HTTP bodies (pydantic): what /docs shows and what requests are checked against.

The V2 infer request is a TypedDict, not a model: pydantic checks it as fast as it parses
(no object per tensor or requested output), and the codec reads it as the plain dicts it is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, with_config
from typing_extensions import NotRequired, TypedDict


class V1Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    # Strict: "false" (a string) or 0 is not a boolean, and must not be read as one.
    return_heads: StrictBool = Field(False, description="add each head's probabilities (mean/variance)")


class V1PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    instances: list[Any] = Field(
        ...,
        description="instances, each nested to the model's feature shape or a flat row-major "
        "list of prod(feature_shape) numbers (raw features: the graph normalises)",
        examples=[[[0.0] * 64]],
    )
    parameters: V1Parameters = Field(default_factory=V1Parameters)


V1_PREDICT_REQUEST: TypeAdapter[V1PredictRequest] = TypeAdapter(V1PredictRequest)


class OodInfo(BaseModel):
    is_ood: bool
    score: float
    threshold: float | None = Field(None, description="absent for a model without OOD calibration")
    p_value: float | None = Field(None, description="absent for a model without OOD calibration")


class V1Prediction(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str | None = None
    class_index: int | None = None
    probabilities: list[float] | None = None
    mean: list[float] | None = None
    variance: list[float] | None = None
    total_uncertainty: float
    data_uncertainty: float
    model_uncertainty: float
    head_disagreement: list[float]
    disagreement_rate: float | None = None
    ood: OodInfo
    head_probabilities: list[list[float]] | None = None


class V1PredictResponse(BaseModel):
    model_name: str
    model_version: str
    predictions: list[V1Prediction]


@with_config(ConfigDict(extra="allow"))
class V2Tensor(TypedDict):
    name: str
    shape: list[StrictInt]  # JSON integers only: not true, "1" or 1.0
    datatype: str
    parameters: NotRequired[dict[str, Any] | None]
    data: NotRequired[Any]


@with_config(ConfigDict(extra="allow"))
class V2RequestedOutput(TypedDict):
    name: str
    parameters: NotRequired[dict[str, Any] | None]


@with_config(ConfigDict(extra="allow"))
class V2InferRequest(TypedDict):
    id: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]
    inputs: list[V2Tensor]
    outputs: NotRequired[list[V2RequestedOutput] | None]


V2_INFER_REQUEST: TypeAdapter[V2InferRequest] = TypeAdapter(V2InferRequest)


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Error(BaseModel):
    error: str


class V1Error(BaseModel):
    error: str
    code: str
