"""Admission control: whether a scoring request's pairs may queue, and when to retry.

One :class:`Admission` object is asked by everyone on the request path: the load-shedding
middleware (``saturated``, before a body is read), the engine (``reserve``, once a request
is parsed), the request pipeline (``note_overhead``, once it is answered) and ``/info``
(``load``). Nothing else keeps admission state.

The time a request would wait comes from a :class:`Forecast`. Today's is
:class:`ThroughputForecast`: pairs per second measured on the batches the inference worker
runs, plus the time requests spend outside the model. It is a separate object so that a
cost model (per padded shape, measured at warm-up) can replace it without touching the
admission rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.metrics import Metrics


@dataclass(frozen=True)
class AdmissionConfig:
    """Admission limits; plain values unpacked from the settings."""

    max_queue_pairs: int = 4096
    # Latency-aware admission (0 = off): a request of n pairs is refused (429) when the
    # admitted pairs plus its own, at the forecast's throughput, plus the measured
    # per-request overhead, would take longer than latency_s * max(1, n / latency_items).
    # The app sets it from the SLO, so that under overload the requests it accepts are
    # answered within the SLO instead of all of them queueing past it. An empty queue
    # always admits.
    latency_s: float = 0.0
    latency_items: int = 100
    # Burst allowance: pairs up to free_batches full batches (of batch_pairs) are admitted
    # whatever the forecast says, while it has not been measured on large batches yet, and
    # for a burst from idle: requests that follow one that found the queue empty, each
    # within burst_gap_s of the one before (a page's fan-out arrives at once). Steady
    # overload arrives spread out, so a chain of close arrivals from idle is rare there
    # and it is judged by the forecast.
    free_batches: int = 4
    batch_pairs: int = 64
    burst_gap_s: float = 0.005


class Forecast(Protocol):
    """How long queued work will take: the one source of time admission uses."""

    @property
    def pairs_per_s(self) -> float:
        """Throughput the forecast assumes (0 before anything was measured or seeded)."""
        ...

    @property
    def overhead_s(self) -> float:
        """Time a request spends outside the queue and the model."""
        ...

    @property
    def calibrated(self) -> bool:
        """Whether the forecast was measured under load (before that a burst is admitted)."""
        ...

    def queue_s(self, pairs: int) -> float:
        """Seconds until ``pairs`` queued pairs are scored (``inf`` when unknown)."""
        ...

    def seed(self, pairs_per_s: float) -> None:
        """A first figure (from warm-up), used until batches have been measured."""
        ...

    def observe_batch(self, pairs: int, started: float, elapsed_s: float, backlogged: bool) -> None:
        """A batch of ``pairs`` ran from ``started`` for ``elapsed_s``; ``backlogged``: work
        was still queued when it ended."""
        ...

    def note_overhead(self, seconds: float) -> None:
        """One request's time outside the queue and the model."""
        ...


class ThroughputForecast:
    """Pairs per second measured on the batches that ran, and the mean request overhead.

    Small batches (light load) understate what the model does when the queue is full,
    which is when admission needs the number: once large batches (a quarter of
    ``batch_pairs`` or more) were seen, only they update it. While work is queued, a
    batch is timed from the end of the previous one, so the rate includes the pipeline's
    gaps (padding, hand-offs, a starved event loop): the rate at which pairs really leave
    the queue.
    """

    def __init__(self, batch_pairs: int = 64) -> None:
        self._large_pairs = max(1, batch_pairs // 4)
        self._pairs_per_s = 0.0
        self._avg_pairs = 0.0
        self._avg_span_s = 0.0
        self._overhead_s = 0.0
        self._from_large = False
        self._last_end = 0.0
        self._backlogged = False  # work was queued when the last batch ended

    @property
    def pairs_per_s(self) -> float:
        return self._pairs_per_s

    @property
    def overhead_s(self) -> float:
        return self._overhead_s

    @property
    def calibrated(self) -> bool:
        return self._from_large

    def queue_s(self, pairs: int) -> float:
        return pairs / self._pairs_per_s if self._pairs_per_s > 0 else math.inf

    def seed(self, pairs_per_s: float) -> None:
        if self._pairs_per_s == 0 and pairs_per_s > 0:
            self._pairs_per_s = pairs_per_s

    def observe_batch(self, pairs: int, started: float, elapsed_s: float, backlogged: bool) -> None:
        ended = started + elapsed_s
        span = ended - self._last_end if self._backlogged else elapsed_s
        self._last_end = ended
        self._backlogged = backlogged
        large = pairs >= self._large_pairs
        if span <= 0 or not (large or not self._from_large):
            return
        # Pairs and seconds are averaged apart and divided (not the rates averaged): a
        # slow batch then weighs by the time it took, so the rate is not optimistic.
        if (large and not self._from_large) or self._avg_span_s == 0:
            self._avg_pairs, self._avg_span_s = float(pairs), span
        else:
            self._avg_pairs = 0.8 * self._avg_pairs + 0.2 * pairs
            self._avg_span_s = 0.8 * self._avg_span_s + 0.2 * span
        self._pairs_per_s = self._avg_pairs / self._avg_span_s
        self._from_large = self._from_large or large

    def note_overhead(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._overhead_s = 0.8 * self._overhead_s + 0.2 * seconds if self._overhead_s else seconds


class Admission:
    """Reserves queue capacity for requests, or refuses them at once with ``Retry-After``."""

    def __init__(
        self,
        config: AdmissionConfig | None = None,
        forecast: Forecast | None = None,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or AdmissionConfig()
        self.forecast: Forecast = forecast or ThroughputForecast(self.config.batch_pairs)
        self._metrics = metrics
        self._clock = clock
        self._reserved_pairs = 0
        self._idle = asyncio.Event()  # set while no pairs are reserved
        self._idle.set()
        self._closing = False
        self._burst_open = False
        self._last_arrival_at = -math.inf

    @property
    def reserved_pairs(self) -> int:
        """Pairs admitted and not yet answered."""
        return self._reserved_pairs

    def close(self) -> None:
        """Admit nothing more (shutdown); reservations held run to their end."""
        self._closing = True

    @contextlib.contextmanager
    def reserve(self, n_pairs: int) -> Iterator[None]:
        """Hold ``n_pairs`` of queue capacity for one request, or fail fast."""
        if self._closing:
            raise NotReady("the server is shutting down")
        capacity = self.config.max_queue_pairs
        if n_pairs > capacity:
            raise PayloadTooLarge(
                f"items: {n_pairs} items exceed the queue capacity of {capacity} pairs",
                field="items",
            )
        if self._reserved_pairs + n_pairs > capacity:
            raise Overloaded(
                f"queue full ({self._reserved_pairs} of {capacity} pairs in flight); retry later",
                retry_after_s=self.retry_after_s(),
            )
        now = self._clock()
        if self._reserved_pairs == 0:
            self._burst_open = True
        elif now - self._last_arrival_at > self.config.burst_gap_s:
            self._burst_open = False
        self._last_arrival_at = now
        if not self._within_latency(n_pairs):
            rate = self.forecast.pairs_per_s
            raise Overloaded(
                f"overloaded: {self._reserved_pairs} pairs ahead would take "
                f"{self.forecast.queue_s(self._reserved_pairs):.2f} s at "
                f"{rate:.0f} pairs/s; retry later",
                retry_after_s=self.retry_after_s(),
            )
        self._reserved_pairs += n_pairs
        self._idle.clear()
        self._gauge()
        try:
            yield
        finally:
            self._reserved_pairs -= n_pairs
            if self._reserved_pairs == 0:
                self._idle.set()
            self._gauge()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every admitted request has been answered; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def saturated(self) -> bool:
        """Whether even a one-pair request would be refused for latency right now."""
        return not self._within_latency(1)

    def retry_after_s(self) -> int:
        """Seconds until the admitted pairs are likely done (for ``Retry-After``)."""
        wait_s = self.forecast.queue_s(self._reserved_pairs)
        if not math.isfinite(wait_s):
            return 1
        return int(min(60, max(1, math.ceil(wait_s))))

    def note_overhead(self, seconds: float) -> None:
        """Time a request spent outside the queue and the model (parsing, tokenizing,
        answering), as the request pipeline measured it; admission budgets for it too."""
        self.forecast.note_overhead(seconds)

    def load(self) -> dict[str, Any]:
        """What admission looks at right now (``/info``; operators, the reliability run)."""
        return {
            "reserved_pairs": self._reserved_pairs,
            "measured_pairs_per_s": round(self.forecast.pairs_per_s, 1),
            "request_overhead_ms": round(self.forecast.overhead_s * 1000, 1),
        }

    def _within_latency(self, n_pairs: int) -> bool:
        """Whether ``n_pairs`` more would be answered within the admission latency budget."""
        cfg = self.config
        forecast = self.forecast
        if cfg.latency_s <= 0 or self._reserved_pairs == 0 or forecast.pairs_per_s <= 0:
            return True
        # Burst allowance (see AdmissionConfig): before large batches are timed the rate
        # understates a burst packed into full batches; after, only a burst from idle gets
        # it, so sustained overload cannot keep that many batches queued past the budget.
        free_pairs = cfg.free_batches * cfg.batch_pairs
        if (self._burst_open or not forecast.calibrated) and (
            self._reserved_pairs + n_pairs <= free_pairs
        ):
            return True
        budget_s = cfg.latency_s * max(1.0, n_pairs / cfg.latency_items)
        wait_s = forecast.queue_s(self._reserved_pairs + n_pairs)
        return wait_s + forecast.overhead_s <= budget_s

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.inflight_pairs.set(self._reserved_pairs)
