"""/score and /rerank through the real ASGI app and the tiny exported model."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pytest
from apitools import make_texts, metric, run, serving
from fastapi import FastAPI

QUERY = "angle bracket"


def scores_of(response: httpx.Response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    return {s["id"]: s["score"] for s in response.json()["scores"]}


def test_score_answers_in_input_order_with_ids(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app()) as client:
            items = [{"id": "p1", "text": "Simpson Strong-Tie 12-Gauge Angle"}, "brass gate valve"]
            r = await client.post("/score", json={"query": QUERY, "items": items})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == {"name": "tiny", "version": "0.0.test"}
            assert [(s["id"], s["index"]) for s in out["scores"]] == [("p1", 0), ("1", 1)]
            assert all(0 <= s["score"] <= 1 for s in out["scores"])
            assert {s["label"] for s in out["scores"]} <= {"irrelevant", "partial", "exact"}
            assert out["timing"]["total_ms"] > 0 and out["timing"]["batches"] >= 1
            assert float(r.headers["x-inference-time"]) >= 0

    run(body)


def test_top_k_returns_the_ranking(make_app: Callable[..., FastAPI]) -> None:
    texts = make_texts(12)

    async def body() -> None:
        async with serving(make_app()) as client:
            full = (await client.post("/score", json={"query": QUERY, "items": texts})).json()
            top = await client.post("/score", json={"query": QUERY, "items": texts, "top_k": 5})
            ranked = sorted(full["scores"], key=lambda s: (-s["score"], s["index"]))[:5]
            assert top.json()["scores"] == ranked

    run(body)


def test_batched_scores_equal_one_pair_at_a_time(make_app: Callable[..., FastAPI]) -> None:
    """Scores do not depend on batch company or padding: the default CPU graph is the
    statically quantized INT8 one, which the export measured batch-invariant."""
    texts = make_texts(40, seed=1)

    async def score_all(app: FastAPI, one_request: bool) -> list[float]:
        async with serving(app) as client:
            if one_request:
                return list(
                    scores_of(
                        await client.post("/score", json={"query": QUERY, "items": texts})
                    ).values()
                )
            out = []
            for text in texts:
                out += scores_of(
                    await client.post("/score", json={"query": QUERY, "items": [text]})
                ).values()
            return out

    async def body() -> None:
        batched = await score_all(make_app(max_batch_size=64, max_wait_ms=5), one_request=True)
        single = await score_all(make_app(max_batch_size=1), one_request=False)
        np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)

    run(body)


def test_concurrent_requests_share_batches(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(max_batch_size=64, max_wait_ms=50)
    requests = [make_texts(4, seed=s) for s in range(16)]

    async def body() -> None:
        async with serving(app) as client:
            alone = [
                scores_of(await client.post("/score", json={"query": QUERY, "items": t}))
                for t in requests
            ]
            sum0 = metric(app, "relevance_batch_size_pairs_sum")
            count0 = metric(app, "relevance_batch_size_pairs_count")
            responses = await asyncio.gather(
                *(client.post("/score", json={"query": QUERY, "items": t}) for t in requests)
            )
            pairs = metric(app, "relevance_batch_size_pairs_sum") - sum0
            batches = metric(app, "relevance_batch_size_pairs_count") - count0
            assert pairs == 64
            assert pairs / batches > 8, f"{batches} batches for 16 concurrent requests"
            for expected, response in zip(alone, responses, strict=True):
                got = scores_of(response)
                assert got.keys() == expected.keys()
                np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)

    run(body)


def test_order_and_ids_survive_splitting(make_app: Callable[..., FastAPI]) -> None:
    texts = make_texts(57, seed=2)
    rng = np.random.default_rng(3)
    ids = [f"sku-{n}" for n in rng.permutation(10_000)[:57]]
    items = [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]

    async def body() -> None:
        async with serving(make_app(max_batch_size=64)) as client:
            one_batch = scores_of(
                await client.post("/score", json={"query": QUERY, "items": items})
            )
        app = make_app(max_batch_size=4, max_batch_tokens=200)
        async with serving(app) as client:
            r = await client.post("/score", json={"query": QUERY, "items": items})
            split = r.json()["scores"]
            assert r.json()["timing"]["batches"] >= 15
        assert [s["id"] for s in split] == ids
        assert [s["index"] for s in split] == list(range(57))
        np.testing.assert_allclose(
            [s["score"] for s in split], [one_batch[i] for i in ids], atol=1e-5
        )

    run(body)


def test_rerank_speaks_tei(make_app: Callable[..., FastAPI]) -> None:
    texts = make_texts(6, seed=4)

    async def body() -> None:
        async with serving(make_app()) as client:
            scored = scores_of(await client.post("/score", json={"query": QUERY, "items": texts}))
            r = await client.post(
                "/rerank", json={"query": QUERY, "texts": texts, "return_text": True}
            )
            assert r.status_code == 200, r.text
            out = r.json()
            assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
            assert sorted(o["index"] for o in out) == list(range(6))
            for o in out:
                assert o["text"] == texts[o["index"]]
                assert o["score"] == pytest.approx(scored[str(o["index"])], abs=1e-6)
            raw = (
                await client.post(
                    "/rerank", json={"query": QUERY, "texts": texts, "raw_scores": True}
                )
            ).json()
            assert "text" not in raw[0]
            for o in raw:
                assert 1 / (1 + math.exp(-o["score"])) == pytest.approx(
                    scored[str(o["index"])], abs=1e-6
                )

    run(body)


# ---------------------------------------------------------------------------- bad input
LONG = "word " * 400  # 2,000 characters, far more than the tiny model's 64 tokens

BAD_INPUTS: list[tuple[str, dict[str, Any], dict[str, Any], int, str]] = [
    ("empty query", {"query": "", "items": ["a"]}, {}, 422, "query"),
    ("blank query", {"query": "  \t", "items": ["a"]}, {}, 422, "query"),
    ("no items", {"query": "x", "items": []}, {}, 422, "items"),
    ("missing items", {"query": "x"}, {}, 422, "items"),
    ("wrong types", {"query": 5, "items": "abc"}, {}, 422, "query"),
    ("item without text", {"query": "x", "items": [{"id": "a"}]}, {}, 422, "items[0].text"),
    ("item of wrong type", {"query": "x", "items": ["a", 7]}, {}, 422, "items[1]"),
    (
        "duplicate ids",
        {"query": "x", "items": [{"id": "a", "text": "1"}, {"id": "a", "text": "2"}]},
        {},
        422,
        "items",
    ),
    ("unknown field", {"query": "x", "items": ["a"], "topk": 3}, {}, 422, "topk"),
    ("top_k zero", {"query": "x", "items": ["a"], "top_k": 0}, {}, 422, "top_k"),
    (
        "deadline over limit",
        {"query": "x", "items": ["a"], "deadline_ms": 10**7},
        {},
        422,
        "deadline_ms",
    ),
    ("too many items", {"query": "x", "items": ["a"] * 11}, {"max_items": 10}, 413, "items"),
    (
        "text over char limit, no truncate",
        {"query": "x", "items": ["a", "b" * 101], "truncate": False},
        {"max_text_chars": 100},
        413,
        "items[1].text",
    ),
    (
        "query over char limit, no truncate",
        {"query": "q" * 101, "items": ["a"], "truncate": False},
        {"max_query_chars": 100},
        413,
        "query",
    ),
    (
        "pair over model length, no truncate",
        {"query": "x", "items": ["a", LONG], "truncate": False},
        {},
        413,
        "items[1].text",
    ),
    (
        "query over model length, no truncate",
        {"query": "drill " * 40, "items": ["a"], "truncate": False},
        {},
        413,
        "query",
    ),
]


@pytest.mark.parametrize(
    ("name", "payload", "settings", "status", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_input_gets_4xx_naming_the_field(
    make_app: Callable[..., FastAPI],
    name: str,
    payload: dict[str, Any],
    settings: dict[str, Any],
    status: int,
    field: str,
) -> None:
    async def body() -> None:
        async with serving(make_app(**settings)) as client:
            r = await client.post("/score", json=payload)
            assert r.status_code == status, r.text
            error = r.json()
            assert error["field"] == field, error
            assert error["error"].startswith(f"{field}: "), error

    run(body)


@pytest.mark.parametrize(
    ("texts", "settings", "field"),
    [
        (["a", LONG], {}, "texts[1]"),  # over the model's length
        (["b" * 101, "a"], {"max_text_chars": 100}, "texts[0]"),  # over the character limit
        (["a"] * 11, {"max_items": 10}, "texts"),
    ],
)
def test_rerank_names_its_own_fields(
    make_app: Callable[..., FastAPI], texts: list[str], settings: dict[str, Any], field: str
) -> None:
    async def body() -> None:
        async with serving(make_app(**settings)) as client:
            r = await client.post("/rerank", json={"query": "x", "texts": texts, "truncate": False})
            assert r.status_code == 413, r.text
            assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}: ")

    run(body)


def test_long_inputs_are_truncated_when_allowed(make_app: Callable[..., FastAPI]) -> None:
    async def body() -> None:
        async with serving(make_app(max_text_chars=100, max_query_chars=50)) as client:
            items = ["a", LONG, "word " * 15, "b" * 150]  # 75 chars are 15 tokens: not cut
            r = await client.post("/score", json={"query": "drill " * 40, "items": items})
            assert r.status_code == 200, r.text
            # Cut to 100 characters (LONG, the b's) or to the model's 64 tokens (LONG again,
            # counted once); the query's cut is not an item's.
            assert r.json()["truncated"] == 2

    run(body)


def test_malformed_json_wrong_type_and_oversized_body(make_app: Callable[..., FastAPI]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 1024  # no Content-Length: the limit applies while streaming

    async def body() -> None:
        async with serving(make_app(max_body_bytes=4096)) as client:
            r = await client.post(
                "/score", content=b"{not json", headers={"content-type": "application/json"}
            )
            assert r.status_code == 422 and r.json()["field"] == "body"
            r = await client.post(
                "/score", content=b"query=x", headers={"content-type": "text/plain"}
            )
            assert r.status_code == 415 and "content-type" in r.json()["error"]
            big = {"query": "x", "items": ["a" * 100] * 100}
            r = await client.post("/score", json=big)
            assert r.status_code == 413 and r.json()["field"] == "body"
            r = await client.post(
                "/score", content=chunks(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 413 and r.json()["field"] == "body"
            r = await client.post("/rerank", json={"query": "x", "texts": []})
            assert r.status_code == 422 and r.json()["field"] == "texts"
            r = await client.post(
                "/rerank", json={"query": "x", "texts": ["a"], "truncation_direction": "left"}
            )
            assert r.status_code == 422 and r.json()["field"] == "truncation_direction"

    run(body)


# ---------------------------------------------------------------------------- overload, deadlines
def test_overload_answers_429_with_retry_after_never_500(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(max_queue_pairs=12, max_wait_ms=50, max_batch_size=64)

    async def body() -> None:
        async with serving(app) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/score", json={"query": QUERY, "items": make_texts(5, seed=s)})
                    for s in range(30)
                )
            )
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, statuses
        assert 200 in statuses and 429 in statuses
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error_type"] == "overloaded"
        assert metric(
            app, "relevance_rejected_requests_total", {"reason": "overloaded"}
        ) == statuses.count(429)
        assert metric(app, "relevance_inflight_pairs") == 0

    run(body)


def test_expired_deadline_gives_504_and_skips_the_work(make_app: Callable[..., FastAPI]) -> None:
    # A partial batch waits max_wait_ms for company: far longer than this request's deadline.
    app = make_app(max_wait_ms=2000, max_batch_size=64)

    async def body() -> None:
        async with serving(app) as client:
            # Deadlines count from arrival: leave room to parse and queue on a busy machine.
            r = await client.post(
                "/score", json={"query": QUERY, "items": ["a", "b"], "deadline_ms": 300}
            )
            assert r.status_code == 504, r.text
            assert r.json()["field"] is None and "deadline_ms" in r.json()["error"]
            for _ in range(500):  # the batcher reaches the skipped pairs after max_wait_ms
                if metric(app, "relevance_dropped_pairs_total", {"reason": "cancelled"}):
                    break
                await asyncio.sleep(0.01)
            assert metric(app, "relevance_dropped_pairs_total", {"reason": "cancelled"}) == 2
            assert metric(app, "relevance_batch_size_pairs_count") == 0  # nothing ran
            assert metric(app, "relevance_inflight_pairs") == 0
            # the client's own deadline ran out: counted apart from the server's misses
            reasons = {
                reason: metric(app, "relevance_rejected_requests_total", {"reason": reason})
                for reason in ("deadline_exceeded_client", "deadline_exceeded")
            }
            assert reasons == {"deadline_exceeded_client": 1, "deadline_exceeded": 0}
            ok = await client.post(
                "/score", json={"query": QUERY, "items": ["a"], "deadline_ms": 5000}
            )
            assert ok.status_code == 200

    run(body)


def test_metrics_and_slo_after_traffic(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(slo_latency_ms=10_000)

    async def body() -> None:
        async with serving(app) as client:
            await client.post("/score", json={"query": QUERY, "items": make_texts(3)})
            await client.post("/score", json={"query": "", "items": ["a"]})
            text = (await client.get("/metrics")).text
        assert (
            'relevance_request_duration_seconds_bucket{endpoint="/score",le="0.001",status="200"}'
            in text
        )
        assert metric(app, "relevance_slo_requests_total") == 1  # the 422 is the client's fault
        assert metric(app, "relevance_slo_violations_total") == 0
        assert metric(app, "relevance_slo_compliance_ratio") == 1.0
        assert metric(app, "relevance_rejected_requests_total", {"reason": "validation"}) == 1
        assert metric(app, "relevance_tokens_total", {"kind": "real"}) > 0

    run(body)
