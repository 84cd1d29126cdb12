"""Admission by cost: the cost model's fit and updates, the completion forecast against it,
the EDF rule (what is due first, what a newcomer may delay), capacity and Retry-After.

No model and no wall clock: the cost model is fitted to runs a test writes down, and time
is a clock the test advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest
from prometheus_client import CollectorRegistry

from service.admission import Admission, AdmissionConfig
from service.cost_model import CostModel, TimedRun
from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.metrics import Metrics

A_S = 0.002  # seconds per batch
B_S = 0.0001  # seconds per padded token: a 10-token pair costs 1 ms in a full batch
BATCH = 8


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exact_runs(a: float = A_S, b: float = B_S) -> list[TimedRun]:
    """Timed runs of a machine whose batches cost exactly ``a + b * rows * width``."""
    return [
        TimedRun(rows, width, a + b * rows * width) for rows in (1, 4, 8) for width in (16, 32, 64)
    ]


def fitted(config: AdmissionConfig, clock: Clock | None = None) -> Admission:
    """Admission whose cost model was fitted to :func:`exact_runs`, with no padding."""
    admission = Admission(config, clock=clock or Clock())
    admission.fit(exact_runs())
    assert isinstance(admission.forecast, CostModel)
    admission.forecast.padding_factor = 1.0
    return admission


def work_s(pairs: int, tokens: float) -> float:
    return math.ceil(pairs / BATCH) * A_S + B_S * tokens


# -------------------------------------------------------------------------- the cost model
def test_warmup_fit_recovers_the_cost_of_a_batch_and_of_a_token() -> None:
    cost = CostModel(batch_pairs=BATCH)
    assert not cost.calibrated and cost.work_s(1, 10) == math.inf
    cost.fit(exact_runs())
    assert cost.a == pytest.approx(A_S, rel=1e-6) and cost.b == pytest.approx(B_S, rel=1e-6)
    cost.padding_factor = 1.0
    # 20 pairs of 10 tokens: 3 batches of at most 8 and 200 tokens.
    assert cost.work_s(20, 200) == pytest.approx(3 * A_S + 200 * B_S)
    assert cost.work_s(0, 0) == 0.0


def test_a_superlinear_machine_gets_the_line_through_the_origin() -> None:
    # Cost grows with the square of the tokens: the best line has a negative intercept.
    runs = [TimedRun(rows, 10, 1e-6 * (rows * 10) ** 2) for rows in (1, 2, 4, 8)]
    cost = CostModel(batch_pairs=BATCH)
    cost.fit(runs)
    sxy = sum(r.padded_tokens * r.seconds for r in runs)
    sxx = sum(r.padded_tokens**2 for r in runs)
    assert cost.a == 0.0 and cost.b == pytest.approx(sxy / sxx)


def test_the_model_follows_the_machine_from_the_batches_it_runs() -> None:
    cost = CostModel(batch_pairs=BATCH, forgetting=0.9)
    cost.fit(exact_runs())
    # The machine halves its speed (a neighbour takes a core): batches of varied shapes.
    t = 0.0
    for i in range(60):
        rows, width = (8, 16 + 16 * (i % 3))
        seconds = 2 * (A_S + B_S * rows * width)
        cost.observe_batch(rows, width, rows * width, t, seconds, backlogged=False)
        t += 1.0
    assert cost.b == pytest.approx(2 * B_S, rel=0.05)
    assert cost.a == pytest.approx(2 * A_S, rel=0.25)
    assert cost.batches_seen == 60


def test_one_shape_only_scales_the_model_to_what_it_costs() -> None:
    cost = CostModel(batch_pairs=BATCH, forgetting=0.5)
    cost.fit(exact_runs())
    for i in range(30):  # one shape, 1 ms slower than the fit says
        cost.observe_batch(8, 32, 256, float(i), A_S + B_S * 256 + 0.001, backlogged=False)
    assert cost.b > 0 and cost.a >= 0
    assert cost.a + cost.b * 256 == pytest.approx(A_S + B_S * 256 + 0.001, rel=0.05)


def test_while_backlogged_a_batch_is_timed_from_the_end_of_the_one_before() -> None:
    cost = CostModel(batch_pairs=BATCH)
    cost.observe_batch(8, 10, 80, 0.0, 0.01, backlogged=True)
    # The next batch ran 10 ms but started 30 ms after the last ended (a starved loop):
    # the queue drains 80 tokens per 40 ms.
    cost.observe_batch(8, 10, 80, 0.04, 0.01, backlogged=True)
    # (Weighted toward the newer batch: the older one has decayed once.)
    assert cost.a + cost.b * 80 == pytest.approx((0.01 + 0.04) / 2, rel=0.02)


def test_with_instances_side_by_side_a_batch_costs_its_share_of_the_throughput() -> None:
    cost = CostModel(batch_pairs=BATCH, forgetting=0.5)
    cost.instances = 2
    # Alone, a batch of 20 ms takes 10 ms of what two sessions side by side can do.
    for i in range(20):
        cost.observe_batch(8, 10, 80, float(i), 0.02, backlogged=False)
    assert cost.a + cost.b * 80 == pytest.approx(0.01, rel=0.02)
    # Backlogged, two sessions' batches of 20 ms end 10 ms apart: the queue drains one
    # batch per 10 ms, whatever order they end in (an earlier end is not a negative cost).
    cost = CostModel(batch_pairs=BATCH, forgetting=0.5)
    cost.instances = 2
    for k in range(1, 21):
        end = 100.0 + 0.01 * k
        cost.observe_batch(8, 10, 80, end - 0.02, 0.02, backlogged=True)
    assert cost.a + cost.b * 80 == pytest.approx(0.01, rel=0.02)
    seen = cost.batches_seen
    cost.observe_batch(8, 10, 80, end - 0.025, 0.02, backlogged=True)  # ended 5 ms earlier
    assert cost.batches_seen == seen
    assert cost.a + cost.b * 80 == pytest.approx(0.01, rel=0.02)


def test_padding_and_characters_per_token_are_measured() -> None:
    cost = CostModel(batch_pairs=BATCH, chars_per_token=4.0, padding_factor=1.0)
    for i in range(50):
        cost.observe_batch(4, 10, 20, float(i), 0.01, backlogged=False)  # half padding
    assert cost.padding_factor == pytest.approx(2.0, rel=0.01)
    for _ in range(50):
        cost.note_tokens(chars=600, tokens=100)
    assert cost.chars_per_token == pytest.approx(6.0, rel=0.01)
    assert cost.pair_tokens(12, 48) == pytest.approx(60 / 6 + CostModel.SPECIAL_TOKENS, rel=0.01)
    assert CostModel(max_pair_tokens=64).pair_tokens(10, 10_000) == 64  # the model's length


# -------------------------------------------------------------------------- the rule
def test_a_request_is_admitted_exactly_when_its_forecast_meets_its_due_time() -> None:
    clock = Clock()
    # Due 50 ms after arrival per 100 items.
    admission = fitted(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH), clock)
    with admission.reserve(8, tokens=200):  # 2 + 20 = 22 ms of work, due in 50 ms
        # 8 pairs of 10 tokens more: 2 batches (4 ms) + 280 tokens (28 ms) = 32 ms <= 50 ms
        with admission.reserve(8, tokens=80) as ticket:
            assert admission.forecast_s(ticket) == pytest.approx(work_s(16, 280))
        # 8 pairs of 25 tokens: 4 + 40 ms = 44 ms: admitted; 8 of 40 tokens: 4 + 52 > 50 ms
        with admission.reserve(8, tokens=200):
            pass
        with pytest.raises(Overloaded) as excinfo, admission.reserve(8, tokens=320):
            pass
        assert excinfo.value.message.startswith("overloaded: 8 pairs due first would take 0.06 s")
        assert excinfo.value.headers() == {"Retry-After": "1"}
        # The budget counts from arrival: 30 ms already spent leave 20 ms (due before the
        # admitted request, so nothing is ahead of it) for 22 ms of work.
        with pytest.raises(Overloaded), admission.reserve(8, tokens=200, arrived=clock.now - 0.03):
            pass
        with admission.reserve(8, tokens=200, arrived=clock.now - 0.025):  # 25 ms left
            pass
    assert admission.reserved_pairs == 0


def test_work_already_scored_no_longer_counts() -> None:
    admission = fitted(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH))
    left = 8
    with admission.reserve(8, tokens=400) as first:  # 42 ms of work
        first.progress = lambda: left
        with pytest.raises(Overloaded), admission.reserve(8, tokens=80):  # 42 + 10 > 50 ms
            pass
        left = 2  # the worker has scored 6 of its 8 pairs: 100 tokens (12 ms) left
        with admission.reserve(8, tokens=80):  # 4 + 18 = 22 ms
            pass


def test_a_larger_request_gets_a_proportionally_larger_budget() -> None:
    clock = Clock()
    admission = fitted(AdmissionConfig(latency_s=0.05, latency_items=4, batch_pairs=BATCH), clock)
    with admission.reserve(1, tokens=300):  # 32 ms
        with admission.reserve(8, tokens=500):  # 8 items: due in 100 ms; 4 + 80 ms of work
            clock.now += 0.084  # answered as forecast (lateness stays 1)
        with pytest.raises(Overloaded), admission.reserve(4, tokens=200):  # 4 + 50 > 50 ms
            pass


def test_a_burst_that_fits_is_admitted_whatever_its_spacing() -> None:
    """A fan-out of 64 requests of 4 short pairs: 32 batches (64 ms) + 2560 tokens (256 ms),
    within each one's budget of 500 ms. Whether they arrive together or spread out, all of
    them are admitted; none of them depends on arriving within some gap of the one before."""
    for gap_s in (0.0, 0.0005, 0.005, 0.05):
        clock = Clock()
        admission = fitted(AdmissionConfig(latency_s=0.5, batch_pairs=BATCH), clock)
        with contextlib.ExitStack() as stack:
            for _ in range(64):
                stack.enter_context(admission.reserve(4, tokens=40))
                clock.now += gap_s
            assert admission.reserved_pairs == 256, gap_s


def test_a_burst_that_does_not_fit_is_cut_where_it_stops_fitting() -> None:
    clock = Clock()
    # Each request of 4 pairs of 10 tokens: 2 ms (its half batch) + 4 ms; due in 50 ms.
    admission = fitted(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH), clock)
    admitted = refused = 0
    with contextlib.ExitStack() as stack:
        for _ in range(40):
            try:
                stack.enter_context(admission.reserve(4, tokens=40))
                admitted += 1
            except Overloaded:
                refused += 1
    # k requests: ceil(4k / 8) * 2 ms + 4k ms <= 50 ms holds up to k = 10.
    assert (admitted, refused) == (10, 30)


def test_edf_a_newcomer_due_first_jumps_ahead_but_may_not_make_others_late() -> None:
    clock = Clock()
    admission = fitted(AdmissionConfig(latency_s=1.0, batch_pairs=BATCH), clock)
    later = clock.now + 0.05
    with admission.reserve(8, tokens=300, deadline=later):  # 32 ms of work, due in 50 ms
        # Due in 20 ms with 12 ms of work: due first, so nothing is ahead of it; but the
        # admitted request would finish at 44 ms... still within its 50 ms: admitted.
        with admission.reserve(8, tokens=100, deadline=clock.now + 0.02) as early:
            assert admission.forecast_s(early) == pytest.approx(work_s(8, 100))
        # 24 ms of work due in 30 ms fits alone, but pushes the admitted one to 56 ms > 50 ms.
        with (
            pytest.raises(Overloaded) as excinfo,
            admission.reserve(8, tokens=220, deadline=clock.now + 0.03),
        ):
            pass
        assert "would make an admitted one, due in 0.05 s, late" in excinfo.value.message
        # A request due after everything else is only judged by its own forecast.
        with admission.reserve(8, tokens=100, deadline=clock.now + 0.1):
            pass


def test_an_empty_queue_or_an_unmeasured_model_always_admits() -> None:
    clock = Clock()
    admission = Admission(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH), clock=clock)
    assert not admission.saturated()
    with admission.reserve(5), admission.reserve(500):  # nothing measured: only capacity
        pass
    admission.fit(exact_runs())
    # Alone, it is served as fast as the model can, however late that is.
    with admission.reserve(1000, tokens=1e6, deadline=clock.now + 0.01):
        # Even one pair would wait behind its 100 s, being due later.
        assert admission.saturated()
        with pytest.raises(Overloaded), admission.reserve(1, tokens=10):
            pass
    assert not admission.saturated()


def test_budget_includes_the_measured_request_overhead() -> None:
    admission = fitted(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH))
    with admission.reserve(8, tokens=100):  # 12 ms
        with admission.reserve(8, tokens=100):  # 24 ms
            pass
        admission.note_overhead(0.03)  # + 30 ms outside the model: past the budget
        with pytest.raises(Overloaded), admission.reserve(8, tokens=100):
            pass
    load = admission.load()
    assert load["reserved_pairs"] == 0 and load["request_overhead_ms"] == 30.0
    assert load["cost_model"]["batch_ms"] == pytest.approx(A_S * 1000)
    assert load["cost_model"]["token_us"] == pytest.approx(B_S * 1e6)


def test_tokenized_requests_replace_the_estimate() -> None:
    admission = fitted(AdmissionConfig(latency_s=0.05, batch_pairs=BATCH))
    estimate = admission.estimate_tokens("drill", ["a" * 35] * 8)  # (5 + 35) / 4 + 3 each
    assert estimate == pytest.approx(8 * 13)
    with admission.reserve(8, tokens=estimate) as ticket:
        admission.note_tokens(ticket, chars=8 * 40, tokens=8 * 23)  # 20 real tokens a pair
        assert ticket.tokens == 8 * 23
        assert admission.forecast.chars_per_token < 4.0  # learning toward 2 chars a token


# -------------------------------------------------------------------------- capacity
def test_queue_capacity_refuses_at_once_with_retry_after() -> None:
    registry = CollectorRegistry()
    admission = Admission(AdmissionConfig(max_queue_pairs=10), metrics=Metrics(registry))
    admission.fit([TimedRun(1, 10, 0.5)])  # 50 ms a token: 8 pairs of 10 tokens take 4 s
    assert isinstance(admission.forecast, CostModel)
    admission.forecast.padding_factor = 1.0
    with admission.reserve(8, tokens=80):
        assert registry.get_sample_value("relevance_inflight_pairs") == 8
        with pytest.raises(Overloaded) as excinfo, admission.reserve(4):
            pass
        assert "queue full" in excinfo.value.message
        assert excinfo.value.headers() == {"Retry-After": "4"}
        with admission.reserve(2):  # exactly fits
            assert admission.reserved_pairs == 10
    assert admission.reserved_pairs == 0
    assert registry.get_sample_value("relevance_inflight_pairs") == 0
    assert registry.get_sample_value("relevance_cost_model_token_seconds") == pytest.approx(0.05)
    with pytest.raises(PayloadTooLarge) as too_large, admission.reserve(11):
        pass
    assert too_large.value.field == "items"
    with admission.reserve(10, tokens=1e4):
        assert admission.retry_after_s() == 60  # capped


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


# -------------------------------------------------------------------------- lateness
def test_requests_answered_later_than_forecast_make_admission_stricter() -> None:
    clock = Clock()
    registry = CollectorRegistry()
    admission = Admission(
        AdmissionConfig(latency_s=0.5, batch_pairs=BATCH), metrics=Metrics(registry), clock=clock
    )
    admission.fit(exact_runs())
    admission.forecast.padding_factor = 1.0
    # 8 pairs of 100 tokens: 82 ms of work, answered twice as late as forecast.
    for _ in range(40):
        with admission.reserve(8, tokens=800) as ticket:
            assert ticket.forecast_s == pytest.approx(work_s(8, 800))
            clock.now += 2 * ticket.forecast_s
    assert admission.lateness == pytest.approx(2.0, abs=0.05)
    gauge = registry.get_sample_value("relevance_admission_forecast_lateness_ratio")
    assert gauge == pytest.approx(admission.lateness)
    # By the cost model alone four such requests fit the 500 ms budget (328 ms); at twice
    # that the fourth would finish at 656 ms: it is refused, the third still admitted.
    with admission.reserve(8, tokens=800), admission.reserve(8, tokens=800) as second:
        assert admission.forecast_s(second) == pytest.approx(2 * admission.lateness * 0.082)
        third = admission.reserve(8, tokens=800)
        with third, pytest.raises(Overloaded), admission.reserve(8, tokens=800):
            pass
    assert admission.load()["lateness"] == pytest.approx(admission.lateness, abs=1e-3)


def test_a_request_waiting_past_its_forecast_raises_lateness_before_it_is_answered() -> None:
    """The start of an overload: nothing has been answered yet, but a request that queued
    is already twice as long in the queue as forecast. The next batch's end says so, and
    a newcomer that fitted by the cost model alone is refused."""
    clock = Clock()
    admission = fitted(AdmissionConfig(latency_s=0.5, batch_pairs=BATCH), clock)
    # Batches reported at exactly the fitted cost, so that the cost model stays as it is.
    lone, full = (1, 10, 10, A_S + B_S * 10), (8, 100, 800, A_S + B_S * 800)
    # A short forecast past due is not learned from (its fixed cost dominates).
    with admission.reserve(1, tokens=10) as short:
        assert short.forecast_s < 0.05
        clock.now += 1.0
        admission.observe_batch(*lone[:3], clock.now - lone[3], lone[3], backlogged=False)
    assert admission.lateness == 1.0
    with admission.reserve(8, tokens=800) as first, admission.reserve(8, tokens=800) as second:
        assert first.forecast_s == pytest.approx(0.082)
        assert second.forecast_s == pytest.approx(0.164)
        # 328 ms later both still wait: the second twice its forecast, the first four
        # times, but the first's forecast (under a quarter of the SLO latency) waited
        # behind no queue: light load's noise, not learned from.
        clock.now += 0.328
        admission.observe_batch(*full[:3], clock.now - full[3], full[3], backlogged=True)
        # A step toward it at an answer's weight, each batch's end while it waits.
        assert admission.lateness == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
        for _ in range(50):
            admission.observe_batch(*full[:3], clock.now - full[3], full[3], backlogged=True)
        assert admission.lateness == pytest.approx(2.0, abs=0.01)
        # Two more such requests fit 500 ms by the cost model (246, 328 ms) but not at
        # twice that: the fourth's forecast (328 ms, doubled) passes its budget.
        with admission.reserve(8, tokens=800), pytest.raises(Overloaded):
            admission.reserve(8, tokens=800).__enter__()
    # Nothing is waiting: a batch's end teaches nothing more.
    admission.lateness = 1.0
    admission.observe_batch(*full[:3], clock.now - full[3], full[3], backlogged=False)
    assert admission.lateness == 1.0


def test_lateness_ignores_short_forecasts_and_failed_requests_and_stays_bounded() -> None:
    clock = Clock()
    admission = fitted(AdmissionConfig(latency_s=10.0, batch_pairs=BATCH), clock)
    with admission.reserve(1, tokens=10):  # 3 ms forecast: mostly fixed cost, not learned
        clock.now += 1.0
    assert admission.lateness == 1.0
    with contextlib.suppress(RuntimeError), admission.reserve(8, tokens=8000):  # 802 ms
        clock.now += 10.0
        raise RuntimeError("the model failed: not an answer, nothing learned")
    assert admission.lateness == 1.0
    for _ in range(100):
        with admission.reserve(8, tokens=8000):
            clock.now += 100.0  # absurdly late: the ratio is capped
    assert admission.lateness == pytest.approx(3.0)
    for _ in range(100):
        with admission.reserve(8, tokens=8000):
            pass  # answered at once (the clock does not move): the floor holds
    assert admission.lateness == pytest.approx(0.5)


# -------------------------------------------------------------------------- tail guard
def _tail_admission(clock: Clock, registry: CollectorRegistry | None = None) -> Admission:
    config = AdmissionConfig(latency_s=0.1, batch_pairs=BATCH, tail_quantile=0.9)
    admission = Admission(config, metrics=Metrics(registry) if registry else None, clock=clock)
    admission.fit(exact_runs())
    admission.forecast.padding_factor = 1.0
    return admission


def _overrun(admission: Admission, clock: Clock, ratio: float) -> None:
    """A request admitted near its edge (8 pairs of 85 tokens: forecast 70 ms of its 100 ms
    budget), answered ``ratio`` times its forecast after it arrived. The mean lateness
    (learned from the same answers, tested above) is reset each time, so that the tail
    guard is seen alone."""
    admission.lateness = 1.0
    with admission.reserve(8, tokens=680) as ticket:
        forecast = ticket.predicted_at - ticket.arrived
        assert forecast == pytest.approx(0.07)
        clock.now += ratio * forecast


def test_overruns_of_requests_admitted_near_their_edge_shrink_what_admission_admits() -> None:
    from service.admission import TAIL_MIN_SAMPLES

    clock = Clock()
    registry = CollectorRegistry()
    admission = _tail_admission(clock, registry)
    # Answered 1.25x their forecast: the 90th percentile of overruns is 1.25.
    for _ in range(TAIL_MIN_SAMPLES - 1):
        _overrun(admission, clock, 1.25)
    assert admission.tail == 1.0  # too few answers to judge by
    _overrun(admission, clock, 1.25)
    # The guard takes the spread beyond the mean lateness (which the answers also moved).
    assert admission.lateness > 1.0
    assert admission.tail == pytest.approx(admission.lateness / 1.25)
    admission.lateness = 1.0
    assert not admission.saturated()  # (re-reads the window)
    assert admission.tail == pytest.approx(1 / 1.25)
    assert registry.get_sample_value("relevance_admission_tail_share") == pytest.approx(0.8)
    assert admission.load()["tail"] == pytest.approx(0.8, abs=1e-3)
    assert admission.load()["tail_samples"] == TAIL_MIN_SAMPLES
    # Once lateness has learned the whole overrun, nothing is left for the guard: the
    # forecasts are already scaled by it.
    admission.lateness = 1.25
    admission.saturated()
    assert admission.tail == pytest.approx(1.0)


def test_the_guard_follows_the_window_as_overruns_arrive_and_expire() -> None:
    """The window's quantile is kept between changes (it is read on every request); each
    new answer and each expiry must still move it."""
    from service.admission import TAIL_MIN_SAMPLES, TAIL_WINDOW_S

    clock = Clock()
    admission = _tail_admission(clock)
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.25)
    admission.lateness = 1.0
    admission.saturated()
    assert admission.tail == pytest.approx(1 / 1.25)
    clock.now += TAIL_WINDOW_S / 2
    # Worse answers, as many again: the 90th percentile of the window is now theirs.
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.6)
    admission.lateness = 1.0
    admission.saturated()
    assert admission.tail == pytest.approx(1 / 1.6)
    assert admission.load()["tail_samples"] == 2 * TAIL_MIN_SAMPLES
    # The first answers expire, then the worse ones with them: the full budget again.
    clock.now += TAIL_WINDOW_S / 2 + 0.1
    admission.saturated()
    assert admission.load()["tail_samples"] == TAIL_MIN_SAMPLES
    clock.now += TAIL_WINDOW_S
    admission.saturated()
    assert admission.tail == 1.0 and admission.load()["tail_samples"] == 0


def test_the_guard_refuses_what_would_fit_the_full_budget() -> None:
    from service.admission import TAIL_MIN_SAMPLES, TAIL_WINDOW_S

    clock = Clock()
    admission = _tail_admission(clock)
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.34)
    admission.lateness = 1.0
    admission.saturated()
    assert admission.tail == pytest.approx(1 / 1.34)
    # 48 + 8 pairs of 10 tokens queued (7 batches of 2 ms + 56 ms of tokens = 70 ms); 8
    # more would finish at 80 ms: within their 100 ms due time, past 1 / 1.34 of it.
    with admission.reserve(48, tokens=480), admission.reserve(8, tokens=80):
        with pytest.raises(Overloaded), admission.reserve(8, tokens=80):
            pass
        # Once the overruns are older than the window, the full budget again.
        clock.now += TAIL_WINDOW_S + 1
        with admission.reserve(8, tokens=80):
            assert admission.tail == 1.0


def test_requests_far_from_their_edge_teach_nothing_and_old_lessons_expire() -> None:
    from service.admission import TAIL_MIN_SAMPLES, TAIL_WINDOW_S

    clock = Clock()
    admission = _tail_admission(clock)
    # Alone in the queue, forecast 10 ms of 100: three times late is still on time.
    for _ in range(3 * TAIL_MIN_SAMPLES):
        with admission.reserve(8, tokens=80) as ticket:
            clock.now += 3 * (ticket.predicted_at - ticket.arrived)
    assert admission.tail == 1.0 and admission.load()["tail_samples"] == 0
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.4)
    assert admission.tail < 1.0
    # An overload's lesson is forgotten once the window has passed without new ones.
    clock.now += TAIL_WINDOW_S + 1
    with admission.reserve(1, tokens=10):
        assert admission.tail == 1.0


def test_a_tail_quantile_of_zero_turns_the_guard_off() -> None:
    from service.admission import TAIL_MIN_SAMPLES

    clock = Clock()
    admission = _tail_admission(clock)
    admission.config = AdmissionConfig(latency_s=0.1, batch_pairs=BATCH, tail_quantile=0.0)
    for _ in range(2 * TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.4)
    assert admission.tail == 1.0


def test_the_early_check_holds_a_probe_to_the_guard_from_its_own_arrival() -> None:
    """``saturated`` (before a body is read) judges a one-pair request arriving now: under
    the guard it is refused only when that request would be (a probe counted from another
    instant than now once refused everything whenever the guard was below 1)."""
    from service.admission import TAIL_MIN_SAMPLES

    clock = Clock()
    admission = _tail_admission(clock)
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.34)
    admission.lateness = 1.0
    with admission.reserve(48, tokens=480):  # 60 ms of work: a probe fits 0.75 of 100 ms
        assert admission.tail == pytest.approx(1 / 1.34)
        assert not admission.saturated()
        # 74 ms queued: a probe (a batch of 2 ms at least) would pass 74.6 ms, not 100.
        with admission.reserve(8, tokens=120):
            assert admission.saturated()


def test_a_few_overruns_spread_over_the_window_do_not_arm_the_guard() -> None:
    """Half-load bursts bring a request near its edge now and then; the guard acts only on
    a sustained stream of them (TAIL_MIN_SAMPLES within TAIL_RECENT_S)."""
    from service.admission import TAIL_MIN_SAMPLES, TAIL_RECENT_S, TAIL_WINDOW_S

    clock = Clock()
    admission = _tail_admission(clock)
    gap_s = TAIL_RECENT_S / (TAIL_MIN_SAMPLES - 2)  # fewer than the minimum per recent span
    assert gap_s * TAIL_MIN_SAMPLES < TAIL_WINDOW_S
    for _ in range(TAIL_MIN_SAMPLES):
        _overrun(admission, clock, 1.5)
        clock.now += gap_s
    assert admission.load()["tail_samples"] == TAIL_MIN_SAMPLES
    assert admission.tail == 1.0
