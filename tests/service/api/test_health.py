"""Health, readiness, info, metrics, OpenAPI and the optional admin endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from apitools import metric, run, serving
from fastapi import FastAPI


def test_health_ready_info_metrics(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(max_batch_size=16, max_wait_ms=3)

    async def body() -> None:
        async with serving(app) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            info = (await client.get("/info")).json()
            assert info["model"]["execution"]["provider"] == "CPUExecutionProvider"
            assert info["model"]["manifest"]["version"] == "0.0.test"
            assert info["model"]["batcher"]["max_batch_size"] == 16
            assert info["limits"]["max_items"] == 1000
            assert info["shadow"]["status"] == "disabled"
            r = await client.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            for name in (
                "relevance_ready 1.0",
                "relevance_model_info{",
                "process_cpu_seconds_total",
            ):
                assert name in r.text
            load = info["load"]
            assert load["reserved_pairs"] == 0 and load["measured_pairs_per_s"] > 0
        # After shutdown the app no longer claims to be ready, nor scores.
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] != "ready"
            r = await client.post("/score", json={"query": "drill", "items": ["a"]})
            assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
            assert (await client.get("/info")).json()["load"]["reserved_pairs"] is None
            assert (await client.get("/healthz")).status_code == 200  # the process still answers

    run(body)


def test_readiness_turns_off_while_draining_and_accepted_work_finishes(
    make_app: Callable[..., FastAPI],
) -> None:
    # A lone pair waits max_wait_ms for company: long enough to look at readiness meanwhile.
    app = make_app(max_wait_ms=500, max_batch_size=64)

    async def body() -> None:
        async with serving(app) as client:
            held = asyncio.create_task(client.post("/score", json={"query": "a", "items": ["b"]}))
            for _ in range(500):
                if app.state.admission.reserved_pairs == 1:
                    break
                await asyncio.sleep(0.001)
            stopping = asyncio.create_task(app.state.engine.stop(timeout_s=30))
            await asyncio.sleep(0)
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json() == {"status": "draining"}
            refused = await client.post("/score", json={"query": "a", "items": ["c"]})
            assert refused.status_code == 503
            assert (await held).status_code == 200  # accepted before the drain: answered
            await stopping
            assert metric(app, "relevance_ready") == 0

    run(body)


def test_openapi_documents_endpoints_with_examples(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            spec = (await client.get("/openapi.json")).json()
            assert (await client.get("/docs")).status_code == 200
        for path in ("/score", "/rerank", "/shadow/score", "/healthz", "/readyz", "/info"):
            assert path in spec["paths"], path
        schemas = spec["components"]["schemas"]
        assert schemas["ScoreRequest"]["examples"][0]["query"] == "angle bracket"
        assert "429" in spec["paths"]["/score"]["post"]["responses"]
        assert "/admin/shadow" not in spec["paths"]  # no admin token configured

    run(body)


def test_admin_changes_mirror_rate_only_with_the_token(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(admin_token="s3cret")

    async def body() -> None:
        async with serving(app) as client:
            payload = {"mirror_rate": 0.25}
            r = await client.put("/admin/shadow", json=payload)
            assert r.status_code == 401
            bad = {"Authorization": "Bearer nope"}
            assert (await client.put("/admin/shadow", json=payload, headers=bad)).status_code == 401
            good = {"Authorization": "Bearer s3cret"}
            r = await client.put("/admin/shadow", json=payload, headers=good)
            assert r.status_code == 200 and r.json()["mirror_rate"] == 0.25
            r = await client.put("/admin/shadow", json={"mirror_rate": 2}, headers=good)
            assert r.status_code == 422 and r.json()["field"] == "mirror_rate"

    run(body)
