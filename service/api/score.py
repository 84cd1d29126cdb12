"""``/score``, TEI-compatible ``/rerank`` and the teacher's ``/shadow/score``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Annotated, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import get_engine, get_settings, get_shadow, require_json
from service.engine import EngineResult, ScoringEngine
from service.errors import DeadlineExceeded, InvalidInput, PayloadTooLarge
from service.middleware import arrival_time
from service.schemas import (
    ERROR_RESPONSES,
    ItemScore,
    ModelRef,
    RerankRequest,
    RerankResult,
    ScoreRequest,
    ScoreResponse,
    ShadowScoreRequest,
    Timing,
)
from service.settings import Settings
from service.shadow import TeacherShadow

router = APIRouter(dependencies=[Depends(require_json)], responses=ERROR_RESPONSES)

T = TypeVar("T")
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[ScoringEngine, Depends(get_engine)]
ShadowDep = Annotated[TeacherShadow, Depends(get_shadow)]


def check_limits(
    settings: Settings,
    query: str,
    texts: Sequence[str],
    *,
    truncate: bool,
    max_items: int,
    items_field: str,
    text_field: str,
) -> tuple[str, list[str], set[int]]:
    """Apply the size limits before any tokenization; cut or refuse what is too long.

    Returns the query and texts to score and the indices of texts cut here.
    """
    if len(texts) > max_items:
        raise PayloadTooLarge(
            f"{items_field}: {len(texts)} items exceed the limit of {max_items}", field=items_field
        )
    if len(query) > settings.max_query_chars:
        if not truncate:
            raise PayloadTooLarge(
                f"query: {len(query)} characters exceed the limit of "
                f"{settings.max_query_chars} and truncate is false",
                field="query",
            )
        query = query[: settings.max_query_chars]
    limit = settings.max_text_chars
    out = list(texts)
    cut: set[int] = set()
    for i, text in enumerate(out):
        if len(text) > limit:
            if not truncate:
                name = text_field.format(i)
                raise PayloadTooLarge(
                    f"{name}: {len(text)} characters exceed the limit of {limit} "
                    "and truncate is false",
                    field=name,
                )
            out[i] = text[:limit]
            cut.add(i)
    return query, out, cut


async def _within(scoring: Awaitable[np.ndarray], seconds: float) -> np.ndarray:
    """``scoring``'s result, or 504 once the request's own deadline has passed."""
    try:
        return await asyncio.wait_for(scoring, max(0.0, seconds))
    except TimeoutError:
        raise DeadlineExceeded("deadline_ms: the teacher did not answer in time") from None


def deadline_for(settings: Settings, started: float, deadline_ms: int | None) -> float:
    if deadline_ms is not None and deadline_ms > settings.max_deadline_ms:
        raise InvalidInput(
            f"deadline_ms: {deadline_ms} exceeds the limit of {settings.max_deadline_ms}",
            field="deadline_ms",
        )
    return started + (deadline_ms or settings.default_deadline_ms) / 1000


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


def _timing_headers(response: Response, total_s: float, result: EngineResult) -> None:
    # The names text-embeddings-inference uses, in milliseconds.
    response.headers["x-total-time"] = f"{total_s * 1000:.3f}"
    response.headers["x-tokenization-time"] = f"{result.tokenize_s * 1000:.3f}"
    response.headers["x-queue-time"] = f"{result.queue_s * 1000:.3f}"
    response.headers["x-inference-time"] = f"{result.inference_s * 1000:.3f}"


def _note_overhead(
    engine: ScoringEngine,
    arrived: float,
    engine_started: float,
    engine_ended: float,
    result: EngineResult,
) -> None:
    """Tell admission control how long this request took outside the queue and the model:
    reading and validating it, tokenizing it, building the answer."""
    now = time.monotonic()
    engine.batcher.note_overhead(
        (engine_started - arrived) + result.tokenize_s + (now - engine_ended)
    )


def _ranked(values: np.ndarray, top_k: int | None = None) -> list[int]:
    """Indices best first; ties keep input order."""
    order = np.argsort(-values, kind="stable").tolist()
    return order[:top_k] if top_k is not None else order


@router.post(
    "/score",
    response_model=ScoreResponse,
    summary="Score items against a query with the student model",
    description=(
        "Scores are in [0, 1] (higher is more relevant), returned in input order, or the "
        "best `top_k` ranked. Pairs from concurrent requests share inference batches; the "
        "scores do not depend on what else is in a batch."
    ),
)
async def score(
    body: ScoreRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    shadow: ShadowDep,
) -> ScoreResponse:
    started = arrival_time(request.scope)
    request.state.items = len(body.items)
    texts = [item.text for item in body.items]
    query, texts, cut = check_limits(
        settings,
        body.query,
        texts,
        truncate=body.truncate,
        max_items=settings.max_items,
        items_field="items",
        text_field="items[{}].text",
    )
    deadline = deadline_for(settings, started, body.deadline_ms)
    engine_started = time.monotonic()
    result = await until_disconnect(
        request, engine.score(query, texts, deadline=deadline, truncate=body.truncate)
    )
    engine_ended = time.monotonic()
    ids = [item.id for item in body.items]
    classify = engine.package.manifest.score.classify
    order = _ranked(result.scores, body.top_k) if body.top_k else range(len(ids))
    scores = [
        ItemScore(
            id=ids[i], index=i, score=float(result.scores[i]), label=classify(result.scores[i])
        )
        for i in order
    ]
    total_s = time.monotonic() - started
    _timing_headers(response, total_s, result)
    _note_overhead(engine, started, engine_started, engine_ended, result)
    shadow.mirror(query, ids, texts, result.scores)
    manifest = engine.package.manifest
    return ScoreResponse(
        model=ModelRef(name=manifest.name, version=manifest.version),
        scores=scores,
        timing=Timing(
            total_ms=total_s * 1000,
            tokenize_ms=result.tokenize_s * 1000,
            queue_ms=result.queue_s * 1000,
            inference_ms=result.inference_s * 1000,
            batches=result.batches,
        ),
        truncated=len(cut | set(np.flatnonzero(result.truncated).tolist())),
    )


@router.post(
    "/rerank",
    response_model=list[RerankResult],
    response_model_exclude_none=True,
    summary="text-embeddings-inference compatible rerank",
    description=(
        "Same model and batching as `/score`, in TEI's `/rerank` shape: results sorted by "
        "score with the original `index`; `raw_scores` returns logits."
    ),
)
async def rerank(
    body: RerankRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
) -> list[RerankResult]:
    started = arrival_time(request.scope)
    request.state.items = len(body.texts)
    query, texts, _ = check_limits(
        settings,
        body.query,
        body.texts,
        truncate=body.truncate,
        max_items=settings.max_items,
        items_field="texts",
        text_field="texts[{}]",
    )
    deadline = deadline_for(settings, started, None)
    engine_started = time.monotonic()
    result = await until_disconnect(
        request,
        engine.score(
            query, texts, deadline=deadline, truncate=body.truncate, text_field="texts[{}]"
        ),
    )
    engine_ended = time.monotonic()
    values = result.logits.astype(np.float64) if body.raw_scores else result.scores
    _timing_headers(response, time.monotonic() - started, result)
    _note_overhead(engine, started, engine_started, engine_ended, result)
    return [
        RerankResult(
            index=i, score=float(values[i]), text=body.texts[i] if body.return_text else None
        )
        for i in _ranked(values)
    ]


@router.post(
    "/shadow/score",
    response_model=ScoreResponse,
    response_model_exclude_none=True,
    summary="Score with the LLM teacher (slow, limited concurrency)",
    description=(
        "Same request and answer as `/score`, scored by the teacher the student was "
        "distilled from. 503 when no teacher is loaded, 429 when all teacher slots are busy."
    ),
)
async def shadow_score(
    body: ShadowScoreRequest,
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    shadow: ShadowDep,
) -> ScoreResponse:
    started = arrival_time(request.scope)
    request.state.items = len(body.items)
    query, texts, _ = check_limits(
        settings,
        body.query,
        [item.text for item in body.items],
        truncate=body.truncate,
        max_items=min(settings.max_items, settings.shadow_max_items),
        items_field="items",
        text_field="items[{}].text",
    )
    scoring: Awaitable[np.ndarray] = shadow.score(query, texts)
    if body.deadline_ms is not None:
        # Without one, the shadow's own timeout governs (the teacher is slow by design).
        remaining_s = deadline_for(settings, started, body.deadline_ms) - time.monotonic()
        scoring = _within(scoring, remaining_s)
    values = await until_disconnect(request, scoring)
    classify = engine.package.manifest.score.classify
    order = _ranked(values, body.top_k) if body.top_k else range(len(texts))
    ids = [item.id for item in body.items]
    return ScoreResponse(
        model=ModelRef(name=shadow.name, version=shadow.version),
        scores=[
            ItemScore(id=ids[i], index=i, score=float(values[i]), label=classify(values[i]))
            for i in order
        ],
        timing=Timing(total_ms=(time.monotonic() - started) * 1000),
    )
