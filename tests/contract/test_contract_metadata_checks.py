"""Every value a model file carries is checked where the contract parses it: finite, in range
and consistent with the rest, or a ContractError naming the ``hydra.*`` key and the field.
Training builds its metadata through the same constructors, so it cannot write what the
service would refuse."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from contract.drift import DriftReference
from contract.layout import MAX_VERSION, version_folders, version_of, versions
from contract.model import ContractError, ModelMetadata
from contract.ood import MAX_STORED_SCORES, OodCalibration

COMPONENTS = ("total", "data", "model")


def scores(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 0.01, size=n)


def classifier_meta(n: int = 400) -> ModelMetadata:
    s = scores(n)
    return ModelMetadata(
        task="classification", num_heads=5, feature_shape=(64,),
        class_labels=tuple(str(c) for c in range(10)),
        preprocessing={"input": "raw pixels"},
        training={"test": {"accuracy": 0.98, "nll": 0.05}, "members": 5},
        ood=OodCalibration.from_scores(s, alpha=0.05),
        drift={c: DriftReference.from_scores(scores(n, i + 1)) for i, c in enumerate(COMPONENTS)},
    )


def regressor_meta() -> ModelMetadata:
    s = scores()
    return ModelMetadata(
        task="regression", num_heads=4, feature_shape=(10,), output_dim=2,
        ood=OodCalibration.from_scores(s, alpha=0.1),
        drift={c: DriftReference.from_scores(s) for c in COMPONENTS},
    )


def edited(meta: ModelMetadata, key: str, edit: Callable[[Any], Any]) -> dict[str, str]:
    """The props of ``meta`` with the JSON value of ``hydra.<key>`` edited (NaN and Infinity
    written as JSON tokens, as Python's json module and other tools write them)."""
    props = meta.to_props()
    value = json.loads(props[f"hydra.{key}"])
    props[f"hydra.{key}"] = json.dumps(edit(value))
    return props


def setting(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda value: {**value, **fields}


def drift_model(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda value: {**value, "model": {**value["model"], **fields}}


def with_item(i: int, item: Any) -> Callable[[list[Any]], list[Any]]:
    def edit(values: list[Any]) -> list[Any]:
        values = list(values)
        values[i] = item
        return values
    return edit


def fractions_with_nan(value: dict[str, Any]) -> dict[str, Any]:
    """The measured case: one fraction NaN, so the sum is NaN and `abs(nan - 1) > 1e-6` is
    false: the old sum check let it pass."""
    expected = list(value["model"]["expected"])
    expected[2] = math.nan
    return {**value, "model": {**value["model"], "expected": expected}}


def negative_fraction(value: dict[str, Any]) -> dict[str, Any]:
    expected = list(value["model"]["expected"])
    expected[0], expected[1] = -0.1, expected[1] + expected[0] + 0.1  # still sums to 1
    return {**value, "model": {**value["model"], "expected": expected}}


def unsorted(value: dict[str, Any]) -> dict[str, Any]:
    s = list(value["sorted_scores"])
    s[3], s[4] = s[4] + 1.0, s[3]
    return {**value, "sorted_scores": s}


OOD_CASES = [
    ("threshold NaN", setting(threshold=math.nan), r"^hydra\.ood: threshold is nan, expected a finite number$"),
    ("threshold Infinity", setting(threshold=math.inf), r"^hydra\.ood: threshold is inf, expected a finite number$"),
    ("threshold 1e9", setting(threshold=1e9),
     r"^hydra\.ood: threshold is 1000000000\.0, expected 0\.0\d+, the \(1 - alpha\) quantile \(method 'higher'\) "
     r"of its 400 sorted_scores at alpha 0\.05$"),
    ("threshold inside the scores but not their quantile", lambda v: {**v, "threshold": v["sorted_scores"][10]},
     r"^hydra\.ood: threshold is .*, expected .*the \(1 - alpha\) quantile"),
    ("threshold a string", setting(threshold="0.03"), r"^hydra\.ood: threshold is '0\.03', expected a finite number$"),
    ("alpha NaN", setting(alpha=math.nan), r"^hydra\.ood: alpha is nan, expected a finite number$"),
    ("alpha 1.5", setting(alpha=1.5), r"^hydra\.ood: alpha is 1\.5, expected a false-positive rate in \(0, 1\)$"),
    ("alpha 0", setting(alpha=0), r"^hydra\.ood: alpha is 0\.0, expected a false-positive rate in \(0, 1\)$"),
    ("alpha true", setting(alpha=True), r"^hydra\.ood: alpha is true, expected a finite number$"),
    ("a NaN score", lambda v: {**v, "sorted_scores": with_item(3, math.nan)(v["sorted_scores"])},
     r"^hydra\.ood: sorted_scores\[3\] is nan, expected a finite number$"),
    ("an infinite score", lambda v: {**v, "sorted_scores": with_item(399, math.inf)(v["sorted_scores"])},
     r"^hydra\.ood: sorted_scores\[399\] is inf, expected a finite number$"),
    ("a null score", lambda v: {**v, "sorted_scores": with_item(0, None)(v["sorted_scores"])},
     r"^hydra\.ood: sorted_scores\[0\] is null, expected a finite number$"),
    ("scores not sorted", unsorted, r"^hydra\.ood: sorted_scores are not sorted ascending \(sorted_scores\[4\] = "),
    ("no scores", setting(sorted_scores=[]), r"^hydra\.ood: sorted_scores is empty"),
    ("more scores than n_calibration", setting(n_calibration=10),
     r"^hydra\.ood: 400 sorted_scores for n_calibration 10, expected at most 10"),
    ("n_calibration 0", setting(n_calibration=0), r"^hydra\.ood: n_calibration is 0, expected an integer >= 1$"),
    ("n_calibration 400.5", setting(n_calibration=400.5),
     r"^hydra\.ood: n_calibration is 400\.5, expected an integer >= 1$"),
    ("unknown score", setting(score="entropy"), r"^hydra\.ood: score is 'entropy', expected one of model_uncertainty"),
    ("threshold missing", lambda v: {k: x for k, x in v.items() if k != "threshold"},
     r"^hydra\.ood: threshold missing$"),
    ("not an object", lambda v: [v], r"^hydra\.ood is a list of 1, expected a JSON object$"),
]


@pytest.mark.parametrize(("case", "edit", "message"), OOD_CASES, ids=[c[0] for c in OOD_CASES])
def test_ood_calibration_values_are_checked(case: str, edit: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        ModelMetadata.from_props(edited(classifier_meta(), "ood", edit))


DRIFT_CASES = [
    ("a NaN fraction", fractions_with_nan, r"^hydra\.drift\.model: expected\[2\] is nan, expected a finite number$"),
    ("a NaN edge", lambda v: {**v, "model": {**v["model"], "edges": with_item(1, math.nan)(v["model"]["edges"])}},
     r"^hydra\.drift\.model: edges\[1\] is nan, expected a finite number$"),
    ("an infinite edge", lambda v: {**v, "data": {**v["data"], "edges": with_item(0, -math.inf)(v["data"]["edges"])}},
     r"^hydra\.drift\.data: edges\[0\] is -inf, expected a finite number$"),
    ("edges not increasing", lambda v: {**v, "model": {**v["model"], "edges": with_item(2, v["model"]["edges"][1])(v["model"]["edges"])}},
     r"^hydra\.drift\.model: edges are not strictly increasing \(edges\[2\] = "),
    ("a negative fraction", negative_fraction, r"^hydra\.drift\.model: expected\[0\] is -0\.1, expected a fraction >= 0$"),
    ("fractions summing to 0.9", lambda v: {**v, "model": {**v["model"], "expected": [0.09] * 10}},
     r"^hydra\.drift\.model: expected fractions sum to 0\.(9|89)\d*, expected 1$"),
    ("one fraction too few", lambda v: {**v, "model": {**v["model"], "expected": [0.125] * 8}},
     r"^hydra\.drift\.model: 8 expected fractions for 9 edges, expected 10 \(one per bin\)$"),
    ("one bin", drift_model(edges=[], expected=[1.0]),
     r"^hydra\.drift\.model: edges is empty, expected at least 1 interior bin edge \(2 bins\)$"),
    ("a string fraction", lambda v: {**v, "model": {**v["model"], "expected": with_item(0, "0.1")(v["model"]["expected"])}},
     r"^hydra\.drift\.model: expected\[0\] is '0\.1', expected a finite number$"),
    ("edges missing", lambda v: {**v, "model": {"expected": v["model"]["expected"]}},
     r"^hydra\.drift\.model: edges missing$"),
    ("unknown component", lambda v: {**v, "epistemic": v["model"]},
     r"^hydra\.drift: references must be for total, data, model, got 'epistemic'$"),
]


@pytest.mark.parametrize(("case", "edit", "message"), DRIFT_CASES, ids=[c[0] for c in DRIFT_CASES])
def test_drift_reference_values_are_checked(case: str, edit: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        ModelMetadata.from_props(edited(classifier_meta(), "drift", edit))


MODEL_CASES = [
    ("feature_shape", lambda v: [64, 0], r"^hydra\.feature_shape\[1\] is 0, expected an integer >= 1$"),
    ("feature_shape", lambda v: [math.inf], r"^hydra\.feature_shape\[0\] is inf, expected an integer >= 1$"),
    ("feature_shape", lambda v: [], r"^hydra\.feature_shape is empty, expected positive integers$"),
    ("feature_shape", lambda v: 64, r"^hydra\.feature_shape is 64, expected a list$"),
    ("num_heads", lambda v: 0, r"^hydra\.num_heads is 0, expected an integer >= 1$"),
    ("num_heads", lambda v: 2.5, r"^hydra\.num_heads is 2\.5, expected an integer >= 1$"),
    ("num_heads", lambda v: True, r"^hydra\.num_heads is true, expected an integer >= 1$"),
    ("class_labels", with_item(3, "2"), r"^hydra\.class_labels are not distinct: '2' more than once"),
    ("class_labels", with_item(1, None), r"^hydra\.class_labels\[1\] is null, expected a string$"),
    ("class_labels", lambda v: ["only"], r"^hydra\.class_labels: a classifier needs at least 2 class labels, got 1$"),
    ("output_dim", lambda v: 3, r"^hydra\.output_dim is 3, expected 1 for a classifier$"),
    ("output_dim", lambda v: math.nan, r"^hydra\.output_dim is nan, expected an integer >= 1$"),
    ("kind", lambda v: "student", r"^hydra\.kind is 'student', expected one of hydra, ensemble, kd$"),
    ("task", lambda v: "clustering", r"^hydra\.task is 'clustering', expected 'classification' or 'regression'$"),
    ("format_version", lambda v: True, r"^hydra\.format_version is true, expected 1$"),
    ("outputs", lambda v: v[:-1], r"^hydra\.outputs lists 10 outputs, expected the 11 the contract gives a "
                                  r"classification with hydra\.num_heads 5"),
    ("outputs", lambda v: [*v[:5], "head_5", *v[5:]], r"^hydra\.outputs lists 12 outputs"),
    ("training", lambda v: {**v, "test": {**v["test"], "nll": math.nan}},
     r"^hydra\.training\.test\.nll is nan, expected a finite number$"),
    ("preprocessing", lambda v: {"scale": [1.0, math.inf]}, r"^hydra\.preprocessing\.scale\[1\] is inf, expected a finite number$"),
    ("preprocessing", lambda v: ["raw"], r"^hydra\.preprocessing is a list of 1, expected a JSON object$"),
]


@pytest.mark.parametrize(("key", "edit", "message"), MODEL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(MODEL_CASES)])
def test_model_values_are_checked(key: str, edit: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        ModelMetadata.from_props(edited(classifier_meta(), key, edit))


def test_a_regressor_has_no_class_labels() -> None:
    with pytest.raises(ContractError, match=r"^hydra\.class_labels: a regressor has none, got 2$"):
        ModelMetadata.from_props(edited(regressor_meta(), "class_labels", lambda v: ["a", "b"]))


def test_what_training_writes_round_trips() -> None:
    """Metadata built the way training builds it passes every check and parses back equal,
    including a calibration of more scores than are stored (quantiles) and a drift reference
    of tied scores whose last bin expects nothing."""
    tied = DriftReference.from_scores(np.zeros(50))
    assert tied.expected[-1] == 0.0
    for meta in (classifier_meta(), regressor_meta(), classifier_meta(n=5000),
                 ModelMetadata(**{**classifier_meta().__dict__, "drift": {"model": tied}})):
        assert ModelMetadata.from_props(meta.to_props()) == meta
    assert len(classifier_meta(n=5000).ood.sorted_scores) == MAX_STORED_SCORES  # type: ignore[union-attr]


def test_other_writers_integers_are_read() -> None:
    """An integral float where an integer is meant and integer class labels (what a JSON
    writer of another language may give) are read as their values."""
    meta = classifier_meta()
    props = edited(meta, "ood", setting(n_calibration=400.0))
    props["hydra.class_labels"] = json.dumps(list(range(10)))
    props["hydra.num_heads"] = "5.0"
    assert ModelMetadata.from_props(props) == meta


def test_stored_quantiles_bound_the_threshold() -> None:
    """With n > 2001 scores the file stores quantiles: the threshold must lie between the
    stored quantiles around its rank, not merely inside the scores."""
    meta = classifier_meta(n=5000)
    ood = meta.ood
    assert ood is not None
    stored = np.asarray(ood.sorted_scores)
    assert stored[0] < ood.threshold < stored[-1]
    with pytest.raises(ContractError, match=r"^hydra\.ood: threshold is .*, expected a value in \[.*\]: the stored "
                                            r"quantiles around the \(1 - alpha\) quantile of the 5000 calibration scores"):
        ModelMetadata.from_props(edited(meta, "ood", setting(threshold=float(np.median(stored)))))
    with pytest.raises(ContractError, match=r"^hydra\.ood: threshold is "):
        ModelMetadata.from_props(edited(meta, "ood", setting(threshold=float(stored[-1]))))


def test_threshold_tolerance_is_float_rounding() -> None:
    """A threshold written in float32 by another tool is within the tolerance; one a thousandth
    off is not."""
    meta = classifier_meta()
    t = meta.ood.threshold  # type: ignore[union-attr]
    assert ModelMetadata.from_props(edited(meta, "ood", setting(threshold=float(np.float32(t))))).ood is not None
    with pytest.raises(ContractError, match=r"^hydra\.ood: threshold is "):
        ModelMetadata.from_props(edited(meta, "ood", setting(threshold=t * 1.001)))


CONSTRUCTED = [
    (lambda: OodCalibration("model_uncertainty", math.nan, 0.05, 3, (0.1, 0.2, 0.3)),
     r"^hydra\.ood: threshold is nan, expected a finite number$"),
    (lambda: OodCalibration("model_uncertainty", 0.1, 0.05, 3, (0.1, 0.2, 0.3)),
     r"^hydra\.ood: threshold is 0\.1, expected 0\.3, the \(1 - alpha\) quantile"),
    (lambda: OodCalibration("model_uncertainty", 0.3, 0.05, 3, (0.1, math.nan, 0.3)),
     r"^hydra\.ood: sorted_scores\[1\] is nan, expected a finite number$"),
    (lambda: OodCalibration("model_uncertainty", 0.3, 0.05, 2, (0.1, 0.2, 0.3)),
     r"^hydra\.ood: 3 sorted_scores for n_calibration 2"),
    (lambda: OodCalibration("model_uncertainty", 0.3, 0.05, 0, (0.1, 0.2, 0.3)),
     r"^hydra\.ood: n_calibration is 0, expected an integer >= 1$"),
    (lambda: DriftReference((0.1,), (math.nan, 1.0)), r"^hydra\.drift: expected\[0\] is nan, expected a finite number$"),
    (lambda: DriftReference((math.inf,), (0.5, 0.5)), r"^hydra\.drift: edges\[0\] is inf, expected a finite number$"),
    (lambda: DriftReference((), (1.0,)), r"^hydra\.drift: edges is empty"),
    (lambda: ModelMetadata(task="classification", num_heads=2, feature_shape=(4,), class_labels=("a", "a")),
     r"^hydra\.class_labels are not distinct"),
    (lambda: ModelMetadata(task="regression", num_heads=2, feature_shape=(4,), training={"loss": math.inf}),
     r"^hydra\.training\.loss is inf, expected a finite number$"),
    (lambda: ModelMetadata(task="regression", num_heads=0, feature_shape=(4,)),
     r"^hydra\.num_heads is 0, expected an integer >= 1$"),
    (lambda: ModelMetadata(task="regression", num_heads=2, feature_shape=(4, 0)),
     r"^hydra\.feature_shape\[1\] is 0, expected an integer >= 1$"),
    (lambda: ModelMetadata(task="regression", num_heads=2, feature_shape=(4,), class_labels=(3,)),  # type: ignore[arg-type]
     r"^hydra\.class_labels\[0\] is 3, expected a string$"),
    (lambda: ModelMetadata(task="regression", num_heads=2, feature_shape=(4,), output_dim=0),
     r"^hydra\.output_dim is 0, expected an integer >= 1$"),
]


@pytest.mark.parametrize(("build", "message"), CONSTRUCTED, ids=[str(i) for i in range(len(CONSTRUCTED))])
def test_training_builds_through_the_same_checks(build: Callable[[], Any], message: str) -> None:
    """The constructors refuse what the parser refuses: training cannot write it."""
    with pytest.raises(ContractError, match=message):
        build()


def test_contract_errors_are_value_errors() -> None:
    assert isinstance(ContractError("x"), ValueError)  # training's `except ValueError` still holds


def test_version_numbers_have_one_range(tmp_path: Path) -> None:
    """A version folder's number is at most MAX_VERSION (18 digits, what a URL can name);
    leading zeros do not make a number out of range, and one number may be named by several
    folders (which the service refuses to choose between)."""
    assert MAX_VERSION == 10**18 - 1
    assert version_of("9" * 18) == MAX_VERSION
    assert version_of("1" + "0" * 18) is None
    assert version_of("0" * 30 + "7") == 7
    assert version_of("²") is None and version_of("-1") is None
    by_number, out = version_folders(["1", "01", "2", "1" + "0" * 21, "latest", ".staging-1"])
    assert by_number == {1: ["01", "1"], 2: ["2"]}
    assert out == ["1" + "0" * 21]
    for folder in ("01", "1", "3", "1" + "0" * 21):
        (tmp_path / folder).mkdir()
    (tmp_path / "4").write_text("a file, not a folder")
    assert versions(tmp_path) == [1, 3]  # each number once; out of range and files left out
