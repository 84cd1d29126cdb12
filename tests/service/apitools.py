"""Helpers for the API tests: run the app's lifespan and talk to it in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan, wait for warm-up, and yield a client talking to it in-process."""
    async with app.router.lifespan_context(app):
        assert await app.state.engine.wait_ready(30)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def metric(app: FastAPI, name: str, labels: dict[str, str] | None = None) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


WORDS = [
    "drill",
    "angle",
    "bracket",
    "cordless",
    "saw",
    "paint",
    "white",
    "door",
    "lock",
    "brass",
    "valve",
    "pipe",
    "copper",
    "wire",
    "led",
    "bulb",
    "ceiling",
    "fan",
    "outdoor",
    "patio",
    "chair",
    "cabinet",
    "hinge",
    "shelf",
    "screw",
    "anchor",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Texts of very different lengths, so batches need padding."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 45)))) for _ in range(n)]
