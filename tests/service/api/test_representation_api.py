"""A representation package behind the real app: /score and the rerank routes unchanged,
plain-string items keyed by their text, the cascade per request and by default, bad input
named, the preload before /readyz, the item store's metrics and /info."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from apitools import make_texts, metric, run, serving
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings

QUERY = "angle bracket"


@pytest.fixture
def make_repr_app(tiny_representation_package: Path) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        overrides.setdefault("score_cache_mb", 0)
        overrides.setdefault("tune_budget_s", 0)
        return create_app(Settings(model_dir=tiny_representation_package, **overrides))

    return make


def test_score_and_every_rerank_shape_serve_a_representation_package(
    make_repr_app: Callable[..., FastAPI],
) -> None:
    texts = make_texts(6, seed=5)

    async def body() -> None:
        app = make_repr_app()
        async with serving(app) as client:
            r = await client.post("/score", json={"query": QUERY, "items": texts})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == {"name": "tiny-representation", "version": "0.0.test"}
            scores = [s["score"] for s in out["scores"]]
            assert [s["index"] for s in out["scores"]] == list(range(6))
            best_first = sorted(range(6), key=lambda i: -scores[i])
            tei = await client.post("/rerank", json={"query": QUERY, "texts": texts})
            assert [x["index"] for x in tei.json()] == best_first
            assert [x["score"] for x in tei.json()] == pytest.approx(sorted(scores)[::-1])
            vllm = await client.post("/rerank", json={"query": QUERY, "documents": texts})
            assert [x["index"] for x in vllm.json()["results"]] == best_first
            cohere = await client.post(
                "/v1/rerank", json={"query": QUERY, "documents": texts, "top_n": 2}
            )
            assert [x["index"] for x in cohere.json()["results"]] == best_first[:2]
            infinity = await client.post(
                "/infinity/rerank", json={"query": QUERY, "documents": texts}
            )
            assert infinity.status_code == 200, infinity.text
            info = (await client.get("/info")).json()["model"]
            assert info["kind"] == "representation" and info["item_store"]["entries"] == 6
        # Plain strings (/score) and rerank texts are keyed by their text: all but the first
        # request found their items stored.
        assert metric(app, "relevance_item_store_lookups_total", {"result": "miss"}) == 6
        assert metric(app, "relevance_item_store_lookups_total", {"result": "hit"}) == 4 * 6
        assert metric(app, "relevance_item_store_bytes") > 0
        assert metric(app, "relevance_encoded_texts_total", {"side": "item"}) == 6

    run(body)


def test_ids_key_the_store_and_a_new_text_is_a_new_entry(
    make_repr_app: Callable[..., FastAPI],
) -> None:
    async def body() -> None:
        app = make_repr_app()
        async with serving(app) as client:
            old = [{"id": "p1", "text": "brass gate valve"}]
            new = [{"id": "p1", "text": "Simpson Strong-Tie angle"}]
            first = (await client.post("/score", json={"query": QUERY, "items": old})).json()
            renamed = (await client.post("/score", json={"query": QUERY, "items": new})).json()
            plain = await client.post("/score", json={"query": QUERY, "items": [new[0]["text"]]})
            assert renamed["scores"][0]["score"] != first["scores"][0]["score"]
            assert plain.json()["scores"][0]["score"] == renamed["scores"][0]["score"]
        assert metric(app, "relevance_encoded_texts_total", {"side": "item"}) == 3

    run(body)


def test_the_cascade_per_request_and_by_default(
    make_repr_app: Callable[..., FastAPI], tiny_model_package: Path
) -> None:
    texts = make_texts(20, seed=6)

    async def body() -> None:
        app = make_repr_app(cascade_model_dir=tiny_model_package, cascade_top_k=3)
        async with serving(app) as client:
            off = await client.post(
                "/score", json={"query": QUERY, "items": texts, "cascade_top_k": 0}
            )
            default = await client.post("/score", json={"query": QUERY, "items": texts})
            five = await client.post(
                "/rerank", json={"query": QUERY, "texts": texts, "cascade_top_k": 5}
            )
            info = (await client.get("/info")).json()["model"]["cascade"]
        assert info["default_top_k"] == 3 and info["model"]["manifest"]["name"] == "tiny"
        student = [s["score"] for s in off.json()["scores"]]
        cascaded = [s["score"] for s in default.json()["scores"]]
        head = sorted(range(20), key=lambda i: -student[i])[:3]
        tail = [i for i in range(20) if i not in head]
        # The student's best 3 re-scored (the cross-encoder's scores), ranked above the rest.
        assert any(cascaded[i] != student[i] for i in head)
        assert min(cascaded[i] for i in head) > max(cascaded[i] for i in tail)
        assert sorted(tail, key=lambda i: -cascaded[i]) == sorted(tail, key=lambda i: -student[i])
        top5 = sorted(range(20), key=lambda i: -student[i])[:5]
        assert {x["index"] for x in five.json()[:5]} == set(top5)

    run(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "items": ["valve"], "cascade_top_k": -1}, "cascade_top_k"),
        ({"query": QUERY, "items": ["valve"], "cascade_top_k": "3"}, "cascade_top_k"),
        ({"query": QUERY, "items": ["valve"], "cascade_top_k": 2}, "cascade_top_k"),
    ],
)
def test_bad_cascade_input_names_the_field(
    make_repr_app: Callable[..., FastAPI], body: dict[str, Any], field: str
) -> None:
    async def go() -> None:
        async with serving(make_repr_app()) as client:  # no cross-encoder configured
            r = await client.post("/score", json=body)
            assert r.status_code == 422, r.text
            assert r.json()["field"] == field
            assert field in r.json()["error"]

    run(go)


def test_a_cascade_asked_of_a_cross_encoder_is_met_by_its_own_scores(
    make_app: Callable[..., FastAPI],
) -> None:
    """A cross-encoder scores every item as a cascade scores its head: the same answer."""

    async def go() -> None:
        async with serving(make_app()) as client:
            body = {"query": QUERY, "items": ["valve", "angle bracket"], "cache": False}
            asked = await client.post("/score", json={**body, "cascade_top_k": 1})
            plain = await client.post("/score", json=body)
            assert asked.status_code == 200 and plain.status_code == 200, asked.text
            scores = [s["score"] for s in asked.json()["scores"]]
            assert scores == [s["score"] for s in plain.json()["scores"]]

    run(go)


def test_too_long_item_with_truncate_off_names_it(make_repr_app: Callable[..., FastAPI]) -> None:
    async def go() -> None:
        async with serving(make_repr_app()) as client:
            long_text = " ".join(["bracket"] * 200)
            r = await client.post(
                "/score", json={"query": QUERY, "items": ["valve", long_text], "truncate": False}
            )
            assert r.status_code == 413 and r.json()["field"] == "items[1].text"
            r = await client.post(
                "/rerank", json={"query": QUERY, "texts": [long_text], "truncate": False}
            )
            assert r.status_code == 413 and r.json()["field"] == "texts[0]"

    run(go)


def test_readyz_waits_for_the_preload(
    make_repr_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    catalogue = tmp_path / "catalogue.jsonl"
    texts = make_texts(600, seed=7)
    catalogue.write_text("".join(f'"{t}"\n' for t in texts))

    async def body() -> None:
        app = make_repr_app(item_preload=catalogue)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                first = await client.get("/readyz")
                assert first.status_code == 503
                assert first.json()["status"] in ("warming_up", "preloading")
                assert await app.state.engine.wait_ready(60)
                assert (await client.get("/readyz")).status_code == 200
                r = await client.post("/rerank", json={"query": QUERY, "texts": texts[:100]})
                assert r.status_code == 200
            assert metric(app, "relevance_item_store_entries") == len(set(texts))
            assert metric(app, "relevance_encoded_texts_total", {"side": "item"}) == len(set(texts))

    run(body)


def test_stored_items_are_served_while_item_encoding_is_saturated(
    make_repr_app: Callable[..., FastAPI],
) -> None:
    """The door's load shedding must not refuse what needs no item encoding: with the item
    lane's admission saturated, a request of stored items is answered, one with a new
    item is refused 429 by admission."""
    texts = make_texts(4, seed=11)

    async def go() -> None:
        app = make_repr_app()
        async with serving(app) as client:
            first = await client.post("/score", json={"query": QUERY, "items": texts})
            assert first.status_code == 200, first.text
            engine = app.state.engine
            admission = engine.admission
            # The item lane's queue is full: nothing more fits.
            admission._reserved_pairs = admission.config.max_queue_pairs
            admission.saturated = lambda: True  # and even one pair would be late
            try:
                again = await client.post("/score", json={"query": "other", "items": texts})
                assert again.status_code == 200, again.text
                new = await client.post("/score", json={"query": QUERY, "items": ["new one"]})
                assert new.status_code == 429, new.text
                assert "Retry-After" in new.headers
            finally:
                admission._reserved_pairs = 0

    run(go)
