"""The report says what to try when the Hydra detects an OOD set worse than the ensemble and
the run made no disagreement-ascent inputs, and stays quiet otherwise."""

from __future__ import annotations

from typing import Any

from training.report_md import _ood_hint


def _report(met: bool | None, steps: int = 0, ignored: list[str] | None = None,
            predictions_file: bool = False) -> dict[str, Any]:
    transfer: dict[str, Any] = {"source": "member ONNX files", "ignored_settings": ignored or []}
    if predictions_file:
        transfer["rows_given"] = 100
    return {
        "goals": {"accuracy_gap_points": {"value": 0.1, "target": 1.0, "met": True},
                  "auroc_ratio_model_ood/inverted": {"value": 0.6, "target": 0.97, "met": met},
                  "auroc_ratio_model_ood/noise": {"value": 1.0, "target": 0.97, "met": True}},
        "transfer": transfer,
        "config": {"distill": {"transfer": {"perturb_steps": steps}}},
    }


def test_a_missed_ood_goal_without_ascent_inputs_gets_the_hint() -> None:
    hint = _ood_hint(_report(met=False))
    assert hint is not None and hint.startswith("The Hydra detects inverted worse than the ensemble")
    assert "perturb_steps" in hint and "ONNX files whose operators translate" in hint
    # asked for, but an ONNX member could not apply it: still no ascent inputs
    ignored = ["distill.transfer.perturb_steps (no gradients through m0.onnx: operators without a "
               "PyTorch translation here: TopK)"]
    assert _ood_hint(_report(met=False, steps=3, ignored=ignored)) is not None


def test_no_hint_when_met_undefined_ascended_or_from_a_predictions_file() -> None:
    assert _ood_hint(_report(met=True)) is None
    assert _ood_hint(_report(met=None)) is None
    assert _ood_hint(_report(met=False, steps=3)) is None
    assert _ood_hint(_report(met=False, predictions_file=True)) is None
