"""Bad input: schema-driven fuzzing of every endpoint and hand-written hostile requests.

The long version (thousands of cases, over HTTP) is ``python -m loadtest.reliability``.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from reliability_support import serving

from loadtest.badinput import run_cases
from loadtest.faults import teacher_loader
from loadtest.fuzz import fuzz, load_schema

ADMIN_TOKEN = "fuzz-token"
# Generated requests per operation and mode (schema-valid, schema-invalid): a few hundred.
EXAMPLES = 40
OPERATIONS = {
    "POST /score",
    "POST /rerank",
    "POST /infinity/rerank",
    "POST /v1/rerank",
    "POST /v2/rerank",
    "POST /shadow/score",
    "GET /healthz",
    "GET /readyz",
    "GET /info",
    "GET /metrics",
    "PUT /admin/shadow",
    "GET /v1/models",
    "GET /admin/models",
    "PUT /admin/models/{name}",
    "DELETE /admin/models/{name}",
    "PUT /admin/canary",
    "DELETE /admin/canary",
}


def test_schema_fuzzing_of_every_endpoint(reliability_app: Callable[..., FastAPI]) -> None:
    from schemathesis.python.asgi import shutdown_lifespans

    # Everything on: admin endpoint (token set) and a working teacher behind /shadow/score.
    app = reliability_app(
        teacher_loader=teacher_loader("ok"), admin_token=ADMIN_TOKEN, warmup=False
    )
    schema = load_schema(app=app)
    try:
        report = fuzz(schema, examples=EXAMPLES, admin_token=ADMIN_TOKEN)
    finally:
        shutdown_lifespans()  # schemathesis keeps the app running between calls
    assert report.failures == [], "\n".join(f.line() for f in report.failures)
    assert report.server_errors == 0
    assert set(report.by_operation) == OPERATIONS
    assert report.cases >= 250, report.summary()
    # Both outcomes were exercised, not only refusals.
    assert report.statuses["200"] >= 50 and report.statuses["422"] >= 50, report.statuses


def test_hostile_requests(reliability_app: Callable[..., FastAPI]) -> None:
    import asyncio

    async def body() -> None:
        async with serving(reliability_app()) as client:
            limits = (await client.get("/info")).json()["limits"]
            results = await run_cases(client, limits)
        failed = [f"{r.name}: {r.problem}" for r in results if not r.ok]
        assert not failed, "\n".join(failed)
        assert len(results) >= 60

    asyncio.run(body())
