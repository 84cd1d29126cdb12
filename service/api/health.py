"""Liveness, readiness, description and metrics endpoints."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.admission import Admission
from service.api.deps import get_metrics, get_settings
from service.errors import NotReady
from service.metrics import Metrics
from service.models import ModelRegistry
from service.settings import Settings

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: model loaded and warmed up",
    responses={503: {"description": "Loading, warming up, draining or failed."}},
)
async def readyz(request: Request) -> JSONResponse:
    models = getattr(request.app.state, "models", None)
    if models is not None and models.ready:
        return JSONResponse({"status": "ready"})
    status = models.status if models is not None else "loading"
    return JSONResponse({"status": status}, status_code=503)


@router.get("/info", summary="Model manifest, execution provider, batcher settings, limits")
async def info(
    request: Request, settings: Annotated[Settings, Depends(get_settings)]
) -> dict[str, Any]:
    engine = getattr(request.app.state, "engine", None)
    models: ModelRegistry[Any] | None = getattr(request.app.state, "models", None)
    shadow = getattr(request.app.state, "shadow", None)
    return {
        # The default model's engine in full; every loaded model in "models".
        "model": engine.info() if engine is not None else {"status": "loading"},
        "models": models.describe() if models is not None else None,
        "limits": {
            "max_items": settings.max_items,
            "max_query_chars": settings.max_query_chars,
            "max_text_chars": settings.max_text_chars,
            "max_body_bytes": settings.max_body_bytes,
            "default_deadline_ms": settings.default_deadline_ms,
            "max_deadline_ms": settings.max_deadline_ms,
            "max_queue_pairs": settings.max_queue_pairs,
        },
        "slo": {
            "latency_ms": settings.slo_latency_ms,
            "per_items": settings.slo_items,
            "window_s": settings.slo_window_s,
        },
        "shadow": shadow.info() if shadow is not None else None,
        "load": _load(request),
    }


def _load(request: Request) -> dict[str, Any]:
    """What the door and admission look at right now (operators, the reliability run).

    The default model's admission, also for a representation engine (whose admission
    guards its item encoding and is not the door's)."""
    state = request.app.state
    lag = getattr(state, "loop_lag", None)
    admission: Admission | None = getattr(getattr(state, "engine", None), "admission", None)
    unknown = dict.fromkeys(
        (
            "reserved_pairs",
            "forecast_queue_ms",
            "measured_pairs_per_s",
            "request_overhead_ms",
            "cost_model",
        )
    )
    return {
        "loop_lag_ms": round(lag.lag_s * 1000, 1) if lag is not None else None,
        **(admission.load() if admission is not None else unknown),
    }


@router.get(
    "/v1/models",
    summary="Loaded models (OpenAI's and vLLM's list shape)",
    description="Each loaded model's serving name (what a request's `model` gives), its "
    "package and version; `default` marks the one a request naming none gets.",
)
async def list_models(request: Request) -> dict[str, Any]:
    models: ModelRegistry[Any] | None = getattr(request.app.state, "models", None)
    if models is None:
        raise NotReady("the model is not loaded yet")
    return {
        "object": "list",
        "data": [
            {
                "id": served["name"],
                "object": "model",
                "created": int(served["loaded_at"]),
                "owned_by": "relevance-service",
                "package": served["package"],
                "version": served["version"],
                "ready": served["ready"],
                "default": served["name"] == models.default,
                "canary_share": models.canary_share if served["name"] == models.canary else 0.0,
            }
            for served in models.describe()["models"]
        ],
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(m: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    m.refresh()
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
