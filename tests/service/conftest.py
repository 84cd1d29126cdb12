"""Fixtures of the service tests: the real app built on the tiny model package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def make_app(tiny_model_package: Path) -> Callable[..., FastAPI]:
    """Build the real app on the tiny package; keyword arguments are settings overrides."""

    def make(teacher_loader: Callable[[], Any] | None = None, **overrides: Any) -> FastAPI:
        # The score cache and the warm-up ladder have their own tests; elsewhere each
        # request is scored by the model at the configured batch size.
        overrides.setdefault("score_cache_mb", 0)
        overrides.setdefault("tune_budget_s", 0)
        settings = Settings(model_dir=tiny_model_package, **overrides)
        return create_app(settings, teacher_loader=teacher_loader)

    return make
