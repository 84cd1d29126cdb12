"""The request pipeline every scoring endpoint shares.

A route parses its body into a :class:`ScoringCall` and says how to shape the answer;
:func:`serve` does the rest, in one order for all of them: item count → deadline →
score on a backend (cancelled if the client goes away) → answer → account for the time
spent outside the backend. Errors the backend raises with item positions are named here,
as the endpoint spells its fields (``items[3].text``, ``texts[3]``, ``documents[3]``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from fastapi import Request, Response

from service.engine import EngineResult, ScoringEngine
from service.errors import DeadlineExceeded, InputTooLong, InvalidInput, PayloadTooLarge
from service.features import TextLimits
from service.middleware import arrival_time
from service.models import Lease, ModelRegistry
from service.settings import Settings
from service.shadow import TeacherShadow

R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class FieldNames:
    """How an endpoint names its inputs in error messages."""

    items: str
    text: str  # a format with the item's index


SCORE_FIELDS = FieldNames("items", "items[{}].text")
RERANK_FIELDS = FieldNames("texts", "texts[{}]")
# Cohere's, Jina's, vLLM's and Infinity's shapes. (They never refuse a long text: none of
# them has ``truncate``, so a text is always cut, and no text field needs naming.)
DOCUMENTS_FIELDS = FieldNames("documents", "documents[{}]")


@dataclass(frozen=True)
class ScoringCall:
    """A parsed scoring request: what any backend needs."""

    query: str
    texts: Sequence[str]
    truncate: bool
    max_items: int
    fields: FieldNames
    deadline_ms: int | None = None
    # The model the client named (the shapes that carry one); None: the default or canary.
    model: str | None = None
    # False: score every pair with the model, reading nothing from the score cache.
    cache: bool = True
    # Representation packages: each text's id for the item store (None: keyed by the text),
    # and how many of the best items the cascade's cross-encoder re-scores (None: default).
    item_ids: Sequence[str | None] | None = None
    cascade_top_k: int | None = None


@dataclass(frozen=True)
class TeacherResult:
    """The teacher's scores and the inputs it scored (after the character limits)."""

    query: str
    texts: list[str]
    scores: np.ndarray


class Backend(Protocol[R]):
    """Something that scores a call: the student engine or the teacher shadow."""

    def score(self, call: ScoringCall, deadline: float, arrived: float) -> Awaitable[R]:
        """Scores for ``call``; ``deadline`` and ``arrived`` (when the request reached the
        server) are ``time.monotonic()`` instants."""
        ...

    def account(self, result: R, outside_s: float) -> None:
        """Told how long the request spent outside the backend (parse, answer)."""
        ...


class StudentBackend:
    """The student model through the engine; admission learns each request's overhead.

    With a ``lease`` (the model version chosen for the request), its per-model latency and
    score distribution are counted.
    """

    def __init__(self, engine: ScoringEngine, lease: Lease[ScoringEngine] | None = None) -> None:
        self.engine = engine
        self.lease = lease

    async def score(self, call: ScoringCall, deadline: float, arrived: float) -> EngineResult:
        result = await self.engine.score(
            call.query,
            call.texts,
            deadline=deadline,
            truncate=call.truncate,
            arrived=arrived,
            use_cache=call.cache,
            **representation_options(self.engine, call),
        )
        if self.lease is not None:
            self.lease.scored(result.scores)
        return result

    def account(self, result: EngineResult, outside_s: float) -> None:
        # Tokenizing happens inside the engine but outside the queue and the model.
        self.engine.admission.note_overhead(outside_s + result.tokenize_s)


class TeacherBackend:
    """The LLM teacher; it has its own slots and timeout, so admission does not see it."""

    def __init__(self, shadow: TeacherShadow, limits: TextLimits) -> None:
        self.shadow = shadow
        self.limits = limits

    async def score(self, call: ScoringCall, deadline: float, arrived: float) -> TeacherResult:
        query, texts, _ = self.limits.apply(call.query, call.texts, call.truncate)
        scoring: Awaitable[np.ndarray] = self.shadow.score(query, texts)
        if call.deadline_ms is not None:
            # Without one, the shadow's own timeout governs (the teacher is slow by design).
            scoring = _within(scoring, deadline - time.monotonic())
        return TeacherResult(query, texts, await scoring)

    def account(self, result: TeacherResult, outside_s: float) -> None:
        pass


async def serve(
    request: Request,
    settings: Settings,
    call: ScoringCall,
    backend: Backend[R],
    answer: Callable[[R], T],
) -> T:
    """Run one scoring request through ``backend`` and shape its answer."""
    arrived = arrival_time(request.scope)
    request.state.items = len(call.texts)
    if len(call.texts) > call.max_items:
        name = call.fields.items
        raise PayloadTooLarge(
            f"{name}: {len(call.texts)} items exceed the limit of {call.max_items}", field=name
        )
    deadline = deadline_for(settings, arrived, call.deadline_ms)
    started = time.monotonic()
    try:
        result = await until_disconnect(request, backend.score(call, deadline, arrived))
    except InputTooLong as exc:
        raise exc.named(call.fields.text) from None
    except DeadlineExceeded as exc:
        exc.client_deadline = call.deadline_ms is not None
        raise
    ended = time.monotonic()
    out = answer(result)
    backend.account(result, (started - arrived) + (time.monotonic() - ended))
    return out


async def serve_model(
    request: Request,
    response: Response,
    settings: Settings,
    call: ScoringCall,
    models: ModelRegistry[ScoringEngine],
    answer: Callable[[EngineResult, Lease[ScoringEngine]], T],
) -> T:
    """:func:`serve` on the model version chosen for the call (named, canary or default).

    The version is held from the choice to the answer, so a hot swap meanwhile lets this
    request finish on it; the answer's headers name it (``x-model-name``, ``x-model-version``).
    """
    with models.lease(call.model, call.query) as lease:
        response.headers["x-model-name"] = lease.served.name
        response.headers["x-model-version"] = lease.served.version
        return await serve(
            request,
            settings,
            call,
            StudentBackend(lease.engine, lease),
            lambda result: answer(result, lease),
        )


def representation_options(engine: object, call: ScoringCall) -> dict[str, Any]:
    """What only a representation engine takes (item ids, cascade). A cross-encoder already
    scores every item the way a cascade scores its head, so ``cascade_top_k`` asks nothing
    more of it and is accepted as met."""
    if getattr(engine, "kind", None) == "representation":
        return {"item_ids": call.item_ids, "cascade_top_k": call.cascade_top_k}
    return {}


def deadline_for(settings: Settings, arrived: float, deadline_ms: int | None) -> float:
    """The request's ``time.monotonic()`` deadline, counted from its arrival."""
    if deadline_ms is not None and deadline_ms > settings.max_deadline_ms:
        raise InvalidInput(
            f"deadline_ms: {deadline_ms} exceeds the limit of {settings.max_deadline_ms}",
            field="deadline_ms",
        )
    return arrived + (deadline_ms or settings.default_deadline_ms) / 1000


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client goes away (its queued pairs are skipped)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


async def _within(scoring: Awaitable[np.ndarray], seconds: float) -> np.ndarray:
    """``scoring``'s result, or 504 once the request's own deadline has passed."""
    try:
        return await asyncio.wait_for(scoring, max(0.0, seconds))
    except TimeoutError:
        raise DeadlineExceeded("deadline_ms: the teacher did not answer in time") from None


def timing_headers(response: Response, total_s: float, result: EngineResult) -> None:
    """Where the time went, in the headers text-embeddings-inference uses (milliseconds)."""
    response.headers["x-total-time"] = f"{total_s * 1000:.3f}"
    response.headers["x-tokenization-time"] = f"{result.tokenize_s * 1000:.3f}"
    response.headers["x-queue-time"] = f"{result.queue_s * 1000:.3f}"
    response.headers["x-inference-time"] = f"{result.inference_s * 1000:.3f}"


def ranked(values: np.ndarray, top_k: int | None = None) -> list[int]:
    """Indices best first; ties keep input order."""
    order = np.argsort(-values, kind="stable").tolist()
    return order[:top_k] if top_k is not None else order
