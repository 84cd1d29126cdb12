"""Run summaries: percentiles, throughput, errors by status, the SLO verdict."""

from __future__ import annotations

import json

from loadtest.stats import Sample, Slo, percentile, summarize


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


def test_summary_counts_pairs_errors_and_slo() -> None:
    slo = Slo(latency_ms=100, items=100, target=0.9)
    samples = [Sample("score", 200, 0.15, 200) for _ in range(18)]  # budget 200 ms: met
    samples += [Sample("rerank", 50, 0.2, 200)]  # budget 100 ms: missed
    samples += [Sample("score", 50, 0.01, 429)]  # an error is a miss
    samples += [Sample("shadow", 10, 5.0, 200)]  # not counted against the SLO
    out = summarize(samples, elapsed_s=2.0, slo=slo)
    assert out["requests"] == 21 and out["failures"] == 1
    assert out["errors_by_status"] == {"429": 1}
    assert out["pairs_per_s"] == (18 * 200 + 50 + 10) / 2
    assert out["slo"]["compliance"] == 0.9 and out["slo"]["held"] is True
    assert out["by_endpoint"]["rerank"]["requests"] == 1
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN or infinity


def test_slo_missed_when_too_slow() -> None:
    out = summarize([Sample("score", 10, 1.0, 200)] * 10, 1.0, Slo(latency_ms=100))
    assert out["slo"]["held"] is False and out["slo"]["p99_latency_over_budget"] == 10.0
