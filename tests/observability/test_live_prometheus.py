"""A live service scraped by a real Prometheus: every metric the dashboard and the alerts read
is exported, and every expression evaluates on the scraped data.

Starts ``python -m service`` on the tiny model package and the Debian ``prometheus`` binary,
both on loopback ports of this machine, and stops both at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loadtest.servers import free_port, running, service_argv, start_server

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "relevance.json"
METRIC = re.compile(r"\brelevance_[a-z0-9_]+\b")


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in rules["groups"]
        for rule in group["rules"]
    }


def dashboard_expressions() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel.get('title')} #{n}": target["expr"]
        for panel in dashboard["panels"]
        for n, target in enumerate(panel.get("targets", []))
        if target.get("expr")
    }


def _post(url: str, body: dict) -> int:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def live_service(
    tiny_model_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    server = start_server(
        "service",
        service_argv(tiny_model_package, port),
        port,
        log_dir=tmp_path_factory.mktemp("service-log"),
    )
    with running(server, "/readyz", timeout_s=120) as started:
        url = started.url
        # Traffic of every kind, so that labeled series exist: scores, reranks, a refusal,
        # the shadow endpoint without a teacher (503) and a client deadline.
        assert _post(url + "/score", {"query": "drill", "items": ["cordless drill", "saw"]}) == 200
        assert _post(url + "/rerank", {"query": "drill", "texts": ["drill bit", "paint"]}) == 200
        assert _post(url + "/score", {"query": "drill", "items": []}) == 422
        assert _post(url + "/shadow/score", {"query": "drill", "items": ["drill"]}) == 503
        yield url


def _families(exposition: str) -> tuple[set[str], set[str]]:
    """Sample names, and the names in # HELP / # TYPE lines (families without samples yet)."""
    samples, declared = set(), set()
    for line in exposition.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            declared.add(line.split()[2])
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return samples, declared


def unexported(used: set[str], exposition: str) -> set[str]:
    """The names in ``used`` that ``exposition`` (a /metrics page) can never answer."""
    samples, declared = _families(exposition)

    def family(name: str) -> str:
        return re.sub(r"_(bucket|sum|count|total|created)$", "", name)

    missing = set()
    for name in used - samples:
        # A labeled family nobody has touched yet has no samples, only its HELP/TYPE lines;
        # a family that has samples must have this one (a histogram with a negative bucket
        # exports _bucket and _count but never _sum).
        has_samples = any(family(s) == family(name) for s in samples)
        if has_samples or (name not in declared and family(name) not in declared):
            missing.add(name)
    return missing


def test_unexported_finds_a_histogram_sum_that_is_never_exported() -> None:
    exposition = '# TYPE h histogram\nh_bucket{le="1"} 1\nh_count 1\n# HELP c_total y\n'
    assert unexported({"h_sum", "h_count", "c_total", "nothing"}, exposition) == {
        "h_sum",
        "nothing",
    }


def test_every_metric_a_panel_or_alert_reads_is_exported(live_service: str) -> None:
    with urllib.request.urlopen(live_service + "/metrics", timeout=10) as response:
        exposition = response.read().decode()
    used = {
        name
        for expr in [*alert_expressions().values(), *dashboard_expressions().values()]
        for name in METRIC.findall(expr)
    }
    assert len(used) > 15
    missing = unexported(used, exposition)
    assert not missing, f"read by a panel or alert but never exported: {sorted(missing)}"


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus not found: `make setup` installs the Debian package `prometheus` "
            "(apt-get install prometheus, as root)"
        )
    return path


@pytest.fixture(scope="module")
def prometheus(live_service: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("prometheus")
    shutil.copy(ALERTS, root / "alerts.yml")
    target = urllib.parse.urlparse(live_service).netloc
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(root / "alerts.yml")],
        "scrape_configs": [{"job_name": "relevance", "static_configs": [{"targets": [target]}]}],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            _prometheus(),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            try:
                targets = _get_json(url + "/api/v1/targets")["data"]["activeTargets"]
                if targets and targets[0]["health"] == "up":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the service target never came up"
            time.sleep(0.5)
        time.sleep(3)  # a few scrapes and rule evaluations
        yield url
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def _query(prometheus: str, expr: str) -> dict:
    return _get_json(prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))


def test_prometheus_evaluates_every_dashboard_and_alert_expression(prometheus: str) -> None:
    failures = {}
    for name, expr in {**alert_expressions(), **dashboard_expressions()}.items():
        answer = _query(prometheus, expr)
        if answer.get("status") != "success":
            failures[name] = answer
    assert not failures, failures
    # the scraped values are the live service's
    ready = _query(prometheus, "relevance_ready")["data"]["result"]
    assert [float(r["value"][1]) for r in ready] == [1.0]
    scored = _query(prometheus, 'sum(relevance_request_duration_seconds_count{endpoint="/score"})')
    assert float(scored["data"]["result"][0]["value"][1]) >= 2  # one 200, one 422
    capacity = _query(prometheus, "relevance_queue_capacity_pairs")["data"]["result"]
    assert float(capacity[0]["value"][1]) > 0


def test_every_rule_group_loads_and_evaluates(prometheus: str) -> None:
    groups = _get_json(prometheus + "/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(alert_expressions())
    unhealthy = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not unhealthy, unhealthy
    # a fresh, healthy service: nothing fires
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert firing == []
