"""Admission: queue capacity, the latency forecast, the burst allowance, Retry-After.

No model and no clock: the forecast is fed the batches a worker would report, and the
burst gap is judged on a clock the test advances.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry

from service.admission import Admission, AdmissionConfig, ThroughputForecast
from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.metrics import Metrics

# Batches of 8 pairs, a budget of 50 ms per 100 items.
LATENCY = AdmissionConfig(latency_s=0.05, latency_items=100, batch_pairs=8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FixedForecast:
    """A stand-in forecast: ``seconds_per_pair`` for every pair, no overhead."""

    def __init__(self, seconds_per_pair: float, calibrated: bool = True) -> None:
        self.seconds_per_pair = seconds_per_pair
        self.calibrated = calibrated
        self.overhead_s = 0.0

    @property
    def pairs_per_s(self) -> float:
        return 1 / self.seconds_per_pair

    def queue_s(self, pairs: int) -> float:
        return pairs * self.seconds_per_pair

    def seed(self, pairs_per_s: float) -> None:
        pass

    def observe_batch(self, pairs: int, started: float, elapsed_s: float, backlogged: bool) -> None:
        pass

    def note_overhead(self, seconds: float) -> None:
        self.overhead_s = seconds


def full_batches(forecast: ThroughputForecast, n: int, pairs: int, seconds: float) -> None:
    """``n`` batches of ``pairs`` back to back, ``seconds`` each, with work queued behind."""
    for i in range(n):
        forecast.observe_batch(pairs, 10.0 + i * seconds, seconds, backlogged=True)


def test_queue_capacity_refuses_at_once_with_retry_after() -> None:
    registry = CollectorRegistry()
    admission = Admission(AdmissionConfig(max_queue_pairs=10), metrics=Metrics(registry))
    admission.forecast.seed(2.0)  # 2 pairs/s: 8 pairs ahead take 4 s
    with admission.reserve(8):
        assert registry.get_sample_value("relevance_inflight_pairs") == 8
        with pytest.raises(Overloaded) as excinfo, admission.reserve(4):
            pass
        assert "queue full" in excinfo.value.message
        assert excinfo.value.headers() == {"Retry-After": "4"}
        with admission.reserve(2):  # exactly fits
            assert admission.reserved_pairs == 10
    assert admission.reserved_pairs == 0
    assert registry.get_sample_value("relevance_inflight_pairs") == 0
    with pytest.raises(PayloadTooLarge) as too_large, admission.reserve(11):
        pass
    assert too_large.value.field == "items"


def test_a_refused_request_holds_nothing_and_an_error_inside_releases() -> None:
    admission = Admission(AdmissionConfig(max_queue_pairs=4))
    with pytest.raises(RuntimeError), admission.reserve(3):
        raise RuntimeError("the handler failed")
    assert admission.reserved_pairs == 0
    with admission.reserve(4):
        assert admission.reserved_pairs == 4


def test_closed_admission_answers_not_ready_but_lets_held_reservations_finish() -> None:
    admission = Admission()

    async def main() -> None:
        with admission.reserve(3):
            admission.close()
            with pytest.raises(NotReady), admission.reserve(1):
                pass
            assert not await admission.wait_idle(0.01)  # 3 pairs still held
        assert await admission.wait_idle(0.01)

    asyncio.run(main())


def test_latency_budget_refuses_what_would_miss_it() -> None:
    admission = Admission(AdmissionConfig(**{**LATENCY.__dict__, "free_batches": 0}))
    assert not admission.saturated() and admission.forecast.pairs_per_s == 0
    with admission.reserve(5), admission.reserve(500):  # nothing measured: only capacity
        pass
    admission.forecast.seed(100.0)  # warm-up's figure
    with admission.reserve(5):  # an empty queue always admits
        # 5 ahead + 2 = 70 ms at 100 pairs/s > the 50 ms budget
        with pytest.raises(Overloaded) as excinfo, admission.reserve(2):
            pass
        assert excinfo.value.message.startswith("overloaded: 5 pairs ahead would take 0.05 s")
        assert admission.saturated()  # even one pair: 60 ms
        assert admission.retry_after_s() == 1
    assert not admission.saturated()  # an empty queue again


def test_a_larger_request_gets_a_proportionally_larger_budget() -> None:
    # 50 ms per 4 items at 100 pairs/s.
    config = AdmissionConfig(latency_s=0.05, latency_items=4, batch_pairs=8, free_batches=0)
    admission = Admission(config)
    admission.forecast.seed(100.0)
    with admission.reserve(1), admission.reserve(8):  # 90 ms within 8 items' 100 ms
        pass
    with pytest.raises(Overloaded), admission.reserve(2), admission.reserve(4):  # 60 > 50 ms
        pass


def test_budget_includes_the_measured_request_overhead() -> None:
    admission = Admission(AdmissionConfig(**{**LATENCY.__dict__, "free_batches": 0}))
    admission.forecast.seed(1000.0)
    with admission.reserve(10):
        with admission.reserve(10):  # 20 ms of pairs
            pass
        admission.note_overhead(0.04)  # + 40 ms outside the model: past the budget
        with pytest.raises(Overloaded), admission.reserve(10):
            pass
    assert admission.load() == {
        "reserved_pairs": 0,
        "measured_pairs_per_s": 1000.0,
        "request_overhead_ms": 40.0,
    }


def test_forecast_measures_large_batches_and_ignores_small_ones_after() -> None:
    forecast = ThroughputForecast(batch_pairs=8)
    forecast.seed(100.0)
    forecast.seed(5.0)  # a seed never replaces a figure
    assert forecast.pairs_per_s == 100.0 and not forecast.calibrated
    forecast.observe_batch(1, 0.0, 0.1, backlogged=False)  # small, before any large one
    assert forecast.pairs_per_s == pytest.approx(10.0) and not forecast.calibrated
    full_batches(forecast, 3, pairs=8, seconds=0.01)  # 800 pairs/s
    assert forecast.calibrated and forecast.pairs_per_s == pytest.approx(800.0)
    forecast.observe_batch(1, 20.0, 0.5, backlogged=False)  # light load: not what counts
    assert forecast.pairs_per_s == pytest.approx(800.0)
    assert forecast.queue_s(400) == pytest.approx(0.5)
    assert ThroughputForecast().queue_s(1) == math.inf


def test_forecast_times_a_backlog_from_the_end_of_the_previous_batch() -> None:
    forecast = ThroughputForecast(batch_pairs=8)
    forecast.observe_batch(8, 0.0, 0.01, backlogged=True)
    # The next batch started 40 ms after the last ended (padding, a starved loop): the
    # queue drains at 8 pairs per 50 ms, not per 10 ms.
    forecast.observe_batch(8, 0.05, 0.01, backlogged=True)
    assert forecast.pairs_per_s == pytest.approx(8 / (0.8 * 0.01 + 0.2 * 0.05))


def test_burst_allowance_only_for_a_burst_from_idle() -> None:
    clock = Clock()
    config = AdmissionConfig(
        latency_s=0.05, latency_items=100, batch_pairs=8, free_batches=8, burst_gap_s=0.1
    )
    admission = Admission(config, clock=clock)
    full_batches(admission.forecast, 3, pairs=8, seconds=0.01)  # 800 pairs/s: 40 in budget
    with admission.reserve(35):  # finds the queue empty: a burst starts
        clock.now += 0.05
        with admission.reserve(10):  # within the gap: part of the burst, past the budget
            pass
        clock.now += 0.15  # a gap longer than the burst's: it is over
        with pytest.raises(Overloaded), admission.reserve(10):  # spread out: by the rate
            pass
    with admission.reserve(35):  # idle again: a new burst
        clock.now += 0.01
        with admission.reserve(10):
            pass
        clock.now += 0.01
        # Past the 64 free pairs the burst is judged by the forecast too.
        with pytest.raises(Overloaded), admission.reserve(30):
            pass


def test_an_uncalibrated_forecast_always_admits_a_few_full_batches() -> None:
    # A seeded 10 pairs/s would refuse 6 pairs behind 6, but 12 pairs fit in the free
    # full batches (2 x 8), which a burst runs far faster per pair.
    clock = Clock()
    config = AdmissionConfig(latency_s=0.05, latency_items=100, batch_pairs=8, free_batches=2)
    admission = Admission(config, clock=clock)
    admission.forecast.seed(10.0)
    with admission.reserve(6):
        clock.now += 1.0  # not a burst: the allowance holds because nothing was measured
        with admission.reserve(6):
            assert admission.reserved_pairs == 12
            with pytest.raises(Overloaded), admission.reserve(6):  # 18 > 16 free pairs
                pass


def test_the_forecast_is_replaceable() -> None:
    forecast = FixedForecast(seconds_per_pair=0.125)
    admission = Admission(AdmissionConfig(latency_s=1.0, free_batches=0), forecast)
    with admission.reserve(4):
        with admission.reserve(4):  # 1.0 s: just within
            pass
        with pytest.raises(Overloaded) as excinfo, admission.reserve(5):  # 1.125 s
            pass
        assert excinfo.value.retry_after_s == 1  # ceil(4 pairs x 0.125 s)
    with admission.reserve(100):
        assert admission.retry_after_s() == 13 and admission.saturated()
    with admission.reserve(4000):
        assert admission.retry_after_s() == 60  # capped
    admission.note_overhead(0.25)
    assert forecast.overhead_s == 0.25
