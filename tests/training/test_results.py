"""The README's result tables are rendered from reports by ``hydra-train results``, and the
digits table is what a fresh ``make train`` produces."""

import json
import re
from pathlib import Path

import pytest

from training.cli import main as cli_main
from training.config import load_config
from training.pipeline import run_pipeline
from training.results import SECTIONS, ResultsError, render, replace_section, section_text

ROOT = Path(__file__).resolve().parents[2]


def test_sections_are_replaced_between_markers_only() -> None:
    text = "intro\n<!-- results:digits -->\nold\n<!-- /results:digits -->\nafter\n"
    assert section_text(text, "digits") == "old"
    assert replace_section(text, "digits", "new\nlines") == (
        "intro\n<!-- results:digits -->\nnew\nlines\n<!-- /results:digits -->\nafter\n")
    empty = "<!-- results:digits -->\n<!-- /results:digits -->\n"
    assert section_text(empty, "digits") == ""
    assert replace_section(empty, "digits", "x") == "<!-- results:digits -->\nx\n<!-- /results:digits -->\n"
    with pytest.raises(ResultsError, match=r"the README has no '<!-- results:diabetes -->'"):
        section_text(text, "diabetes")


def test_readme_has_every_section() -> None:
    readme = (ROOT / "README.md").read_text()
    for section in SECTIONS:
        assert section_text(readme, section.name).strip(), section.name


def test_committed_result_files_match_the_readme(tmp_path: Path) -> None:
    """The tables rendered from committed JSON are what that JSON gives."""
    readme = (ROOT / "README.md").read_text()
    for section in SECTIONS:
        if section.name in ("ablation", "tabular", "seeds", "resnet", "memory", "members"):
            assert section_text(readme, section.name) == render(section, tmp_path, ROOT), section.name


def test_check_mode_fails_on_a_stale_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    summary = json.loads((ROOT / "benchmarks" / "results" / "ablation.json").read_text())
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "ablation.json").write_text(json.dumps(summary))
    readme.write_text("<!-- results:ablation -->\nhand-typed 0.906\n<!-- /results:ablation -->\n")
    args = ["results", "--readme", str(readme), "--repository", str(tmp_path / "models"), "--only", "ablation"]
    assert cli_main([*args, "--check"]) == 1
    assert "section ablation differs from its source" in capsys.readouterr().err
    assert "hand-typed" in readme.read_text()  # --check rewrites nothing
    assert cli_main(args) == 0
    assert cli_main([*args, "--check"]) == 0
    assert "hand-typed" not in readme.read_text()


PROVENANCE = re.compile(r"Trained on (.*?); `model.onnx` sha256 `([0-9a-f]*)`")


@pytest.mark.slow
def test_readme_digits_table_is_what_a_fresh_make_train_gives(tmp_path: Path) -> None:
    """Training is deterministic for one CPU model, torch build and thread count: there the
    README's section must be exactly what a fresh run renders. Elsewhere the floating-point
    results (and so every figure) legitimately differ, and the comparison cannot be made."""
    config = load_config(ROOT / "configs" / "digits.toml", [f'runs_dir="{tmp_path / "runs"}"'])
    run_pipeline(config, tmp_path / "models")
    readme = (ROOT / "README.md").read_text()
    digits = next(s for s in SECTIONS if s.name == "digits")
    fresh = render(digits, tmp_path / "models", ROOT)
    recorded = PROVENANCE.search(section_text(readme, "digits"))
    now = PROVENANCE.search(fresh)
    assert recorded is not None and now is not None
    if recorded.group(1) != now.group(1):
        pytest.skip(f"the README's figures come from {recorded.group(1)}; this is {now.group(1)}")
    for section in SECTIONS:
        if section.name in ("digits", "serving"):
            assert section_text(readme, section.name) == render(section, tmp_path / "models", ROOT), (
                f"README's {section.name} section differs from a fresh training run: run `make "
                "train`, then `.venv/bin/hydra-train results`")
