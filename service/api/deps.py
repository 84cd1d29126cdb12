"""Shared FastAPI dependencies: settings, models, engine, shadow, metrics from ``app.state``.

All ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread, which for
these lookups would cost thread hand-offs (and worker threads) on every request.
"""

from __future__ import annotations

from email.message import Message

from fastapi import Request

from service.engine import ScoringEngine
from service.errors import NotReady, UnsupportedMediaType
from service.features import TextLimits
from service.metrics import Metrics
from service.models import ModelRegistry
from service.settings import Settings
from service.shadow import TeacherShadow


async def get_settings(request: Request) -> Settings:
    """The app's one Settings (tests build the app with their own)."""
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_models(request: Request) -> ModelRegistry[ScoringEngine]:
    """The loaded models by name (the scoring routes lease the version each request gets)."""
    models: ModelRegistry[ScoringEngine] | None = getattr(request.app.state, "models", None)
    if models is None:
        raise NotReady("the model is not loaded yet")
    return models


async def get_engine(request: Request) -> ScoringEngine:
    """The default model's current engine."""
    engine: ScoringEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model is not loaded yet")
    return engine


async def get_shadow(request: Request) -> TeacherShadow:
    shadow: TeacherShadow | None = getattr(request.app.state, "shadow", None)
    if shadow is None:
        raise NotReady("the service is starting")
    return shadow


async def get_text_limits(request: Request) -> TextLimits:
    """The character limits every scoring backend holds requests to."""
    return request.app.state.text_limits


async def require_json(request: Request) -> None:
    """Refuse bodies that are not JSON with 415 instead of a confusing validation error."""
    header = request.headers.get("content-type")
    if header is None:
        return  # curl -d without -H: accept and let JSON parsing decide
    message = Message()
    message["content-type"] = header
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise UnsupportedMediaType(
            f"content-type: expected application/json, got {header!r}", field="content-type"
        )
