"""Readers for the monitoring files in docker/: rule groups, alert tests, dashboard queries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Grafana's variables, replaced by values that make the query plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model": ".*",
}


@dataclass(frozen=True)
class Rule:
    file: str
    group: str
    name: str  # the alert's or the recorded series' name
    kind: str  # "alert" or "record"
    expr: str


def load_rules(rules_dir: Path) -> list[Rule]:
    rules = []
    for path in sorted(rules_dir.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                kind = "alert" if "alert" in rule else "record"
                rules.append(Rule(path.name, group["name"], rule[kind], kind, rule["expr"]))
    return rules


def alert_test_cases(tests_dir: Path) -> dict[str, dict[str, int]]:
    """Per alert name: how many firing (non-empty exp_alerts) and silent cases test it."""
    cases: dict[str, dict[str, int]] = {}
    for path in sorted(tests_dir.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("tests", []):
            for case in group.get("alert_rule_test", []):
                counts = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
                counts["firing" if case.get("exp_alerts") else "silent"] += 1
    return cases


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every PromQL query: panel targets (rows included) and variables."""
    found = []

    def panels(items: list[dict[str, Any]]) -> None:
        for panel in items:
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append(
                        (f"panel {panel.get('title')!r} ref {target.get('refId')}", target["expr"])
                    )
            panels(panel.get("panels", []))

    panels(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and text:
            found.append((f"variable {variable['name']!r}", text))
    return found


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([a-zA-Z_]\w*)\s*\)\s*$")


def as_promql(expr: str) -> str:
    """A dashboard query as plain PromQL: variables replaced, label_values(m, l) -> m."""
    match = _LABEL_VALUES.match(expr)
    if match:
        return match.group(1) or "up"
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
