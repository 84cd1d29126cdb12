"""The pass rules of the load rows of ``python -m loadtest.reliability``, on made-up samples.

Half load, overload (goodput), lone request against the raw session, peak against the raw
ceiling, score cache and fan-out: each verdict is a pure function of what was measured.
"""

from __future__ import annotations

from collections import Counter

import pytest

from loadtest.reliability import overload, traffic
from loadtest.reliability.__main__ import parse_args
from loadtest.stats import Sample

SLO = {"latency_ms": 1000.0, "per_items": 100}
DEADLINE_S = 5.0


def _samples(*spec: tuple[int, int, float, int]) -> list[Sample]:
    """(count, status, latency_s, items) groups."""
    return [
        Sample("score", items, latency, status)
        for count, status, latency, items in spec
        for _ in range(count)
    ]


def _figures(samples: list[Sample], not_sent: int = 0, elapsed_s: float = 10.0):
    return overload.open_loop_figures(samples, not_sent, elapsed_s, SLO, DEADLINE_S)


def test_goodput_counts_only_pairs_answered_200_within_their_budget() -> None:
    samples = _samples(
        (10, 200, 0.5, 50),  # within 1 s: 500 pairs
        (2, 200, 1.5, 200),  # 200 items have a 2 s budget: 400 pairs
        (3, 200, 1.2, 50),  # late: not goodput
        (4, 504, 5.0, 50),  # admitted, not answered
        (5, 429, 0.01, 50),  # refused
    )
    f = _figures(samples, elapsed_s=9.0)
    assert f.within_slo == 12
    assert f.goodput_pairs_per_s == pytest.approx(900 / 9.0, abs=0.1)
    assert f.refused == 5 and f.sent == 24 and f.refused_share == pytest.approx(5 / 24)
    # p99 over admitted (200 and 504): the 504s at 5 s are 5x their budget.
    assert f.p99_over_budget == pytest.approx(5.0)


def test_half_load_holds_at_one_percent_refused_and_not_above() -> None:
    held = _figures(_samples((99, 200, 0.4, 50), (1, 429, 0.01, 50)))
    assert overload.half_load_failures(held) == []
    refused = _figures(_samples((98, 200, 0.4, 50), (2, 429, 0.01, 50)))
    assert overload.half_load_failures(refused) == ["2.0% refused (> 1%)"]


def test_half_load_fails_on_a_slow_admitted_p99_a_lost_request_or_a_late_answer() -> None:
    slow = _figures(_samples((95, 200, 0.4, 50), (5, 200, 1.3, 50)))
    assert overload.half_load_failures(slow) == ["admitted p99 130% of its SLO budget"]
    lost = _figures(_samples((99, 200, 0.4, 50), (1, 0, 30.0, 50)))
    assert "1 lost" in overload.half_load_failures(lost)
    assert "1 answered after their deadline" in overload.half_load_failures(lost)
    unsent = _figures(_samples((100, 200, 0.4, 50)), not_sent=3)
    assert overload.half_load_failures(unsent) == ["3 not sent (client cap)"]
    nothing = _figures(_samples((10, 429, 0.01, 50)))
    assert "nothing admitted" in overload.half_load_failures(nothing)


def test_overload_needs_goodput_of_ninety_percent_of_capacity() -> None:
    # 18 requests of 50 pairs within budget over 10 s: 90 pairs/s.
    f = _figures(_samples((18, 200, 0.5, 50), (40, 429, 0.02, 50)))
    assert overload.overload_failures(f, 100.0, 1.0, 10.0) == []
    assert overload.overload_failures(f, 101.0, 1.0, 10.0) == [
        "goodput 90.0 pairs/s < 90% of capacity 101.0"
    ]


def test_overload_fails_on_slow_recovery_memory_growth_or_a_status_not_allowed() -> None:
    f = _figures(_samples((18, 200, 0.5, 50), (1, 500, 0.1, 50)))
    failures = overload.overload_failures(f, 50.0, None, overload.RSS_GROWTH_LIMIT_MIB + 1)
    assert failures == [
        "statuses [500] not allowed",
        "normal latency after never (30 s)",
        f"RSS grew {overload.RSS_GROWTH_LIMIT_MIB + 1:.0f} MiB",
    ]
    assert overload.overload_failures(f, 50.0, overload.RECOVERY_LIMIT_S + 0.1, None)[-1] == (
        "normal latency after 5.1 s"
    )


def test_lone_request_per_pair_cost_against_the_raw_session() -> None:
    # The raw session at 200 pairs/s: 5 ms a pair. A 10-item request in 65 ms: 6.5 ms a pair.
    ratio = traffic.per_pair_ratio(0.065, 10, 200.0)
    assert ratio == pytest.approx(1.3)
    assert traffic.lone_request_failures([200] * 20, ratio) == []
    slower = traffic.per_pair_ratio(0.070, 10, 200.0)
    assert traffic.lone_request_failures([200] * 20, slower) == [
        "1.40x the raw session's per-pair cost (> 1.3x)"
    ]
    assert traffic.lone_request_failures([200] * 19 + [429], ratio) == ["statuses {429: 1}"]
    assert traffic.lone_request_failures([503] * 20, None) == [
        "statuses {503: 20}",
        "no answer to time",
    ]


def test_peak_is_the_best_closed_loop_and_is_judged_against_the_raw_ceiling() -> None:
    assert traffic.peak_throughput(180.0, {6: 170.0, 12: 175.0}) == (3, 180.0)
    assert traffic.peak_throughput(170.0, {6: 190.0, 12: 185.0}) == (6, 190.0)
    assert traffic.ceiling_failures(180.0, 200.0) == []
    assert traffic.ceiling_failures(179.0, 200.0) == ["service / raw ceiling 0.90 (< 0.9)"]


def test_cache_row_needs_fast_repeats_that_are_all_hits() -> None:
    fast = [0.002] * 30 + [0.009] * 20  # p50 2 ms
    assert traffic.cache_failures(fast, [200] * 50, 1000, 1000) == []
    slow = [0.006] * 50
    assert traffic.cache_failures(slow, [200] * 50, 1000, 1000) == ["p50 6.0 ms > 5 ms"]
    assert traffic.cache_failures(fast, [200] * 50, 999, 1000) == [
        "hit rate of the repeats 99.9% (< 100%)"
    ]
    assert traffic.cache_failures(fast, [200] * 50, 0, 0) == [f"no {traffic.CACHE_LOOKUPS} counted"]
    assert traffic.cache_failures([], [429] * 50, 0, 0)[:2] == [
        "statuses {429: 50}",
        "no answer to time",
    ]


def test_fanout_holds_only_when_every_request_of_every_run_is_200() -> None:
    full = [Counter({200: 64}) for _ in range(10)]
    assert traffic.fanout_failures(full, 64) == []
    refused = [*full[:9], Counter({200: 58, 429: 6})]
    assert traffic.fanout_failures(refused, 64) == [
        "run 10: 58/64 answered 200 ({200: 58, 429: 6})"
    ]
    # A run that got fewer answers than it sent (no answer is counted as status 0 by the
    # sender, but a short count must fail too).
    short = [Counter({200: 63}), *full[1:]]
    assert traffic.fanout_failures(short, 64) == ["run 1: 63/64 answered 200 ({200: 63})"]


def test_session_provider_maps_ort_names_to_the_scorer_choice() -> None:
    assert traffic.session_provider("CPUExecutionProvider") == "cpu"
    assert traffic.session_provider("CUDAExecutionProvider") == "cuda"


def test_traffic_is_a_scenario_of_its_own() -> None:
    assert parse_args(["--only", "traffic"]).only == ["traffic"]
    assert "traffic" in parse_args([]).only


def test_the_server_side_p99_is_read_from_the_samples_that_carry_it() -> None:
    samples = [Sample("score", 50, 1.3, 200, server_s=0.8) for _ in range(50)]
    samples += [Sample("score", 50, 0.02, 429, server_s=0.001) for _ in range(10)]
    samples += [Sample("score", 50, 0.4, 200) for _ in range(5)]  # no header read
    f = _figures(samples)
    assert f.p99_over_budget == pytest.approx(1.3)
    # Refusals are not admitted; samples without the header do not count.
    assert f.server_p99_over_budget == pytest.approx(0.8)
    assert _figures(_samples((5, 200, 0.4, 50))).server_p99_over_budget is None


def test_the_lone_request_row_names_the_raw_sessions_best_at_small_batches() -> None:
    ceiling = {"by_batch_size": {"1": 200.0, "8 sorted": 560.0, "8": 540.0, "32": 875.0}}
    assert traffic.small_batch_pairs_per_s(ceiling, 10) == (560.0, "batch 8 sorted")
    assert traffic.small_batch_pairs_per_s(ceiling, 1) == (200.0, "batch 1")
    assert traffic.small_batch_pairs_per_s({"by_batch_size": {"32": 1.0}}, 10) is None
