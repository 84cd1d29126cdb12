"""The Grafana dashboard and its provisioning parse; alerts carry a severity and a summary.

Whether every metric they read is exported is checked against a live /metrics in
test_live_prometheus.py (a registry listing cannot see a histogram that exports no _sum).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_alerts_have_a_severity_and_a_summary() -> None:
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert any(a["alert"] == "RelevanceSLOFastBurn" for a in alerts)
    assert all(a["labels"]["severity"] in {"page", "ticket", "info"} for a in alerts)
    assert all(a["annotations"]["summary"] for a in alerts)


def test_dashboard_and_provisioning_parse() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "relevance.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20 and all(exprs)
    provisioning = DOCKER / "grafana" / "provisioning"
    for path in (
        provisioning / "dashboards" / "relevance.yml",
        provisioning / "datasources" / "prometheus.yml",
    ):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
