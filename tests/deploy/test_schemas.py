"""Every rendered manifest is valid: core kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict, for each version in KUBERNETES_VERSIONS); the Prometheus
operator's kinds, which those schemas do not know, by promtool and their own checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from k8stools import KUBERNETES_VERSIONS, only, render

OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schema(docs: list[dict[str, Any]], version: str) -> None:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in OPERATOR_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not a valid {version} object: {exc}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_adapter_config_map_matches_the_schema(version: str) -> None:
    (config_map,) = render("prometheus-adapter")
    kubernetes_validate.validate(config_map, version, strict=True)
    assert config_map["metadata"]["namespace"] == "monitoring"


def test_invalid_objects_are_caught(docs: list[dict[str, Any]]) -> None:
    """The check has teeth: a misspelt field and a wrong type are both refused."""
    deployment = only(docs, "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_prometheus_rule_passes_promtool(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make setup` (it installs Debian's prometheus)"
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_shape(docs: list[dict[str, Any]]) -> None:
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        interval = int(endpoint["interval"].rstrip("s"))
        assert int(endpoint["scrapeTimeout"].rstrip("s")) < interval
