"""Generate the Prometheus operator's PrometheusRule from docker/prometheus/alerts.yml.

alerts.yml is the one source of the alert and recording rules (compose's Prometheus loads
it, promtool unit-tests it); the Kubernetes deployment carries the same groups as a
PrometheusRule object. Never edit deploy/k8s/base/prometheusrule.yaml by hand:

    python deploy/k8s/prometheusrule.py           # rewrite it from alerts.yml
    python deploy/k8s/prometheusrule.py --check   # exit 1 when it has drifted

tests/deploy/test_prometheusrule.py fails while the two differ in content.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
OUTPUT = REPO / "deploy" / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from docker/prometheus/alerts.yml by deploy/k8s/prometheusrule.py: do not\n"
    "# edit. Change alerts.yml, then run `python deploy/k8s/prometheusrule.py`.\n"
    "# Label it for your Prometheus' ruleSelector in an overlay if it needs one\n"
    "# (kube-prometheus-stack: release: <its release name>).\n"
)


def rule_groups(alerts_path: Path = ALERTS) -> list[dict[str, Any]]:
    """The ``groups`` of a Prometheus rule file."""
    groups = yaml.safe_load(alerts_path.read_text(encoding="utf-8"))["groups"]
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{alerts_path}: no rule groups")
    return groups


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``monitoring.coreos.com/v1`` PrometheusRule carrying ``groups`` unchanged."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "relevance"},
        "spec": {"groups": groups},
    }


class _Literal(yaml.SafeDumper):
    """Multi-line strings (the PromQL expressions) as ``|`` blocks, as alerts.yml has them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Literal.add_representer(str, _str)


def render(alerts_path: Path = ALERTS) -> str:
    body = yaml.dump(
        prometheus_rule(rule_groups(alerts_path)),
        Dumper=_Literal,
        sort_keys=False,
        width=2**16,
        allow_unicode=True,
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file drifted")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} differs from {ALERTS}: run python {Path(__file__).relative_to(REPO)}")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
