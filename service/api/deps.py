"""Shared FastAPI dependencies: settings, engine, shadow, metrics from ``app.state``."""

from __future__ import annotations

from email.message import Message

from fastapi import Request

from service.engine import ScoringEngine
from service.errors import NotReady, UnsupportedMediaType
from service.metrics import Metrics
from service.settings import Settings
from service.shadow import TeacherShadow


def get_settings(request: Request) -> Settings:
    """The app's one Settings (tests build the app with their own)."""
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_engine(request: Request) -> ScoringEngine:
    engine: ScoringEngine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model is not loaded yet")
    return engine


def get_shadow(request: Request) -> TeacherShadow:
    shadow: TeacherShadow | None = getattr(request.app.state, "shadow", None)
    if shadow is None:
        raise NotReady("the service is starting")
    return shadow


def require_json(request: Request) -> None:
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
