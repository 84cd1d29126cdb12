"""``/score`` and the teacher's ``/shadow/score`` (the rerank shapes are in
:mod:`service.api.rerank`).

Each route parses its body, names its fields and shapes its answer; the steps between
(limits, deadline, scoring, disconnects, admission's overhead) are
:func:`service.api.pipeline.serve`'s, the same for every scoring route.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import (
    get_engine,
    get_models,
    get_settings,
    get_shadow,
    get_text_limits,
    require_json,
)
from service.api.pipeline import (
    SCORE_FIELDS,
    ScoringCall,
    TeacherBackend,
    TeacherResult,
    ranked,
    serve,
    serve_model,
    timing_headers,
)
from service.engine import EngineResult, ScoringEngine
from service.features import TextLimits
from service.middleware import arrival_time
from service.models import Lease, ModelRegistry
from service.schemas import (
    ERROR_RESPONSES,
    ItemScore,
    ModelRef,
    ScoreRequest,
    ScoreResponse,
    ShadowScoreRequest,
    Timing,
)
from service.settings import Settings
from service.shadow import TeacherShadow

router = APIRouter(dependencies=[Depends(require_json)], responses=ERROR_RESPONSES)

SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[ScoringEngine, Depends(get_engine)]
ModelsDep = Annotated[ModelRegistry[ScoringEngine], Depends(get_models)]
ShadowDep = Annotated[TeacherShadow, Depends(get_shadow)]
LimitsDep = Annotated[TextLimits, Depends(get_text_limits)]


@router.post(
    "/score",
    response_model=ScoreResponse,
    summary="Score items against a query with the student model",
    description=(
        "Scores are in [0, 1] (higher is more relevant), returned in input order, or the "
        "best `top_k` ranked. Pairs from concurrent requests share inference batches; the "
        "scores do not depend on what else is in a batch. `model` picks a loaded model "
        "(404 when none has that name); the answer's `model` names the one that scored."
    ),
)
async def score(
    body: ScoreRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
    shadow: ShadowDep,
) -> ScoreResponse:
    ids = [item.id for item in body.items]
    call = ScoringCall(
        query=body.query,
        texts=[item.text for item in body.items],
        truncate=body.truncate,
        max_items=settings.max_items,
        fields=SCORE_FIELDS,
        deadline_ms=body.deadline_ms,
        model=body.model,
        cache=body.cache,
        item_ids=body.item_ids(),
        cascade_top_k=body.cascade_top_k,
    )

    def answer(result: EngineResult, lease: Lease[ScoringEngine]) -> ScoreResponse:
        classify = lease.engine.package.manifest.score.classify
        order = ranked(result.scores, body.top_k) if body.top_k else range(len(ids))
        scores = [
            ItemScore(
                id=ids[i], index=i, score=float(result.scores[i]), label=classify(result.scores[i])
            )
            for i in order
        ]
        total_s = time.monotonic() - arrival_time(request.scope)
        timing_headers(response, total_s, result)
        shadow.mirror(result.query, ids, result.texts, result.scores)
        return ScoreResponse(
            model=ModelRef(name=lease.served.name, version=lease.served.version),
            scores=scores,
            timing=Timing(
                total_ms=total_s * 1000,
                tokenize_ms=result.tokenize_s * 1000,
                queue_ms=result.queue_s * 1000,
                inference_ms=result.inference_s * 1000,
                batches=result.batches,
            ),
            truncated=int(result.truncated.sum()),
        )

    return await serve_model(request, response, settings, call, models, answer)


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
    limits: LimitsDep,
) -> ScoreResponse:
    ids = [item.id for item in body.items]
    call = ScoringCall(
        query=body.query,
        texts=[item.text for item in body.items],
        truncate=body.truncate,
        max_items=min(settings.max_items, settings.shadow_max_items),
        fields=SCORE_FIELDS,
        deadline_ms=body.deadline_ms,
    )

    def answer(result: TeacherResult) -> ScoreResponse:
        values = result.scores
        classify = engine.package.manifest.score.classify
        order = ranked(values, body.top_k) if body.top_k else range(len(ids))
        return ScoreResponse(
            model=ModelRef(name=shadow.name, version=shadow.version),
            scores=[
                ItemScore(id=ids[i], index=i, score=float(values[i]), label=classify(values[i]))
                for i in order
            ],
            timing=Timing(total_ms=(time.monotonic() - arrival_time(request.scope)) * 1000),
        )

    return await serve(request, settings, call, TeacherBackend(shadow, limits), answer)
