"""Metrics are bound to the registry they are given; the SLO ratio rolls over its window."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.metrics import Metrics, RollingRatio


def test_each_app_gets_its_own_registry() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).batch_pairs.observe(3)
    Metrics(b)  # the same names again: no duplicate-timeseries error
    assert a.get_sample_value("relevance_batch_size_pairs_sum") == 3
    assert b.get_sample_value("relevance_batch_size_pairs_sum") == 0


def test_rolling_ratio_forgets_old_events() -> None:
    ratio = RollingRatio(window_s=10)
    assert ratio.ratio(now=0) == 1.0
    for _ in range(3):
        ratio.add(True, now=100)
    ratio.add(False, now=105)
    assert ratio.ratio(now=105) == 0.75
    assert ratio.ratio(now=111) == 0.0  # only the failure (t=105) is still in the window
    assert ratio.ratio(now=116) == 1.0


def test_slo_counts_violations() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_slo(0.1, budget_s=0.25, ok=True)
    metrics.observe_slo(0.3, budget_s=0.25, ok=True)
    metrics.observe_slo(0.01, budget_s=0.25, ok=False)
    assert registry.get_sample_value("relevance_slo_requests_total") == 3
    assert registry.get_sample_value("relevance_slo_violations_total") == 2
    assert abs(registry.get_sample_value("relevance_slo_compliance_ratio") - 1 / 3) < 1e-9
