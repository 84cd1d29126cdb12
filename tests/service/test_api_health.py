"""Health, readiness, info, metrics, OpenAPI and the optional admin endpoint."""

from __future__ import annotations

from collections.abc import Callable

from apitools import run, serving
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
        # After shutdown the app no longer claims to be ready.
        assert app.state.engine is None

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
