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

The service adds three outputs of its own to every answer (``contract.ood.ADDED_OUTPUTS``,
computed by ``contract.ood.add_outputs``): ``predicted_class`` (int64 ``[B]``, classification
only), ``is_ood`` (bool ``[B]``) and ``ood_p_value`` (float64 ``[B]``, with an OOD calibration
only). ``ModelMetadata.tensor_outputs`` lists what the tensor protocols answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

from contract.checks import ContractError, finite_json, integer, listed, show
from contract.drift import DriftReference
from contract.ood import OodCalibration

FORMAT_VERSION = 1
INPUT_NAME = "input"
UNCERTAINTY_COMPONENTS: tuple[str, ...] = ("total", "data", "model")
UNCERTAINTY_OUTPUTS: tuple[str, ...] = tuple(f"{c}_uncertainty" for c in UNCERTAINTY_COMPONENTS)

Task = Literal["classification", "regression"]
Kind = Literal["hydra", "ensemble", "kd"]
TASKS: tuple[str, ...] = ("classification", "regression")
KINDS: tuple[str, ...] = ("hydra", "ensemble", "kd")

# Keys of ``metadata_props``. Every value is a JSON string.
META_PREFIX = "hydra."


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
        """Every field checked, for a file being read and for metadata training is about to
        write alike: a value out of range, not finite or inconsistent with the rest is a
        ContractError naming its ``hydra.*`` key."""
        version = self.format_version
        number_type = isinstance(version, (int, float)) and not isinstance(version, bool)
        if not number_type or version != FORMAT_VERSION:
            raise ContractError(
                f"{META_PREFIX}format_version is {show(version)}, expected {FORMAT_VERSION}"
            )
        if self.task not in TASKS:
            raise ContractError(
                f"{META_PREFIX}task is {show(self.task)}, expected 'classification' or 'regression'"
            )
        if self.kind not in KINDS:
            raise ContractError(
                f"{META_PREFIX}kind is {show(self.kind)}, expected one of {', '.join(KINDS)}"
            )
        integer(self.num_heads, f"{META_PREFIX}num_heads", 1)
        if not self.feature_shape:
            raise ContractError(f"{META_PREFIX}feature_shape is empty, expected positive integers")
        for i, d in enumerate(self.feature_shape):
            integer(d, f"{META_PREFIX}feature_shape[{i}]", 1)
        for i, label in enumerate(self.class_labels):
            if not isinstance(label, str):
                raise ContractError(
                    f"{META_PREFIX}class_labels[{i}] is {show(label)}, expected a string"
                )
        output_dim = integer(self.output_dim, f"{META_PREFIX}output_dim", 1)
        if self.task == "classification":
            if len(self.class_labels) < 2:
                raise ContractError(
                    f"{META_PREFIX}class_labels: a classifier needs at least 2 class labels, "
                    f"got {len(self.class_labels)}"
                )
            if len(set(self.class_labels)) != len(self.class_labels):
                twice = sorted({c for c in self.class_labels if self.class_labels.count(c) > 1})
                raise ContractError(
                    f"{META_PREFIX}class_labels are not distinct: "
                    f"{', '.join(map(repr, twice[:5]))} "
                    "more than once (answers would name two classes alike)"
                )
            if output_dim != 1:
                raise ContractError(
                    f"{META_PREFIX}output_dim is {output_dim}, expected 1 for a classifier"
                )
        elif self.class_labels:
            raise ContractError(
                f"{META_PREFIX}class_labels: a regressor has none, got {len(self.class_labels)}"
            )
        for key in ("preprocessing", "training"):
            value = getattr(self, key)
            if not isinstance(value, dict):
                raise ContractError(f"{META_PREFIX}{key} is {show(value)}, expected a JSON object")
            finite_json(value, f"{META_PREFIX}{key}")
        if self.ood is not None and not isinstance(self.ood, OodCalibration):
            raise ContractError(
                f"{META_PREFIX}ood is {show(self.ood)}, expected an OOD calibration"
            )
        unknown = set(self.drift) - set(UNCERTAINTY_COMPONENTS)
        if unknown:
            raise ContractError(
                f"{META_PREFIX}drift: references must be for {', '.join(UNCERTAINTY_COMPONENTS)}, "
                f"got {', '.join(map(repr, sorted(unknown)))}"
            )
        for component, reference in self.drift.items():
            if not isinstance(reference, DriftReference):
                raise ContractError(
                    f"{META_PREFIX}drift.{component} is {show(reference)}, "
                    "expected a drift reference"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def output_names(self) -> list[str]:
        return output_names(self.task, self.num_heads)

    @cached_property
    def tensor_outputs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Every output a tensor protocol (Open Inference Protocol over HTTP or gRPC) answers,
        by name: its datatype and shape, -1 for the batch. The graph's outputs in contract
        order, then ``predicted_class`` (classification) and ``is_ood``. ``ood_p_value`` is
        part of the V1 answer's ``ood`` object only. Made once per model: never mutate it."""
        specs = {name: ("FP32", tuple(-1 if d == "batch" else int(d) for d in shape))
                 for name, shape in expected_output_shapes(self).items()}
        ordered = {name: specs[name] for name in self.output_names}
        if self.task == "classification":
            ordered["predicted_class"] = ("INT64", (-1,))
        ordered["is_ood"] = ("BOOL", (-1,))
        return ordered

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
        """Parse ``session.get_modelmeta().custom_metadata_map``; raise ContractError naming
        the ``hydra.*`` key (and the field inside it) of the first value that is not what the
        contract says: of the wrong JSON type, not finite, out of range, or inconsistent with
        the rest (``hydra.outputs`` must be the outputs the task and head count make)."""
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
        try:
            return cls._parse(values)
        except ContractError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # a shape no check foresaw
            raise ContractError(f"metadata does not parse: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _parse(cls, values: dict[str, Any]) -> ModelMetadata:
        p = META_PREFIX
        num_heads = integer(values["num_heads"], f"{p}num_heads", 1)
        shape = listed(values["feature_shape"], f"{p}feature_shape")
        labels = listed(values.get("class_labels", []), f"{p}class_labels")
        for i, label in enumerate(labels):
            integral = isinstance(label, int) and not isinstance(label, bool)
            if not isinstance(label, str) and not integral:
                raise ContractError(f"{p}class_labels[{i}] is {show(label)}, expected a string")
        drift = values.get("drift") or {}
        if not isinstance(drift, dict):
            raise ContractError(f"{p}drift is {show(drift)}, expected a JSON object")
        ood = values.get("ood")
        meta = cls(
            format_version=values["format_version"],
            task=values["task"],
            kind=values.get("kind", "hydra"),
            num_heads=num_heads,
            feature_shape=tuple(
                integer(d, f"{p}feature_shape[{i}]", 1) for i, d in enumerate(shape)
            ),
            class_labels=tuple(str(c) for c in labels),
            output_dim=integer(values.get("output_dim", 1), f"{p}output_dim", 1),
            preprocessing=values.get("preprocessing") or {},
            training=values.get("training") or {},
            ood=None if ood is None else OodCalibration.from_dict(ood),
            drift={
                str(name): DriftReference.from_dict(ref, f"{p}drift.{name}")
                for name, ref in drift.items()
            },
        )
        if "outputs" in values:
            outputs = listed(values["outputs"], f"{p}outputs")
            # The length first: a huge num_heads must not build a huge list.
            expected = len(derived_output_names(meta.task)) + meta.num_heads
            if len(outputs) != expected or outputs != meta.output_names:
                raise ContractError(
                    f"{p}outputs lists {len(outputs)} outputs, expected the {expected} the contract "
                    f"gives a {meta.task} with {p}num_heads {meta.num_heads}: head_0 .. "
                    f"head_{meta.num_heads - 1}, {', '.join(derived_output_names(meta.task))}"
                )
        return meta

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

