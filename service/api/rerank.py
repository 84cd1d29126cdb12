"""The rerank shapes: text-embeddings-inference's and vLLM's ``/rerank``, Infinity's,
Cohere's ``/v1/rerank`` (also Jina's) and ``/v2/rerank``.

All of them are the student model through :func:`service.api.pipeline.serve`, as
``/score`` is: the same limits, admission, deadline, truncation, metrics and error
bodies. Each route only parses its shape, names its fields and shapes its answer:
results best first with the caller's ``index``, ``top_n`` honoured wherever it is sent.

``/rerank`` takes TEI's body (``texts``) or the one vLLM and Infinity share
(``documents``, ``top_n``, ``return_documents``); the answer takes the shape of the body.
vLLM and Infinity disagree on one thing, the echoed document: vLLM's is an object
(``{"text"}``, as Cohere's and Jina's), Infinity's a string, and their bodies are
otherwise identical (litellm's two providers send the same bytes). ``/rerank`` answers
as vLLM does; ``/infinity/rerank`` answers as Infinity does (litellm's ``infinity/``
provider with ``api_base=<service>/infinity``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import get_models, get_settings, require_json
from service.api.pipeline import (
    DOCUMENTS_FIELDS,
    RERANK_FIELDS,
    FieldNames,
    ScoringCall,
    ranked,
    serve_model,
    timing_headers,
)
from service.engine import EngineResult, ScoringEngine
from service.errors import InvalidInput
from service.middleware import arrival_time
from service.models import Lease, ModelRegistry
from service.rerank_schemas import (
    ApiMeta,
    ApiVersion,
    BilledUnits,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereV2RerankRequest,
    InfinityRankedResult,
    InfinityRerankRequest,
    InfinityRerankResponse,
    RankedDocument,
    RankedResult,
    VllmRerankResponse,
    document_text,
)
from service.schemas import ERROR_RESPONSES, RerankRequest, RerankResult
from service.settings import Settings

router = APIRouter(dependencies=[Depends(require_json)], responses=ERROR_RESPONSES)

SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry[ScoringEngine], Depends(get_models)]
Shape = Callable[[EngineResult, Lease[ScoringEngine]], object]


def _rerank_id() -> str:
    return str(uuid.uuid4())


def _ranked_results(
    values: np.ndarray, texts: Sequence[str], top_n: int | None, return_documents: bool
) -> list[RankedResult]:
    return [
        RankedResult(
            index=i,
            relevance_score=float(values[i]),
            document=RankedDocument(text=texts[i]) if return_documents else None,
        )
        for i in ranked(values, top_n)
    ]


def _values(result: EngineResult, raw_scores: bool) -> np.ndarray:
    return result.logits.astype(np.float64) if raw_scores else result.scores


async def _serve_ranked(
    request: Request,
    response: Response,
    settings: Settings,
    models: ModelRegistry[ScoringEngine],
    call: ScoringCall,
    shape: Shape,
) -> object:
    def answer(result: EngineResult, lease: Lease[ScoringEngine]) -> object:
        timing_headers(response, time.monotonic() - arrival_time(request.scope), result)
        return shape(result, lease)

    return await serve_model(request, response, settings, call, models, answer)


@router.post(
    "/rerank",
    response_model=list[RerankResult] | VllmRerankResponse,
    response_model_exclude_none=True,
    summary="text-embeddings-inference and vLLM compatible rerank",
    description=(
        "Same model and batching as `/score`. With `texts` (TEI): "
        "`[{index, score, text?}]` best first; `raw_scores` returns logits, `top_n` the "
        "best n. With `documents` (vLLM, Infinity): `{id, model, results: [{index, "
        "relevance_score, document?: {text}}]}` best first. Give one of the two."
    ),
)
async def rerank(
    body: RerankRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
) -> object:
    if body.texts is not None and body.documents is not None:
        raise InvalidInput(
            "documents: give texts (text-embeddings-inference) or documents (vLLM, "
            "Infinity), not both",
            field="documents",
        )
    if body.texts is None and body.documents is None:
        raise InvalidInput(
            "texts: field required (or documents, vLLM's and Infinity's name)", field="texts"
        )
    if body.texts is not None:
        texts = body.texts

        def tei(result: EngineResult, lease: Lease[ScoringEngine]) -> list[RerankResult]:
            values = _values(result, body.raw_scores)
            return [
                RerankResult(
                    index=i, score=float(values[i]), text=texts[i] if body.return_text else None
                )
                for i in ranked(values, body.top_n)
            ]

        call = _call(
            body.query,
            texts,
            settings,
            RERANK_FIELDS,
            body.truncate,
            body.model,
            body.cache,
            body.cascade_top_k,
        )
        return await _serve_ranked(request, response, settings, models, call, tei)

    documents = body.documents or []

    def vllm(result: EngineResult, lease: Lease[ScoringEngine]) -> VllmRerankResponse:
        return VllmRerankResponse(
            id=_rerank_id(),
            model=lease.served.name,
            results=_ranked_results(
                _values(result, body.raw_scores), documents, body.top_n, body.return_documents
            ),
        )

    call = _call(
        body.query,
        documents,
        settings,
        DOCUMENTS_FIELDS,
        body.truncate,
        body.model,
        body.cache,
        body.cascade_top_k,
    )
    return await _serve_ranked(request, response, settings, models, call, vllm)


@router.post(
    "/infinity/rerank",
    response_model=InfinityRerankResponse,
    summary="Infinity compatible rerank",
    description=(
        "Infinity's `/rerank`: `documents` best first as `{index, relevance_score, "
        "document?}`, the document a string. For litellm's `infinity/` provider, whose "
        "request is byte for byte vLLM's: point its `api_base` at `/infinity`."
    ),
)
async def infinity_rerank(
    body: InfinityRerankRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
) -> object:
    def infinity(result: EngineResult, lease: Lease[ScoringEngine]) -> InfinityRerankResponse:
        values = _values(result, body.raw_scores)
        return InfinityRerankResponse(
            id=_rerank_id(),
            model=lease.served.name,
            created=int(time.time()),
            results=[
                InfinityRankedResult(
                    index=i,
                    relevance_score=float(values[i]),
                    document=body.documents[i] if body.return_documents else None,
                )
                for i in ranked(values, body.top_n)
            ],
        )

    call = _call(
        body.query, body.documents, settings, DOCUMENTS_FIELDS, True, body.model, body.cache
    )
    return await _serve_ranked(request, response, settings, models, call, infinity)


async def _cohere(
    version: str,
    body: CohereRerankRequest,
    request: Request,
    response: Response,
    settings: Settings,
    models: ModelRegistry[ScoringEngine],
) -> object:
    texts = [document_text(d) for d in body.documents]

    def cohere(result: EngineResult, lease: Lease[ScoringEngine]) -> CohereRerankResponse:
        return CohereRerankResponse(
            id=_rerank_id(),
            model=lease.served.name,
            results=_ranked_results(result.scores, texts, body.top_n, body.return_documents),
            meta=ApiMeta(
                api_version=ApiVersion(version=version), billed_units=BilledUnits(search_units=1)
            ),
        )

    call = _call(body.query, texts, settings, DOCUMENTS_FIELDS, True, body.model, body.cache)
    return await _serve_ranked(request, response, settings, models, call, cohere)


COHERE_ANSWER = (
    "`{id, model, results: [{index, relevance_score, document?: {text}}], meta}` best "
    "first; `top_n` the best n, `return_documents` echoes each text. Documents are strings "
    "or objects whose `text` is ranked."
)


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    summary="Cohere v1 and Jina compatible rerank",
    description="Cohere's and Jina's `/v1/rerank`, same model and batching as `/score`: "
    + COHERE_ANSWER,
)
async def cohere_v1_rerank(
    body: CohereRerankRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
) -> object:
    return await _cohere("1", body, request, response, settings, models)


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    response_model_exclude_none=True,
    summary="Cohere v2 compatible rerank",
    description="Cohere's `/v2/rerank`, same model and batching as `/score`: " + COHERE_ANSWER,
)
async def cohere_v2_rerank(
    body: CohereV2RerankRequest,
    request: Request,
    response: Response,
    settings: SettingsDep,
    models: ModelsDep,
) -> object:
    return await _cohere("2", body, request, response, settings, models)


def _call(
    query: str,
    texts: Sequence[str],
    settings: Settings,
    fields: FieldNames,
    truncate: bool,
    model: str | None,
    cache: bool = True,
    cascade_top_k: int | None = None,
) -> ScoringCall:
    return ScoringCall(
        query=query,
        texts=texts,
        truncate=truncate,
        max_items=settings.max_items,
        fields=fields,
        model=model,
        cache=cache,
        cascade_top_k=cascade_top_k,
    )
