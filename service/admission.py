"""Admission control by cost: a request is admitted when it is forecast to finish within its
SLO budget, behind the work ahead of it in deadline order.

One :class:`Admission` object is asked by everyone on the request path: the load-shedding
middleware (``saturated``, before a body is read), the engine (``reserve``, once a request
is parsed; ``observe_batch`` for each batch the worker runs), the request pipeline
(``note_overhead``, once it is answered) and ``/info`` (``load``). Nothing else keeps
admission state, and nobody else looks into the batcher to judge load.

**Cost** (:class:`CostModel`): one batch of ``rows`` pairs padded to ``width`` tokens takes
``a + b * rows * width`` seconds. ``a`` and ``b`` are fitted by least squares to timed runs
of the real session at warm-up (several batch sizes by several lengths), then kept up to
date from every batch the worker runs: exponentially weighted least squares (recursive
least squares with forgetting, in closed form over decayed sums), so the model follows the
machine (a neighbour taking CPU, a thermal limit) within a few dozen batches. A request's
work is its pairs' tokens (estimated from characters before tokenization, at a measured
characters-per-token ratio, then replaced by the true count), times the measured padding
factor, plus ``a`` for each batch its pairs need.

**Forecast and rule**: each admitted request holds a :class:`Ticket` with its remaining
work and its *due* instant: ``arrival + latency_s * max(1, n / latency_items)`` (the SLO
budget times ``admission_slo_factor``), or its own deadline if that comes first. The batcher
serves pairs earliest-due first (:mod:`service.batcher`), so the work ahead of a request is
exactly the admitted work due no later than it. A request is refused (429) when

* its own forecast completion (now + work due before it + its own + the measured
  per-request overhead) passes its due instant, or
* admitting it would make an admitted request, forecast on time without it, late (a
  newcomer with an earlier due instant pushes back everything due after it).

**Lateness**: the cost model times the model's batches only. What it cannot see (under
load the event loop and the tokenizer thread take CPU from the session; time between
batches) shows as requests answered later than forecast: measured on the 2-core machine
at 2x overload, requests forecast at 0.8 s were answered at 0.94 s (p99 1.16 s). So each
queued request's answer is compared with the forecast it was admitted on, and the recent
ratio (an exponential average, within [0.5, 3]) scales every forecast. Answers come
late to tell: the first requests of an overload are answered only after they waited. So
at each batch's end lateness also takes a step toward how far the request waiting longest
past its forecast already is (a lower bound of its ratio, known before its answer), for
requests that queued (forecast at least ``OVERDUE_MIN_SHARE`` of the SLO latency).

**Tail guard**: lateness corrects the forecast's mean, not its spread. Under overload the
queue is kept full to the budget, so every admitted request is forecast close to it and
the spread alone makes many of them late (measured on the 2-core machine, server side:
admitted p99 116% of the SLO at 2x, 131% at 5x, with the mean lateness applied). So for
the requests admitted *near their edge* (forecast to use at least ``TAIL_EDGE_SHARE`` of
what admission allowed them: the ones a wrong forecast makes late), admission keeps how
far each overran the cost model's forecast (answered / forecast, both from its arrival)
for the last ``TAIL_WINDOW_S`` seconds, and admits against ``tail = lateness / q`` of each
budget (at most all of it), ``q`` the ``tail_quantile`` of those overruns: the spread
beyond the mean that lateness already corrects. It acts only once ``TAIL_MIN_SAMPLES``
such answers came within ``TAIL_RECENT_S`` (a sustained overload, not a burst). Requests
far from their edge are left out (a short forecast's small error in seconds is a large
ratio), and the window is in time, not answers: once an overload is over its lesson
expires, so a burst on an idle server is judged on the full budget. Tried first and
rejected (quick overload runs, 2026-12-03): a stochastic quantile tracker on answers past
the SLO (late answers come in clusters and drove it to its floor), and overruns taken
against the lateness-corrected forecast (the start of an overload, before lateness caught
up, then held admission at 0.6 of the budget for the whole window).

Nothing depends on how far apart requests arrive: a burst whose work fits within the
budgets is admitted whole, one that does not is cut where it stops fitting. An empty
queue always admits (a request alone is served as fast as the model can), and so does a
model not yet measured.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from service.cost_model import CostModel, Forecast, TimedRun
from service.errors import NotReady, Overloaded, PayloadTooLarge
from service.metrics import Metrics


@dataclass(frozen=True)
class AdmissionConfig:
    """Admission limits; plain values unpacked from the settings."""

    max_queue_pairs: int = 4096
    # The SLO budget admission holds requests to (0 = off: only max_queue_pairs limits):
    # a request of n pairs is due latency_s * max(1, n / latency_items) after it arrived.
    # The app sets it from the SLO times admission_slo_factor.
    latency_s: float = 0.0
    latency_items: int = 100
    # Pairs per batch the forecast counts batches by (the tuned max_batch_size).
    batch_pairs: int = 64
    # Tokens of one pair at most (the model's max_length): caps the character estimate.
    max_pair_tokens: int = 512
    # latency_s is the SLO latency times this (so an answer's SLO budget is known).
    slo_factor: float = 1.0
    # The tail guard: admit against 1 / (this quantile of recent overruns) of each budget
    # (0 = no tail guard).
    tail_quantile: float = 0.98


_seq = itertools.count()

# Lateness: learned only from requests forecast to wait at least this long (below it the
# forecast is mostly the fixed overhead, whose noise would swing the ratio), at this
# weight per answer, within these bounds.
LATENESS_MIN_FORECAST_S = 0.05
LATENESS_WEIGHT = 0.1
LATENESS_BOUNDS = (0.5, 3.0)
# A request still waiting raises lateness only when its forecast was at least this share of
# the SLO latency: it waited behind a queue (the start of an overload). Shorter ones are
# the noise of light load, where the worst of them set lateness (every waiting request
# counted: 9.8% refused at half load, a quick run on the 2-core machine).
OVERDUE_MIN_SHARE = 0.25
# Tail guard: which answers it learns from (forecast to use at least this share of their
# budget), for how long, how many of them must have come in the last TAIL_RECENT_S for it
# to act (a sustained overload, not a Poisson burst at half load: with the count over the
# whole window a 10-minute soak at half load refused 4.7%; 2x on the 2-core machine gives
# ~13 such answers a second), and the least share of a budget it admits against.
# 0.7, not 0.5: the last requests of a 64-request fan-out on an idle server are forecast
# at ~55% of their budget and overrun a little; counted, they armed the guard against the
# fan-out's next runs (637 of 640 answered in a full run).
TAIL_EDGE_SHARE = 0.7
TAIL_WINDOW_S = 20.0
TAIL_RECENT_S = 5.0
TAIL_MIN_SAMPLES = 8
TAIL_FLOOR = 0.5


@dataclass(eq=False)
class Ticket:
    """One admitted request's place in the forecast: its work and when it is due."""

    pairs: int
    tokens: float  # real tokens of its pairs (estimated until tokenized)
    due: float  # time.monotonic() instant its answer is due by (the EDF key)
    seq: int = field(default_factory=lambda: next(_seq))
    # Pairs still to score (the engine points it at the batcher's count).
    progress: Callable[[], int] | None = None
    # When it was admitted and the (uncorrected) forecast it was admitted on.
    admitted_at: float = 0.0
    forecast_s: float = 0.0
    # When it arrived, the instant it was forecast answered (lateness included), and
    # whether that forecast used at least TAIL_EDGE_SHARE of what admission allowed it.
    arrived: float = 0.0
    predicted_at: float = math.inf
    near_edge: bool = False

    @property
    def key(self) -> tuple[float, int]:
        return (self.due, self.seq)

    def left(self) -> tuple[int, float]:
        """Pairs and tokens not scored yet."""
        pairs = self.progress() if self.progress is not None else self.pairs
        pairs = max(0, min(self.pairs, pairs))
        return pairs, self.tokens * pairs / self.pairs if self.pairs else 0.0


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
        self.forecast: Forecast = forecast or CostModel(
            self.config.batch_pairs, self.config.max_pair_tokens
        )
        self._metrics = metrics
        self._clock = clock
        self._tickets: list[Ticket] = []
        self._reserved_pairs = 0
        self._idle = asyncio.Event()  # set while no pairs are reserved
        self._idle.set()
        self._closing = False
        self.lateness = 1.0  # answered / forecast latency of recent queued requests
        self.tail = 1.0  # share of each request's budget admission admits against
        self._overruns: collections.deque[tuple[float, float]] = collections.deque(maxlen=512)
        self._overrun_quantile: float | None = None  # of the window; None once it changes

    @property
    def reserved_pairs(self) -> int:
        """Pairs admitted and not yet answered."""
        return self._reserved_pairs

    def close(self) -> None:
        """Admit nothing more (shutdown); reservations held run to their end."""
        self._closing = True

    def estimate_tokens(self, query: str, texts: Iterable[str]) -> float:
        """A request's tokens before it is tokenized (characters at the measured ratio)."""
        q = len(query)
        return sum(self.forecast.pair_tokens(q, len(t)) for t in texts)

    def due(self, n_pairs: int, arrived: float | None, deadline: float | None) -> float:
        """The instant a request of ``n_pairs`` arriving at ``arrived`` is due by."""
        cfg = self.config
        arrived = self._clock() if arrived is None else arrived
        due = deadline if deadline is not None else math.inf
        if cfg.latency_s > 0:
            due = min(due, arrived + cfg.latency_s * max(1.0, n_pairs / cfg.latency_items))
        return due

    @contextlib.contextmanager
    def reserve(
        self,
        n_pairs: int,
        *,
        tokens: float | None = None,
        arrived: float | None = None,
        deadline: float | None = None,
    ) -> Iterator[Ticket]:
        """Hold ``n_pairs`` of queue capacity for one request, or fail fast.

        ``tokens``: the request's estimated tokens (default: pairs of mean length);
        ``arrived``/``deadline``: ``time.monotonic()`` instants its due time counts from.
        """
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
        if tokens is None:
            tokens = n_pairs * self.forecast.pair_tokens(16, 48)
        arrived = self._clock() if arrived is None else arrived
        ticket = Ticket(n_pairs, float(tokens), self.due(n_pairs, arrived, deadline))
        ticket.arrived = arrived
        self._expire_overruns()
        late = self._refusal(ticket, protect_others=True)
        if late is not None:
            raise Overloaded(late, retry_after_s=self.retry_after_s())
        self._tickets.append(ticket)
        self._reserved_pairs += n_pairs
        self._idle.clear()
        self._gauge()
        ticket.admitted_at = self._clock()
        ticket.forecast_s = self._raw_forecast_s(ticket)
        ticket.predicted_at = ticket.admitted_at + ticket.forecast_s * self.lateness
        allowed_s = self._admit_by(ticket) - arrived
        ticket.near_edge = (
            self.forecast.calibrated
            and math.isfinite(allowed_s)
            and ticket.predicted_at - arrived >= TAIL_EDGE_SHARE * allowed_s
        )
        answered = False
        try:
            yield ticket
            answered = True
        finally:
            if answered:
                self._learn_lateness(ticket)
                self._learn_tail(ticket)
            self._tickets.remove(ticket)
            self._reserved_pairs -= n_pairs
            if self._reserved_pairs == 0:
                self._idle.set()
            self._gauge()

    def forecast_s(self, ticket: Ticket) -> float:
        """Seconds from now until an admitted ``ticket`` is forecast answered."""
        return self._raw_forecast_s(ticket) * self.lateness

    def _raw_forecast_s(self, ticket: Ticket) -> float:
        """The cost model's forecast of ``ticket``'s answer, before lateness (what
        lateness itself learns against)."""
        ahead = [t for t in self._tickets if t.key <= ticket.key]
        return self._model_work_s(ahead) + self.forecast.overhead_s

    def _answered_in_s(self, pairs: int, tokens: float) -> float:
        """Seconds until work of ``pairs`` pairs and ``tokens`` tokens, and a request's
        overhead, are done: the one formula every admission decision uses."""
        return (self.forecast.work_s(pairs, tokens) + self.forecast.overhead_s) * self.lateness

    def _learn_lateness(self, ticket: Ticket) -> None:
        """An admitted request was answered: how late against its forecast."""
        if ticket.forecast_s < LATENESS_MIN_FORECAST_S or not self.forecast.calibrated:
            return
        self._step_lateness((self._clock() - ticket.admitted_at) / ticket.forecast_s)

    def _step_lateness(self, ratio: float) -> None:
        """One step of the lateness average toward ``ratio`` (an answer's weight, bounded)."""
        low, high = LATENESS_BOUNDS
        mixed = (1 - LATENESS_WEIGHT) * self.lateness + LATENESS_WEIGHT * ratio
        self.lateness = min(high, max(low, mixed))
        if self._metrics is not None:
            self._metrics.forecast_lateness.set(self.lateness)

    def _learn_overdue(self) -> None:
        """Lateness moves toward how far the admitted request still waiting longest past
        its cost-model forecast already is: evidence known before the answer, so the start
        of an overload is seen at the first batches, not once its first requests return.
        Measured at 2x on the 2-core machine (quick overload runs alternated, A/B three
        times each, 2026-12-04): without it 10 of 227 admitted requests answered past their
        SLO budget, nearly all sent in the first 0.8 s, admitted while lateness still held
        the lighter load's value; with it 3 of 262, half-load refusals alike (1 / 2 of ~130)."""
        if not self.forecast.calibrated or not self._tickets:
            return
        now = self._clock()
        floor = max(LATENESS_MIN_FORECAST_S, OVERDUE_MIN_SHARE * self.config.latency_s)
        overdue = max(
            ((now - t.admitted_at) / t.forecast_s for t in self._tickets if t.forecast_s >= floor),
            default=0.0,
        )
        if overdue > self.lateness:
            # At the weight of an answer, once per batch: a step toward the evidence, not
            # a jump to the worst waiting request (that held lateness at the top of the
            # spread: 4.9-9.8% refused at half load in quick runs).
            self._step_lateness(overdue)

    def _learn_tail(self, ticket: Ticket) -> None:
        """An admitted request was answered: how far past its cost-model forecast, if it
        was admitted near its edge."""
        if not (0 < self.config.tail_quantile < 1) or not ticket.near_edge:
            return
        raw_s = (ticket.admitted_at - ticket.arrived) + ticket.forecast_s
        if raw_s <= 0:
            return
        now = self._clock()
        self._overruns.append((now, (now - ticket.arrived) / raw_s))
        self._overrun_quantile = None
        self._expire_overruns(now)

    def _expire_overruns(self, now: float | None = None) -> None:
        """Forget overruns older than the window; set ``tail`` from what is left."""
        now = self._clock() if now is None else now
        while self._overruns and self._overruns[0][0] < now - TAIL_WINDOW_S:
            self._overruns.popleft()
            self._overrun_quantile = None
        tail = 1.0
        recent = 0
        for t, _ in reversed(self._overruns):
            if t < now - TAIL_RECENT_S or recent >= TAIL_MIN_SAMPLES:
                break
            recent += 1
        if recent >= TAIL_MIN_SAMPLES:
            overrun = self._window_quantile()
            # Overruns are kept against the cost model's own forecast; the mean part of
            # them is what lateness already corrects (now, not when they were admitted).
            tail = max(TAIL_FLOOR, 1.0 / max(1.0, overrun / self.lateness))
        if tail != self.tail:
            self.tail = tail
            if self._metrics is not None:
                self._metrics.admission_tail.set(tail)

    def _window_quantile(self) -> float:
        """The tail quantile of the overrun window, sorted once per change of the window
        (every request and early check reads it; it changes once per answer)."""
        if self._overrun_quantile is None:
            ratios = sorted(r for _, r in self._overruns)
            index = min(len(ratios) - 1, int(self.config.tail_quantile * len(ratios)))
            self._overrun_quantile = ratios[index]
        return self._overrun_quantile

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every admitted request has been answered; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def saturated(self) -> bool:
        """Whether even a one-pair request arriving now would be refused for latency."""
        self._expire_overruns()
        now = self._clock()
        probe = Ticket(1, self.forecast.pair_tokens(16, 48), self.due(1, now, None), arrived=now)
        return self._refusal(probe, protect_others=False) is not None

    def retry_after_s(self) -> int:
        """Seconds until the admitted work is likely done (for ``Retry-After``)."""
        wait_s = self._work_s(self._tickets)
        if not math.isfinite(wait_s):
            return 1
        return int(min(60, max(1, math.ceil(wait_s))))

    def note_overhead(self, seconds: float) -> None:
        """Time a request spent outside the queue and the model (parsing, tokenizing,
        answering), as the request pipeline measured it; admission budgets for it too."""
        self.forecast.note_overhead(seconds)

    def note_tokens(self, ticket: Ticket, chars: int, tokens: int) -> None:
        """A request was tokenized: ``tokens`` (special tokens included) replaces the
        estimate, and the characters-per-token ratio learns from it."""
        self.forecast.note_tokens(chars, tokens - CostModel.SPECIAL_TOKENS * ticket.pairs)
        ticket.tokens = float(tokens)

    def observe_batch(
        self,
        rows: int,
        width: int,
        real_tokens: int,
        started: float,
        elapsed_s: float,
        backlogged: bool,
    ) -> None:
        """A batch the worker ran: the cost model learns from it, and lateness from the
        requests still waiting that are already past their forecast."""
        self.forecast.observe_batch(rows, width, real_tokens, started, elapsed_s, backlogged)
        self._learn_overdue()
        self._gauge_cost()

    def set_batch_pairs(self, batch_pairs: int) -> None:
        """The batch size chosen at warm-up (the forecast counts batches by it)."""
        self.config = replace(self.config, batch_pairs=max(1, batch_pairs))
        if isinstance(self.forecast, CostModel):
            self.forecast.batch_pairs = max(1, batch_pairs)

    def set_instances(self, instances: int) -> None:
        """Sessions running batches side by side (the cost model counts throughput)."""
        if isinstance(self.forecast, CostModel):
            self.forecast.instances = max(1, instances)

    def fit(self, runs: Iterable[TimedRun]) -> None:
        """Warm-up's timed runs of the real session."""
        self.forecast.fit(runs)
        self._gauge_cost()

    def load(self) -> dict[str, Any]:
        """What admission looks at right now (``/info``; operators, the reliability run)."""
        forecast = self.forecast
        queue_s = self._work_s(self._tickets)
        rate = forecast.pairs_per_s(20.0) if isinstance(forecast, CostModel) else 0.0
        return {
            "reserved_pairs": self._reserved_pairs,
            "forecast_queue_ms": round(queue_s * 1000, 1) if math.isfinite(queue_s) else None,
            "measured_pairs_per_s": round(rate, 1),
            "request_overhead_ms": round(forecast.overhead_s * 1000, 1),
            "lateness": round(self.lateness, 3),
            "tail": round(self.tail, 3),
            "tail_samples": len(self._overruns),
            "cost_model": forecast.describe(),
        }

    # ------------------------------------------------------------------ the rule
    def _work_s(self, tickets: Iterable[Ticket]) -> float:
        """Seconds the model needs for what ``tickets`` have left, lateness included."""
        return self._model_work_s(tickets) * self.lateness

    def _model_work_s(self, tickets: Iterable[Ticket]) -> float:
        return self.forecast.work_s(*_left(tickets))

    def _refusal(self, new: Ticket, protect_others: bool) -> str | None:
        """Why ``new`` must be refused, or ``None`` to admit it."""
        if self.config.latency_s <= 0 or not self._tickets or not self.forecast.calibrated:
            return None
        now = self._clock()
        ordered = sorted(self._tickets, key=lambda t: t.key)
        ahead = [t for t in ordered if t.key <= new.key]
        pairs, tokens = _left([*ahead, new])
        finish = now + self._answered_in_s(pairs, tokens)
        if finish > self._admit_by(new):
            return (
                f"overloaded: {pairs - new.left()[0]} pairs due first would take "
                f"{finish - now:.2f} s and this request is due in "
                f"{max(0.0, self._admit_by(new) - now):.2f} s; retry later"
            )
        if not protect_others:
            return None
        # Requests due after the newcomer: its work delays each of them.
        pairs, tokens = 0, 0.0
        new_pairs, new_tokens = new.left()
        for t in ordered:
            p, k = t.left()
            pairs += p
            tokens += k
            if t.key <= new.key:
                continue
            without = now + self._answered_in_s(pairs, tokens)
            with_new = now + self._answered_in_s(pairs + new_pairs, tokens + new_tokens)
            if without <= self._admit_by(t) < with_new:
                return (
                    f"overloaded: this request would make an admitted one, due in "
                    f"{t.due - now:.2f} s, late; retry later"
                )
        return None

    def _admit_by(self, ticket: Ticket) -> float:
        """The instant admission holds ``ticket`` to: its due instant, the tail guard's
        share of the way from its arrival (the batcher still orders by ``due``)."""
        if self.tail >= 1.0 or not math.isfinite(ticket.due):
            return ticket.due
        return ticket.arrived + (ticket.due - ticket.arrived) * self.tail

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.inflight_pairs.set(self._reserved_pairs)

    def _gauge_cost(self) -> None:
        forecast = self.forecast
        if self._metrics is not None and isinstance(forecast, CostModel):
            self._metrics.batch_cost_fixed.set(forecast.a)
            self._metrics.batch_cost_per_token.set(forecast.b)


def _left(tickets: Iterable[Ticket]) -> tuple[int, float]:
    """Pairs and tokens that ``tickets`` have still to run."""
    pairs, tokens = 0, 0.0
    for t in tickets:
        p, k = t.left()
        pairs += p
        tokens += k
    return pairs, tokens
