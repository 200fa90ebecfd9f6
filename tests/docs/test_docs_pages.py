"""The documentation pages: the README stays a landing page, every relative link reaches a
file, every page opens by saying what its reader can do, and the goal table that opens
BENCHMARKS.md copies its figures from the sections it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 170

_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text: str) -> list[str]:
    """Targets of the Markdown links outside code blocks that name a file of the project:
    no scheme, no bare anchor; the anchor of a file link is dropped."""
    out = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_relative_links_ignore_urls_anchors_and_code() -> None:
    text = ("[a](docs/a.md#x) [b](https://x.org/y.md) [c](#local) [d](mailto:x@y.z)\n"
            "```\n[e](inside/a/block.md)\n```\n[f](../up.md \"title\")\n")
    assert relative_links(text) == ["docs/a.md", "../up.md"]


def test_readme_is_a_landing_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(page: Path) -> None:
    missing = [t for t in relative_links(page.read_text()) if not (page.parent / t).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to files that do not exist"


@pytest.mark.parametrize("page", [ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_opens_with_what_its_reader_can_do(page: Path) -> None:
    paragraphs = [p for p in page.read_text().split("\n\n") if p.strip()]
    assert paragraphs[0].startswith("# "), "a page starts with its title"
    assert paragraphs[1].startswith("After reading this page you can "), paragraphs[1][:80]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _sections(text: str) -> dict[str, str]:
    """Level-2 sections by anchor, each with its sub-sections."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {_slug(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_benchmark_goal_table_copies_its_figures_from_the_sections_it_names() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    sections = _sections(text)
    glance = sections.pop("goals-at-a-glance")
    rows = [line for line in glance.splitlines() if line.startswith("| ") and not line.startswith("| goal ")]
    assert len(rows) >= 10
    for row in rows:
        goal, figure, met, machine, link = (c.strip() for c in row.strip("|").split("|"))
        anchor = re.fullmatch(r"\[[^\]]+\]\(#([^)]+)\)", link)
        assert anchor and anchor.group(1) in sections, f"no section {link}"
        numbers = set(_NUMBER.findall(sections[anchor.group(1)]))
        for number in _NUMBER.findall(goal) + _NUMBER.findall(figure):
            assert number in numbers, f"{number} ({goal}) is not in the section {anchor.group(1)}"
        assert met in ("yes", "**no**"), row
