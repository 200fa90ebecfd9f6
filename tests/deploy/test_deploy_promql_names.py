"""The PromQL metric-name extractor the rule and dashboard checks rely on."""

from __future__ import annotations

import pytest
from promql_names import metric_names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        (
            'hydra_model_info{provider="CPUExecutionProvider", gpu_expected="true"} == 1',
            {"hydra_model_info"},
        ),
        (
            "histogram_quantile(0.9, sum by (model, le) (rate(hydra_data_uncertainty_bucket[5m])))",
            {"hydra_data_uncertainty_bucket"},
        ),
        (
            "sum(rate(a_total[5m])) by (job) / on (job) group_left (x) b:c:ratio_rate5m > 0.2",
            {"a_total", "b:c:ratio_rate5m"},
        ),
        ('sum by (le) (increase(m_bucket{model=~"$model"}[$__rate_interval]))', {"m_bucket"}),
        ('x > bool 1e-3 and y offset 5m or absent(z{job="hydra"})', {"x", "y", "z"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("3 * model:hydra_ood_expected:ratio", {"model:hydra_ood_expected:ratio"}),
    ],
)
def test_metric_names_finds_selectors_only(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected
