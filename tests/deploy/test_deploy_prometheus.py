"""Prometheus configuration and rules: promtool check config / check rules / test rules,
every alert tested both ways, and rules reading only metrics the service exports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from metric_catalog import SCRAPE_SERIES, design_series
from monitoring_files import alert_test_cases, load_rules
from processes import run_promtool
from promql_names import metric_names


def copy_monitoring(repo: Path, dest: Path) -> Path:
    """docker/'s Prometheus files in a scratch folder, to plant mistakes in."""
    target = dest / "docker"
    target.mkdir()
    shutil.copy(repo / "docker" / "prometheus.yml", target)
    for folder in ("rules", "targets", "targets-gpu"):
        shutil.copytree(repo / "docker" / folder, target / folder)
    return target


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"plant anchor {old!r} not in {path.name}: update the test"
    path.write_text(text.replace(old, new, 1))


# ------------------------------------------------------------------ promtool check config
def test_prometheus_config_is_valid(repo: Path, promtool: Path) -> None:
    result = run_promtool(promtool, "check", "config", "prometheus.yml", cwd=repo / "docker")
    assert result.returncode == 0, result.stdout + result.stderr
    # The config pulls in both rule files (relative to itself), so check config checked them.
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_check_config_catches_a_planted_mistake(repo: Path, promtool: Path, tmp_path: Path) -> None:
    docker = copy_monitoring(repo, tmp_path)
    replace_in(docker / "prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15 seconds")
    result = run_promtool(promtool, "check", "config", "prometheus.yml", cwd=docker)
    assert result.returncode != 0
    assert "not a valid duration string" in result.stdout + result.stderr


def test_scrape_config_reads_the_target_files(repo: Path) -> None:
    config = yaml.safe_load((repo / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["hydra"]["metrics_path"] == "/metrics"
    assert jobs["hydra"]["file_sd_configs"][0]["files"] == ["targets/*.yml"]
    assert config["rule_files"] == ["rules/*.rules.yml"]


# ------------------------------------------------------------------ promtool check rules
def test_rule_files_are_valid(repo: Path, promtool: Path) -> None:
    rules = sorted(str(p) for p in (repo / "docker" / "rules").glob("*.rules.yml"))
    assert len(rules) == 2
    result = run_promtool(promtool, "check", "rules", *rules, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules_catches_a_planted_mistake(repo: Path, promtool: Path, tmp_path: Path) -> None:
    docker = copy_monitoring(repo, tmp_path)
    alerts = docker / "rules" / "hydra-alerts.rules.yml"
    replace_in(alerts, 'expr: up{job="hydra"} == 0', 'expr: up{job="hydra"} == = 0')
    result = run_promtool(promtool, "check", "rules", str(alerts), cwd=docker)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# ------------------------------------------------------------------ promtool test rules
def test_rule_unit_tests_pass(repo: Path, promtool: Path) -> None:
    tests = sorted(str(p) for p in (repo / "docker" / "rules" / "tests").glob("*.yml"))
    assert tests
    result = run_promtool(promtool, "test", "rules", *tests, cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_catch_a_planted_mistake(
    repo: Path, promtool: Path, tmp_path: Path
) -> None:
    # The drift alert loosened from PSI 0.2 to 0.5: the test with PSI 0.35 must now fail.
    docker = copy_monitoring(repo, tmp_path)
    replace_in(
        docker / "rules" / "hydra-alerts.rules.yml",
        'hydra_uncertainty_drift_psi{component="model"} > 0.2',
        'hydra_uncertainty_drift_psi{component="model"} > 0.5',
    )
    result = run_promtool(promtool, "test", "rules", "rules/tests/hydra.test.yml", cwd=docker)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "alertname: HydraModelUncertaintyDrift" in out
    assert "got:[]" in out


def test_every_alert_is_tested_firing_and_silent(repo: Path) -> None:
    alerts = {r.name for r in load_rules(repo / "docker" / "rules") if r.kind == "alert"}
    cases = alert_test_cases(repo / "docker" / "rules" / "tests")
    untested = sorted(
        a for a in alerts if cases.get(a, {}).get("firing", 0) == 0 or cases[a]["silent"] == 0
    )
    assert untested == [], f"alerts without both a firing and a silent test case: {untested}"
    assert set(cases) <= alerts, f"tests name unknown alerts: {sorted(set(cases) - alerts)}"
    expected = {
        "HydraOodRateHigh",
        "HydraModelUncertaintyDrift",
        "HydraModelOnCpu",
        "HydraPredictionLatencyHigh",
        "HydraErrorRatioHigh",
        "HydraNoModelReady",
        "HydraTargetDown",
    }
    assert expected <= alerts


def test_untested_alert_is_caught(repo: Path, tmp_path: Path) -> None:
    docker = copy_monitoring(repo, tmp_path)
    alerts_file = docker / "rules" / "hydra-alerts.rules.yml"
    data = yaml.safe_load(alerts_file.read_text())
    data["groups"][0]["rules"].append(
        {"alert": "HydraQueueFull", "expr": "hydra_queue_depth > 200"}
    )
    alerts_file.write_text(yaml.safe_dump(data))
    with pytest.raises(AssertionError, match="HydraQueueFull"):
        test_every_alert_is_tested_firing_and_silent(tmp_path)


# ------------------------------------------------------------------ names the rules read
def unknown_metrics(rules_dir: Path, exported: set[str]) -> dict[str, set[str]]:
    rules = load_rules(rules_dir)
    known = exported | SCRAPE_SERIES | {r.name for r in rules if r.kind == "record"}
    return {r.name: missing for r in rules if (missing := metric_names(r.expr) - known)}


def test_rules_read_only_exported_or_recorded_metrics(repo: Path) -> None:
    assert unknown_metrics(repo / "docker" / "rules", design_series()) == {}


def test_misspelled_metric_in_a_rule_is_caught(repo: Path, tmp_path: Path) -> None:
    docker = copy_monitoring(repo, tmp_path)
    replace_in(
        docker / "rules" / "hydra-recording.rules.yml",
        "rate(hydra_ood_predictions_total[5m])",
        "rate(hydra_ood_prediction_total[5m])",
    )
    assert unknown_metrics(docker / "rules", design_series()) == {
        "model:hydra_ood_predictions:rate5m": {"hydra_ood_prediction_total"}
    }
