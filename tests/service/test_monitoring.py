"""The Prometheus rules and the Grafana dashboard parse and only use metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from service.metrics import Metrics

DOCKER = Path(__file__).resolve().parents[2] / "docker"
METRIC_NAME = re.compile(r"\brelevance_[a-z_]+\b")


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert any(a["alert"] == "RelevanceSLOFastBurn" for a in alerts)
    assert all(a["labels"]["severity"] and a["annotations"]["summary"] for a in alerts)
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used and used <= exported_names(), used - exported_names()


def test_dashboard_parses_and_uses_exported_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "relevance.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert "relevance_slo_compliance_ratio" in used and "relevance_batch_size_pairs_sum" in used
    assert used <= exported_names(), used - exported_names()
    provisioning = DOCKER / "grafana" / "provisioning"
    for path in (
        provisioning / "dashboards" / "relevance.yml",
        provisioning / "datasources" / "prometheus.yml",
    ):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
