"""The Grafana dashboard and its provisioning, checked as files (Grafana is not packaged
for Debian): structure, data source, every query valid PromQL reading exported metrics,
and the panels the drift dashboard must have."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_catalog import SCRAPE_SERIES, design_series
from monitoring_files import as_promql, dashboard_queries, load_dashboard, load_rules
from processes import run_promtool
from promql_names import metric_names

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = Path("docker/grafana/dashboards/hydra-uncertainty.json")


def provisioned_datasource(repo: Path) -> dict[str, Any]:
    config = yaml.safe_load(
        (repo / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (datasource,) = config["datasources"]
    return datasource


def structure_problems(dashboard: dict[str, Any], datasource_uid: str) -> list[str]:
    problems = []
    for key in ("uid", "title", "schemaVersion", "panels"):
        if not dashboard.get(key):
            problems.append(f"dashboard has no {key}")
    ids: list[int] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel.get("id"))
            grid = panel.get("gridPos", {})
            if grid.get("x", 0) + grid.get("w", 0) > 24 or grid.get("w", 0) <= 0:
                problems.append(f"panel {panel.get('title')!r}: gridPos {grid} outside 24 columns")
            sources = [panel.get("datasource")] + [
                t.get("datasource") for t in panel.get("targets", [])
            ]
            for source in sources:
                if (
                    source is not None
                    and panel.get("type") != "row"
                    and source.get("uid") != datasource_uid
                ):
                    problems.append(
                        f"panel {panel.get('title')!r} uses data source {source}, "
                        f"expected uid {datasource_uid!r}"
                    )
            for target in panel.get("targets", []):
                if not target.get("refId"):
                    problems.append(f"panel {panel.get('title')!r}: a target without refId")
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates or None in ids:
        problems.append(f"panel ids must be unique and set, duplicates: {duplicates}")
    return problems


def test_dashboard_structure_and_data_source(repo: Path) -> None:
    datasource = provisioned_datasource(repo)
    assert datasource["type"] == "prometheus"
    assert structure_problems(load_dashboard(repo / DASHBOARD), datasource["uid"]) == []


def test_wrong_data_source_is_caught(repo: Path) -> None:
    dashboard = load_dashboard(repo / DASHBOARD)
    dashboard["panels"][1]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "prom-old"}
    problems = structure_problems(dashboard, provisioned_datasource(repo)["uid"])
    assert any("prom-old" in p for p in problems), problems


# ------------------------------------------------------------------ queries are PromQL
def check_queries_parse(
    promtool: Path, dashboard: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """promtool check rules on every query as a recording rule (Grafana variables replaced)."""
    queries = dashboard_queries(dashboard)
    rules = [
        {"record": f"dashboard:query_{n}", "expr": as_promql(expr)}
        for n, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return run_promtool(promtool, "check", "rules", str(path))


def test_every_dashboard_query_is_valid_promql(repo: Path, promtool: Path, tmp_path: Path) -> None:
    dashboard = load_dashboard(repo / DASHBOARD)
    assert len(dashboard_queries(dashboard)) >= 20
    result = check_queries_parse(promtool, dashboard, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_invalid_query_is_caught(repo: Path, promtool: Path, tmp_path: Path) -> None:
    dashboard = load_dashboard(repo / DASHBOARD)
    target = dashboard["panels"][3]["targets"][0]
    target["expr"] = target["expr"].replace("{", "{{", 1)
    result = check_queries_parse(promtool, dashboard, tmp_path)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ------------------------------------------------------------------ names the queries read
def unknown_dashboard_metrics(
    dashboard: dict[str, Any], exported: set[str], recorded: set[str]
) -> dict[str, set[str]]:
    known = exported | recorded | SCRAPE_SERIES
    return {
        where: missing
        for where, expr in dashboard_queries(dashboard)
        if (missing := metric_names(as_promql(expr)) - known)
    }


def recorded_names(repo: Path) -> set[str]:
    return {r.name for r in load_rules(repo / "docker" / "rules") if r.kind == "record"}


def test_dashboard_reads_only_exported_or_recorded_metrics(repo: Path) -> None:
    dashboard = load_dashboard(repo / DASHBOARD)
    assert unknown_dashboard_metrics(dashboard, design_series(), recorded_names(repo)) == {}


def test_misspelled_metric_in_the_dashboard_is_caught(repo: Path) -> None:
    text = (repo / DASHBOARD).read_text()
    assert "hydra_queue_depth{" in text
    dashboard = json.loads(text.replace("hydra_queue_depth{", "hydra_queue_length{"))
    unknown = unknown_dashboard_metrics(dashboard, design_series(), recorded_names(repo))
    assert list(unknown.values()) == [{"hydra_queue_length"}]
    assert "Queue depth" in next(iter(unknown))


# ------------------------------------------------------------------ what the dashboard shows
def test_dashboard_has_the_drift_panels(repo: Path) -> None:
    dashboard = load_dashboard(repo / DASHBOARD)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    by_metric: dict[str, set[str]] = {}
    for panel in panels:
        for target in panel.get("targets", []):
            for name in metric_names(as_promql(target["expr"])):
                by_metric.setdefault(name, set()).add(panel["type"])
    for component in ("total", "data", "model"):
        bucket = f"hydra_{component}_uncertainty_bucket"
        assert "heatmap" in by_metric.get(bucket, set()), f"no heatmap of {bucket}"
        for quantile in ("p50", "p95"):
            assert f"model:hydra_{component}_uncertainty:{quantile}_5m" in by_metric
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])
    for needed in (
        "hydra_uncertainty_drift_psi",
        "model:hydra_ood_predictions:ratio_rate5m",
        "model:hydra_ood_expected:ratio",
        "route:hydra_http_request_duration_seconds:p95_5m",
        "hydra_inference_batch_size_bucket",
        "hydra_queue_depth",
        "hydra_model_info",
    ):
        assert needed in by_metric, f"the dashboard does not show {needed}"
    info = [p for p in panels if "hydra_model_info" in json.dumps(p.get("targets"))]
    assert any(
        "provider" in t["expr"] and "version" in t["expr"] for p in info for t in p["targets"]
    )


def test_provisioning_matches_the_compose_mounts(repo: Path) -> None:
    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2][::-1] for v in grafana["volumes"] if v.startswith("./"))
    providers = yaml.safe_load(
        (repo / "docker/grafana/provisioning/dashboards/hydra.yml").read_text()
    )
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    assert mounts[folder] == "./docker/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(folder + "/")
    assert (repo / "docker/grafana/dashboards" / Path(home).name).is_file()
    datasource = provisioned_datasource(repo)
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO) for p in (REPO / "docker/grafana").rglob("*.json")), ids=str
)
def test_every_dashboard_file_is_json(repo: Path, path: Path) -> None:
    assert isinstance(json.loads((repo / path).read_text()), dict)
