"""The rerank shapes (vLLM's and Infinity's /rerank, Cohere's /v1 and /v2) through the real
ASGI app and the tiny exported model: ranked as /score ranks, top_n honoured, fields named."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from apitools import make_texts, metric, run, serving
from fastapi import FastAPI

QUERY = "angle bracket"
TEXTS = make_texts(9, seed=3)


async def reference(client: httpx.AsyncClient, texts: list[str]) -> list[tuple[int, float]]:
    """(index, score) best first, ties in input order, from /score."""
    r = await client.post("/score", json={"query": QUERY, "items": texts})
    assert r.status_code == 200, r.text
    scores = [s["score"] for s in r.json()["scores"]]
    return sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))


def pairs(results: list[dict[str, Any]], score: str = "relevance_score") -> list[tuple[int, float]]:
    return [(r["index"], r[score]) for r in results]


def test_every_shape_ranks_as_score_does(make_app: Callable[..., FastAPI]) -> None:
    objects: list[Any] = [{"text": t} if i % 2 else t for i, t in enumerate(TEXTS)]

    async def body() -> None:
        # A model name a client sends (an alias of the loaded one): answered as the model
        # that scored, whose name every answer gives.
        async with serving(make_app(model_aliases={"m-1": "tiny"})) as client:
            best = await reference(client, TEXTS)
            tei = await client.post("/rerank", json={"query": QUERY, "texts": TEXTS, "top_n": 4})
            assert pairs(tei.json(), "score") == best[:4]
            vllm = await client.post(
                "/rerank",
                json={"model": "m-1", "query": QUERY, "documents": TEXTS, "top_n": 3},
            )
            assert vllm.status_code == 200, vllm.text
            out = vllm.json()
            assert out["model"] == "tiny" and out["id"]
            assert pairs(out["results"]) == best[:3]
            assert all("document" not in r for r in out["results"])
            for path, version in (("/v1/rerank", "1"), ("/v2/rerank", "2")):
                r = await client.post(
                    path,
                    json={"query": QUERY, "documents": objects, "return_documents": True},
                )
                assert r.status_code == 200, r.text
                out = r.json()
                assert pairs(out["results"]) == best
                assert [x["document"]["text"] for x in out["results"]] == [
                    TEXTS[i] for i, _ in best
                ]
                assert out["meta"] == {
                    "api_version": {"version": version},
                    "billed_units": {"search_units": 1},
                }
                assert out["model"] == "tiny"  # none named: the served package
                assert float(r.headers["x-inference-time"]) >= 0
            inf = await client.post(
                "/infinity/rerank",
                json={"query": QUERY, "documents": TEXTS, "top_n": 2, "return_documents": True},
            )
            out = inf.json()
            assert out["object"] == "rerank" and pairs(out["results"]) == best[:2]
            assert [x["document"] for x in out["results"]] == [TEXTS[i] for i, _ in best[:2]]

    run(body)


def test_documents_body_on_rerank_echoes_objects_and_raw_scores(
    make_app: Callable[..., FastAPI],
) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            best = await reference(client, TEXTS[:3])
            r = await client.post(
                "/rerank",
                json={
                    "query": QUERY,
                    "documents": TEXTS[:3],
                    "return_documents": True,
                    "raw_scores": True,
                },
            )
            out = r.json()["results"]
            assert [x["document"] for x in out] == [{"text": TEXTS[i]} for i, _ in best]
            # Logits: the manifest's activation (sigmoid) of them is /score's score.
            sigmoid = [1 / (1 + math.exp(-x["relevance_score"])) for x in out]
            assert sigmoid == pytest.approx([s for _, s in best], abs=1e-6)

    run(body)


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/score", {"query": QUERY, "items": ["a", " "]}, "items[1].text"),
        ("/score", {"query": QUERY, "items": [{"id": "x", "text": ""}]}, "items[0].text"),
        ("/rerank", {"query": QUERY, "texts": ["a", "\t\n"]}, "texts[1]"),
        ("/rerank", {"query": QUERY, "documents": ["a", "b", ""]}, "documents[2]"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a", "b", " "]}, "documents[2]"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a", {"text": ""}]}, "documents[1].text"),
        ("/v2/rerank", {"query": QUERY, "documents": [{"text": "\u3000"}]}, "documents[0].text"),
        ("/v2/rerank", {"query": QUERY, "documents": [{"title": "a"}]}, "documents[0].text"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a", 5]}, "documents[1]"),
        ("/infinity/rerank", {"query": QUERY, "documents": ["a", ""]}, "documents[1]"),
        ("/v1/rerank", {"query": " ", "documents": ["a"]}, "query"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "documents"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, ""),
        ("/rerank", {"query": QUERY}, "texts"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "documents": ["a"]}, "documents"),
    ],
)
def test_bad_input_is_refused_naming_the_shapes_field(
    make_app: Callable[..., FastAPI], path: str, payload: dict[str, Any], field: str
) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            r = await client.post(path, json=payload)
            assert r.status_code == 422, r.text
            error = r.json()
            expected = field or "rank_fields[0]"
            assert error["field"] == expected, error
            assert error["error"].startswith(f"{expected}: "), error

    run(body)


def test_too_many_documents_is_413_naming_documents(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app(max_items=3)) as client:
            for path in ("/rerank", "/infinity/rerank", "/v1/rerank", "/v2/rerank"):
                r = await client.post(path, json={"query": "x", "documents": ["a"] * 4})
                assert r.status_code == 413, (path, r.text)
                assert r.json()["field"] == "documents"

    run(body)


def test_rerank_shapes_count_as_scoring_requests(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(slo_latency_ms=10_000)

    async def body() -> None:
        async with serving(app) as client:
            for path in ("/v1/rerank", "/v2/rerank", "/infinity/rerank"):
                r = await client.post(path, json={"query": QUERY, "documents": TEXTS[:2]})
                assert r.status_code == 200
            text = (await client.get("/metrics")).text
        for path in ("/v1/rerank", "/v2/rerank", "/infinity/rerank"):
            assert f'relevance_request_items_count{{endpoint="{path}"}} 1.0' in text, path
        assert metric(app, "relevance_slo_requests_total") == 3

    run(body)


def test_openapi_describes_every_shape(make_app: Callable[..., FastAPI]) -> None:
    spec = make_app(max_items=7).openapi()
    for path in ("/rerank", "/infinity/rerank", "/v1/rerank", "/v2/rerank"):
        assert "200" in spec["paths"][path]["post"]["responses"], path
    schemas = spec["components"]["schemas"]
    assert schemas["RerankRequest"]["oneOf"] == [
        {"required": ["texts"]},
        {"required": ["documents"]},
    ]
    for name in ("RerankRequest", "CohereRerankRequest", "CohereV2RerankRequest"):
        assert schemas[name]["properties"]["documents"]["maxItems"] == 7, name
    assert schemas["CohereRerankResponse"]["required"] == ["id", "model", "results", "meta"]
    document = schemas["CohereRerankRequest"]["properties"]["documents"]["items"]
    assert {"type": "string"} in [{"type": o.get("type")} for o in document["oneOf"]]


def test_docs_load_only_local_assets(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            page = await client.get("/docs")
            assert page.status_code == 200
            urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
            assert len(urls) >= 3, urls  # the script, the stylesheet, the schema (and icon)
            for url in urls:
                assert url.startswith("/"), f"{url} is not served by the app"
                r = await client.get(url)
                assert r.status_code == 200, url
                assert r.content, url
            assert "/openapi.json" in urls
            assert (await client.get("/redoc")).status_code == 404  # it would need a CDN

    run(body)
