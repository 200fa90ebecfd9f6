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
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numbers_close(a: str, b: str) -> list[str]:
    """Where two renderings differ: text apart from numbers must be equal, numbers close.

    Training is deterministic on one machine; another CPU may round a last digit otherwise,
    while a stale table differs by far more than this.
    """
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return ["the text around the numbers differs"]
    problems = []
    for x, y in zip(NUMBER.findall(a), NUMBER.findall(b)):
        fx, fy = float(x), float(y)
        if abs(fx - fy) > 0.006 + 0.02 * max(abs(fx), abs(fy)):
            problems.append(f"{x} != {y}")
    return problems


def test_numbers_close_catches_a_stale_figure() -> None:
    assert numbers_close("| ρ | 0.906 |", "| ρ | 0.907 |") == []
    assert numbers_close("| ρ | 0.906 |", "| ρ | 0.865 |") == ["0.906 != 0.865"]
    assert numbers_close("| ρ | 0.906 |", "| rho | 0.906 |") == ["the text around the numbers differs"]


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
    """The ablation and tabular tables are what their committed JSON gives."""
    readme = (ROOT / "README.md").read_text()
    for section in SECTIONS:
        if section.name in ("ablation", "tabular", "seeds"):
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


@pytest.mark.slow
def test_readme_digits_table_is_what_a_fresh_make_train_gives(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "digits.toml", [f'runs_dir="{tmp_path / "runs"}"'])
    run_pipeline(config, tmp_path / "models")
    readme = (ROOT / "README.md").read_text()
    for section in SECTIONS:
        if section.name not in ("digits", "serving"):
            continue
        fresh = render(section, tmp_path / "models", ROOT)
        assert numbers_close(section_text(readme, section.name), fresh) == [], (
            f"README's {section.name} section differs from a fresh training run; run `make train` "
            "then `.venv/bin/hydra-train results`")
