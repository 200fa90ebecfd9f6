"""docs/deploy.md (the README's Deploy section) stays true to the files it describes."""

from __future__ import annotations

import re
from pathlib import Path

from monitoring_files import load_rules

DOC = Path("docs/deploy.md")


def compose_variables(compose_text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose_text))


def undocumented(repo: Path, compose_text: str, doc_text: str) -> set[str]:
    """Compose variables and alert names that the deploy docs never mention."""
    names = compose_variables(compose_text)
    names |= {r.name for r in load_rules(repo / "docker" / "rules") if r.kind == "alert"}
    return {n for n in names if f"`{n}`" not in doc_text}


def test_every_setting_and_alert_is_documented(repo: Path) -> None:
    doc = (repo / DOC).read_text()
    compose = (repo / "docker-compose.yml").read_text()
    assert "GRAFANA_ADMIN_PASSWORD" in compose_variables(compose)
    assert undocumented(repo, compose, doc) == set()


def test_an_undocumented_setting_is_caught(repo: Path) -> None:
    doc = (repo / DOC).read_text()
    compose = (repo / "docker-compose.yml").read_text() + "\n# ${HYDRA_QUEUE_SIZE:-256}\n"
    assert undocumented(repo, compose, doc) == {"HYDRA_QUEUE_SIZE"}


def test_paths_the_docs_name_exist(repo: Path) -> None:
    doc = (repo / DOC).read_text()
    pattern = (
        r"(?<![\w/$.-])((?:docker|deploy|docs|configs)/[\w./-]*[\w/]|docker-compose[\w.]*\.yml)"
    )
    paths = set(re.findall(pattern, doc))
    assert {"docker-compose.gpu.yml", "deploy/k8s/jobs/train-job.yaml"} <= paths
    missing = sorted(p for p in paths if not (repo / p.rstrip("/")).exists())
    assert missing == []


def test_docs_urls_match_the_compose_ports(repo: Path) -> None:
    doc = (repo / DOC).read_text()
    compose = (repo / "docker-compose.yml").read_text()
    for variable, port, url in (
        ("HYDRA_HTTP_PORT", 8000, "http://localhost:8000"),
        ("PROMETHEUS_PORT", 9090, "http://localhost:9090"),
        ("GRAFANA_PORT", 3000, "http://localhost:3000"),
    ):
        assert f"${{{variable}:-{port}}}:" in compose
        assert url in doc
