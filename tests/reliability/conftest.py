"""Fixtures of the reliability tests: the real app on the tiny package, faults on demand."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings


@pytest.fixture(autouse=True)
def frozen_heap() -> Iterator[None]:
    """Move the heap the suite has built so far out of the collector's reach.

    These tests time requests in one process with everything the suite imported before
    them (torch, Ray, litellm: millions of objects); a full collection then pauses the
    event loop for about half a second (0.18 s with the imports alone), which the tests
    would read as the server being slow. CI saw a 429 answered in 0.55 s that way.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture
def reliability_app(tiny_model_package: Path) -> Callable[..., FastAPI]:
    """Build the real app on the tiny package; keywords are settings overrides.

    ``teacher_loader`` and ``engine_factory`` inject a fake teacher or a slowed model.
    """

    def make(
        teacher_loader: Callable[[], Any] | None = None,
        engine_factory: Callable[..., Any] | None = None,
        **overrides: Any,
    ) -> FastAPI:
        overrides.setdefault("intra_op_threads", 1)  # the machine is shared
        overrides.setdefault("score_cache_mb", 0)  # overload must reach the model
        overrides.setdefault("tune_budget_s", 0)
        settings = Settings(model_dir=tiny_model_package, **overrides)
        return create_app(settings, teacher_loader=teacher_loader, engine_factory=engine_factory)

    return make
