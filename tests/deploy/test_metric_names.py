"""Every metric the scaling and monitoring objects name is one a live service exports.

The service runs as a process (``python -m service``) on the tiny model package, on a free
loopback port; its ``/metrics`` is read after one scored request. Names are checked against
the families its exposition declares (``# TYPE``), with each type's sample suffixes.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8stools import only, render
from prometheus_client.parser import text_string_to_metric_families

from loadtest.servers import free_port, running, service_argv, start_server

METRIC_NAME = re.compile(r"\brelevance_[a-z_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
}


@pytest.fixture(scope="module")
def exported(tiny_model_package: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    port = free_port()
    server = start_server(
        "service",
        service_argv(tiny_model_package, port),
        port,
        log_dir=tmp_path_factory.mktemp("service-log"),
    )
    with running(server, "/readyz", timeout_s=120) as live:
        body = json.dumps({"query": "angle bracket", "items": ["steel angle", "brass valve"]})
        request = urllib.request.Request(
            live.url + "/score", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(live.url + "/metrics", timeout=30) as answer:
            text = answer.read().decode()
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def used_names(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    hpa = only(docs, "HorizontalPodAutoscaler")
    (config_map,) = render("prometheus-adapter")
    adapter = yaml.safe_load(config_map["data"]["config.yaml"])
    rule = only(docs, "PrometheusRule")
    found = {
        "hpa": {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]},
        "adapter": set(METRIC_NAME.findall(" ".join(strings(adapter["rules"])))),
        "servicemonitor": set(METRIC_NAME.findall(" ".join(strings(only(docs, "ServiceMonitor"))))),
        "prometheusrule": {
            name
            for group in rule["spec"]["groups"]
            for r in group["rules"]
            for name in METRIC_NAME.findall(r["expr"])
        },
    }
    # The adapter serves the HPA's metric under the name the HPA asks for.
    assert {r["name"]["as"] for r in adapter["rules"]} >= found["hpa"]
    return found


def test_every_used_metric_is_exported(docs: list[dict[str, Any]], exported: set[str]) -> None:
    used = used_names(docs)
    assert used["hpa"] == {"relevance_inflight_pairs"}
    assert used["prometheusrule"], "no metric found in the rules"
    for where, names in used.items():
        assert names <= exported, f"{where} uses metrics the service does not export: " + str(
            sorted(names - exported)
        )


def test_a_misspelt_name_would_be_caught(exported: set[str]) -> None:
    assert "relevance_inflight_pairs" in exported
    assert "relevance_inflight_pair" not in exported
    assert "relevance_slo_requests_total" in exported
