"""tools/results.py: the documentation's generated sections are what their sources give,
``--check`` names each stale one, and the digits sections are what a fresh ``make train``
produces."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tools_results", ROOT / "tools" / "results.py")
assert _spec is not None and _spec.loader is not None
results = importlib.util.module_from_spec(_spec)
sys.modules["tools_results"] = results
_spec.loader.exec_module(results)

BENCHMARK_SECTIONS = ("ablation", "tabular", "seeds", "resnet", "memory", "members", "peers-grpc")


def _all_sections(root: Path) -> dict[str, str]:
    """section name -> text between its markers, over every scanned document."""
    out = {}
    for path in results.documents(root):
        text = path.read_text()
        for name in results.section_names(text, path.name):
            out[name] = results.section_text(text, name)
    return out


def test_sections_are_replaced_between_markers_only() -> None:
    text = "intro\n<!-- results:digits -->\nold\n<!-- /results:digits -->\nafter\n"
    assert results.section_text(text, "digits") == "old"
    assert results.replace_section(text, "digits", "new\nlines") == (
        "intro\n<!-- results:digits -->\nnew\nlines\n<!-- /results:digits -->\nafter\n")
    empty = "<!-- results:digits -->\n<!-- /results:digits -->\n"
    assert results.section_text(empty, "digits") == ""
    assert results.replace_section(empty, "digits", "x") == "<!-- results:digits -->\nx\n<!-- /results:digits -->\n"
    with pytest.raises(results.ResultsError, match=r"no '<!-- results:diabetes -->'"):
        results.section_text(text, "diabetes")


def test_markers_are_lines_of_their_own_and_must_pair() -> None:
    prose = "Sections sit between `<!-- results:NAME -->` and `<!-- /results:NAME -->` lines.\n"
    assert results.section_names(prose) == []
    assert results.section_names("<!-- results:seeds -->\nx\n<!-- /results:seeds -->\n") == ["seeds"]
    for bad, why in (("<!-- results:seeds -->\n", "never closed"),
                     ("<!-- /results:seeds -->\n", "closes no open section"),
                     ("<!-- results:nope -->\n<!-- /results:nope -->\n", "unknown section nope"),
                     ("<!-- results:seeds -->\n<!-- results:memory -->\n", "opens inside"),
                     ("<!-- results:seeds -->\n<!-- /results:seeds -->\n" * 2, "appears twice")):
        with pytest.raises(results.ResultsError, match=why):
            results.section_names(bad)


def test_every_section_is_in_some_document() -> None:
    found = _all_sections(ROOT)
    for section in results.SECTIONS:
        assert found.get(section.name, "").strip(), f"no document holds section {section.name}"


def test_committed_benchmark_files_match_the_documents() -> None:
    """The tables rendered from committed JSON are what that JSON gives."""
    found = _all_sections(ROOT)
    for name in BENCHMARK_SECTIONS:
        assert found[name] == results.render(results.BY_NAME[name], ROOT / "models", ROOT), name


def _scratch(tmp_path: Path, document: str) -> Path:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "results" / "ablation.json", tmp_path / "benchmarks" / "results")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text(document)
    return tmp_path


def test_check_mode_names_a_stale_section_and_rewrites_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scratch(tmp_path, "<!-- results:ablation -->\nhand-typed 0.906\n<!-- /results:ablation -->\n")
    args = ["--root", str(root), "--only", "ablation"]
    assert results.main([*args, "--check"]) == 1
    assert "docs/results.md: ablation differs from its source" in capsys.readouterr().err
    assert "hand-typed" in (root / "docs" / "results.md").read_text()  # --check rewrites nothing
    assert results.main(args) == 0
    assert results.main([*args, "--check"]) == 0
    assert "hand-typed" not in (root / "docs" / "results.md").read_text()


def test_a_missing_source_is_skipped_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scratch(tmp_path, "<!-- results:memory -->\nold\n<!-- /results:memory -->\n")
    assert results.main(["--root", str(root), "--check"]) == 0
    assert "skipped memory" in capsys.readouterr().err
    assert "old" in (root / "docs" / "results.md").read_text()


def test_an_unknown_marker_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scratch(tmp_path, "<!-- results:ablaton -->\nx\n<!-- /results:ablaton -->\n")
    assert results.main(["--root", str(root), "--check"]) == 2
    assert "unknown section ablaton" in capsys.readouterr().err


def test_report_sections_read_the_goal_policy_from_the_report() -> None:
    """Titles, targets, directions and what is not a goal come from report.json: change them
    there and the rendered table follows."""
    goals = {"accuracy_gap_points": {"title": "accuracy gap (points)", "value": 0.7, "target": 1.0,
                                     "higher_is_better": False, "is_goal": True, "met": True},
             "coverage": {"title": "coverage", "value": 0.85, "target": 0.9, "ensemble": 0.93,
                          "higher_is_better": True, "is_goal": True, "met": False},
             "pooled": {"title": "pooled figure", "value": 0.5, "target": None,
                        "higher_is_better": True, "is_goal": False, "met": None}}
    assert results.report_md.goals_table(goals) == [
        "| goal | measured | ensemble | target |  |", "|---|---|---|---|---|",
        "| accuracy gap (points) | 0.700 |  | ≤ 1 | met |",
        "| coverage | 0.850 | 0.930 | ≥ 0.9 | **missed** |",
        "| pooled figure | 0.500 |  | (not a goal) |  |", ""]


def test_benchmark_rows_are_judged_by_the_goals_their_runs_carry() -> None:
    """A fidelity row is judged by the targets its own report gave; rows recorded without
    them are not judged at all."""
    import external_members  # noqa: PLC0415 (benchmarks/ is on the path once the tool is loaded)

    summary = json.loads((ROOT / "benchmarks" / "results" / "external_members.json").read_text())
    runs = summary["runs"][:1]
    bare = "\n".join(external_members.render({**summary, "runs": runs}))
    assert "**" not in bare and "no figure is judged" in bare
    goal = {"higher_is_better": False, "is_goal": True, "target": 0.25, "title": "gap"}
    auroc = {"higher_is_better": True, "is_goal": True, "target": 0.5, "title": "ratio"}
    run = {**runs[0], "goals": {"accuracy_gap_points": goal,
                                **{f"auroc_ratio_model_ood/{k}": auroc for k in runs[0]["ood_auroc_model"]}}}
    judged = "\n".join(external_members.render({**summary, "runs": [run]}))
    assert "≤ 0.25 points" in judged and "≥ 0.5" in judged
    gap = 100 * (run["test"]["ensemble"]["accuracy"] - run["test"]["hydra"]["accuracy"])
    assert f"| **{gap:.2f}** |" in judged  # the gap misses 0.25; the ratio meets 0.5


PROVENANCE = re.compile(r"Trained on (.*?); `model.onnx` sha256 `([0-9a-f]*)`")


@pytest.mark.slow
def test_digits_sections_are_what_a_fresh_make_train_gives(tmp_path: Path) -> None:
    """Training is deterministic for one CPU model, torch build and thread count: there the
    documents' digits sections must be exactly what a fresh run renders. Elsewhere the
    floating-point results (and so every figure) legitimately differ, and the comparison
    cannot be made."""
    from training.config import load_config
    from training.pipeline import run_pipeline

    config = load_config(ROOT / "configs" / "digits.toml", [f'runs_dir="{tmp_path / "runs"}"'])
    run_pipeline(config, tmp_path / "models")
    found = _all_sections(ROOT)
    fresh = results.render(results.BY_NAME["digits"], tmp_path / "models", ROOT)
    recorded, now = PROVENANCE.search(found["digits"]), PROVENANCE.search(fresh)
    assert recorded is not None and now is not None
    if recorded.group(1) != now.group(1):
        pytest.skip(f"the documents' figures come from {recorded.group(1)}; this is {now.group(1)}")
    for name in ("headline", "digits", "serving"):
        assert found[name] == results.render(results.BY_NAME[name], tmp_path / "models", ROOT), (
            f"section {name} differs from a fresh training run: run `make train`, then "
            "`.venv/bin/python tools/results.py`")
