"""The ONNX contract shared by training (which writes it) and the service (which reads it).

One place defines the graph's input and output names and the JSON metadata carried in the
model's ``metadata_props``; see ``docs/design.md``, "The ONNX contract".

Shapes (B = batch, M = heads, C = classes, D = regression outputs):

- input ``input``: float32 ``[B, *feature_shape]``
- classification: ``head_m`` logits ``[B, C]``; ``mean_probs`` ``[B, C]``;
  ``disagreement_rate`` ``[B]``
- regression: ``head_m`` ``[B, 2, D]`` (index 0 the mean, 1 the variance); ``mean``
  ``[B, D]``; ``variance`` ``[B, D]`` (total predictive variance, data + model)
- both: ``total_uncertainty``, ``data_uncertainty``, ``model_uncertainty`` ``[B]``,
  ``head_disagreement`` ``[B, M]``. For D > 1 the regression uncertainties are summed over
  the output dimensions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from contract.drift import DriftReference
from contract.ood import OodCalibration

FORMAT_VERSION = 1
INPUT_NAME = "input"
UNCERTAINTY_COMPONENTS: tuple[str, ...] = ("total", "data", "model")
UNCERTAINTY_OUTPUTS: tuple[str, ...] = tuple(f"{c}_uncertainty" for c in UNCERTAINTY_COMPONENTS)

Task = Literal["classification", "regression"]
Kind = Literal["hydra", "ensemble", "kd"]

# Keys of ``metadata_props``. Every value is a JSON string.
META_PREFIX = "hydra."


class ContractError(ValueError):
    """A model file does not follow the contract; the message says what was expected."""


def head_names(num_heads: int) -> list[str]:
    return [f"head_{m}" for m in range(num_heads)]


def derived_output_names(task: Task) -> list[str]:
    if task == "classification":
        return ["mean_probs", *UNCERTAINTY_OUTPUTS, "head_disagreement", "disagreement_rate"]
    return ["mean", "variance", *UNCERTAINTY_OUTPUTS, "head_disagreement"]


def output_names(task: Task, num_heads: int) -> list[str]:
    """All graph outputs in their contract order: the heads first, then the derived ones."""
    return [*head_names(num_heads), *derived_output_names(task)]


@dataclass(frozen=True)
class ModelMetadata:
    """What a client or the service must know about a model file besides its graph."""

    task: Task
    num_heads: int
    feature_shape: tuple[int, ...]
    kind: Kind = "hydra"
    class_labels: tuple[str, ...] = ()
    output_dim: int = 1
    preprocessing: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    ood: OodCalibration | None = None
    drift: dict[str, DriftReference] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ContractError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.num_heads < 1:
            raise ContractError(f"num_heads must be >= 1, got {self.num_heads}")
        if not self.feature_shape or any(int(d) < 1 for d in self.feature_shape):
            raise ContractError(f"feature_shape must be positive dims, got {self.feature_shape}")
        if self.task == "classification" and len(self.class_labels) < 2:
            raise ContractError(
                f"a classifier needs at least 2 class labels, got {len(self.class_labels)}"
            )
        unknown = set(self.drift) - set(UNCERTAINTY_COMPONENTS)
        if unknown:
            raise ContractError(
                f"drift references must be for {UNCERTAINTY_COMPONENTS}, got {sorted(unknown)}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def output_names(self) -> list[str]:
        return output_names(self.task, self.num_heads)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` of the ONNX file: string keys, JSON string values."""
        values: dict[str, Any] = {
            "format_version": self.format_version,
            "task": self.task,
            "kind": self.kind,
            "num_heads": self.num_heads,
            "feature_shape": list(self.feature_shape),
            "class_labels": list(self.class_labels),
            "output_dim": self.output_dim,
            "preprocessing": self.preprocessing,
            "training": self.training,
            "ood": None if self.ood is None else self.ood.to_dict(),
            "drift": {name: ref.to_dict() for name, ref in self.drift.items()},
            "outputs": self.output_names,
        }
        return {META_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Parse ``session.get_modelmeta().custom_metadata_map``; raise ContractError if off."""
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if not key.startswith(META_PREFIX):
                continue
            try:
                values[key[len(META_PREFIX) :]] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ContractError(f"metadata {key!r} must be JSON, got {raw[:60]!r}") from exc
        missing = [k for k in ("format_version", "task", "num_heads", "feature_shape") if k not in values]
        if missing:
            raise ContractError(
                f"metadata is missing {', '.join(META_PREFIX + k for k in missing)}; "
                "was the file exported by hydra-train?"
            )
        if values["format_version"] != FORMAT_VERSION:
            raise ContractError(
                f"format_version {FORMAT_VERSION} expected, got {values['format_version']!r}"
            )
        try:
            ood = values.get("ood")
            return cls(
                task=values["task"],
                kind=values.get("kind", "hydra"),
                num_heads=int(values["num_heads"]),
                feature_shape=tuple(int(d) for d in values["feature_shape"]),
                class_labels=tuple(str(c) for c in values.get("class_labels", [])),
                output_dim=int(values.get("output_dim", 1)),
                preprocessing=dict(values.get("preprocessing") or {}),
                training=dict(values.get("training") or {}),
                ood=None if ood is None else OodCalibration.from_dict(ood),
                drift={
                    name: DriftReference.from_dict(ref)
                    for name, ref in (values.get("drift") or {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ContractError):
                raise
            raise ContractError(f"metadata does not parse: {exc}") from exc

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view for metadata endpoints (without the bulky calibration arrays)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("ood", "drift")}
        out["feature_shape"] = list(self.feature_shape)
        out["class_labels"] = list(self.class_labels)
        if self.ood is not None:
            out["ood"] = {
                "score": self.ood.score,
                "threshold": self.ood.threshold,
                "alpha": self.ood.alpha,
                "n_calibration": self.ood.n_calibration,
            }
        return out


def expected_output_shapes(meta: ModelMetadata) -> dict[str, list[int | str]]:
    """Output shapes with ``"batch"`` for the dynamic axis, for checking a loaded graph."""
    shapes: dict[str, list[int | str]] = {}
    m = meta.num_heads
    for name in head_names(m):
        if meta.task == "classification":
            shapes[name] = ["batch", meta.num_classes]
        else:
            shapes[name] = ["batch", 2, meta.output_dim]
    if meta.task == "classification":
        shapes["mean_probs"] = ["batch", meta.num_classes]
        shapes["disagreement_rate"] = ["batch"]
    else:
        shapes["mean"] = ["batch", meta.output_dim]
        shapes["variance"] = ["batch", meta.output_dim]
    for name in UNCERTAINTY_OUTPUTS:
        shapes[name] = ["batch"]
    shapes["head_disagreement"] = ["batch", m]
    return shapes
