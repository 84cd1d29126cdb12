"""The PrometheusRule carries exactly docker/prometheus/alerts.yml's groups.

deploy/k8s/base/prometheusrule.yaml is generated (deploy/k8s/prometheusrule.py); when this
fails, alerts.yml changed: run ``python deploy/k8s/prometheusrule.py`` and commit both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from k8stools import REPO, only


def generator() -> ModuleType:
    path = REPO / "deploy" / "k8s" / "prometheusrule.py"
    spec = importlib.util.spec_from_file_location("deploy_prometheusrule", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_rule_has_the_content_of_alerts_yml() -> None:
    gen = generator()
    committed = yaml.safe_load(gen.OUTPUT.read_text())
    alerts = yaml.safe_load(gen.ALERTS.read_text())
    assert committed["spec"]["groups"] == alerts["groups"], (
        "deploy/k8s/base/prometheusrule.yaml has drifted from docker/prometheus/alerts.yml: "
        "run `python deploy/k8s/prometheusrule.py`"
    )
    assert gen.main(["--check"]) == 0


def test_rendered_overlays_carry_it(docs: list[dict[str, Any]]) -> None:
    alerts = yaml.safe_load((REPO / "docker" / "prometheus" / "alerts.yml").read_text())
    assert only(docs, "PrometheusRule")["spec"]["groups"] == alerts["groups"]


def test_generator_follows_a_changed_rule_file(tmp_path: Path) -> None:
    """Any edit of alerts.yml (a new threshold, a new alert) comes through unchanged."""
    gen = generator()
    alerts = yaml.safe_load(gen.ALERTS.read_text())
    alerts["groups"][0]["rules"].append(
        {"alert": "Example", "expr": "up == 0\nand on() vector(1)", "for": "1m"}
    )
    changed = tmp_path / "alerts.yml"
    changed.write_text(yaml.safe_dump(alerts))
    rule = yaml.safe_load(gen.render(changed))
    assert rule["kind"] == "PrometheusRule" and rule["spec"]["groups"] == alerts["groups"]
    with pytest.raises(ValueError):
        empty = tmp_path / "empty.yml"
        empty.write_text("groups: []\n")
        gen.render(empty)
