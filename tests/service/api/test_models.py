"""Model versions through the API: naming a model, hot swap under requests, the canary,
and what the admin API refuses. The real app on tiny packages in a models directory
(``model_zoo``: ``tiny`` 0.0.test, ``tiny-v2`` 0.0.test2 with other weights,
``tiny-corrupt``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from apitools import metric, run
from fastapi import FastAPI

from service.app import admission_config, batcher_config, create_app, text_limits
from service.engine import ScoringEngine
from service.features import PairEncoder
from service.metrics import Metrics
from service.model_package import load_package
from service.models import canary_bucket
from service.scorers import OnnxScorer
from service.settings import Settings

TOKEN = "s3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
V1, V2 = "0.0.test", "0.0.test2"
ITEMS = ["cordless drill", "brass gate valve", "white ceiling fan with led light kit"]


def versions_app(zoo: Path, engine_factory: Any = None, **overrides: Any) -> FastAPI:
    """The app serving ``tiny`` as the default (and whatever ``models`` adds), admin on."""
    overrides.setdefault("models", {"tiny": "tiny"})
    overrides.setdefault("score_cache_mb", 0)
    overrides.setdefault("tune_budget_s", 0)
    settings = Settings(models_dir=zoo, admin_token=TOKEN, **overrides)
    return create_app(settings, engine_factory=engine_factory)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan with every loaded model warmed up, and a client."""
    async with app.router.lifespan_context(app):
        assert await app.state.models.wait_ready(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def score(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/score", json={"query": "drill", "items": ITEMS, **body})


def test_unknown_model_is_404_naming_the_field_on_every_route(model_zoo: Path) -> None:
    bodies = {
        "/score": {"query": "drill", "items": ITEMS},
        "/rerank": {"query": "drill", "documents": ITEMS},
        "/infinity/rerank": {"query": "drill", "documents": ITEMS},
        "/v1/rerank": {"query": "drill", "documents": ITEMS},
        "/v2/rerank": {"query": "drill", "documents": ITEMS},
    }

    async def body() -> None:
        async with serving(versions_app(model_zoo)) as client:
            for path, payload in [*bodies.items(), ("/rerank", {"query": "a", "texts": ITEMS})]:
                r = await client.post(path, json={**payload, "model": "rerank-english-v3.0"})
                assert r.status_code == 404, (path, r.text)
                out = r.json()
                assert out["field"] == "model" and out["error_type"] == "model_not_found"
                assert "'rerank-english-v3.0'" in out["error"] and "['tiny']" in out["error"]

    run(body)


def test_every_answer_names_the_model_and_version_that_scored(model_zoo: Path) -> None:
    app = versions_app(model_zoo, models={"tiny": "tiny", "next": "tiny-v2"})

    async def body() -> None:
        async with serving(app) as client:
            default = await score(client)
            named = await score(client, model="next")
            assert default.json()["model"] == {"name": "tiny", "version": V1}
            assert named.json()["model"] == {"name": "next", "version": V2}
            assert (named.headers["x-model-name"], named.headers["x-model-version"]) == (
                "next",
                V2,
            )
            assert [s["score"] for s in default.json()["scores"]] != [
                s["score"] for s in named.json()["scores"]
            ]  # other weights: another model really scored
            for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/infinity/rerank"):
                r = await client.post(
                    path, json={"model": "next", "query": "drill", "documents": ITEMS}
                )
                assert r.status_code == 200, r.text
                assert r.json()["model"] == "next" and r.headers["x-model-version"] == V2
            tei = await client.post("/rerank", json={"query": "drill", "texts": ITEMS})
            assert tei.headers["x-model-name"] == "tiny" and tei.headers["x-model-version"] == V1
            listed = (await client.get("/v1/models")).json()
            assert [(m["id"], m["version"], m["default"]) for m in listed["data"]] == [
                ("tiny", V1, True),
                ("next", V2, False),
            ]
            info = (await client.get("/info")).json()["models"]
            assert [(m["name"], m["package"]) for m in info["models"]] == [
                ("tiny", "tiny"),
                ("next", "tiny-v2"),
            ]

    run(body)


class GatedScorer:
    """The real scorer, whose batches wait while its gate is closed: requests held in flight."""

    def __init__(self, inner: OnnxScorer, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate
        self.provider, self.variant = inner.provider, inner.variant
        self.batch_invariant = inner.batch_invariant

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        assert self.gate.wait(30)
        return self.inner.run(inputs)

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        return sum(1 for batch in batches if self.inner.run(batch) is not None)

    def close(self) -> None:
        self.inner.close()


def gated_factory(gates: dict[str, threading.Event]) -> Callable[[Settings, Metrics], Any]:
    """Engines whose scorer waits on ``gates[package directory name]`` (open if absent)."""

    def factory(settings: Settings, metrics: Metrics) -> ScoringEngine:
        package = load_package(settings.model_dir)
        gate = gates.get(settings.model_dir.name)
        if gate is None:
            gate = threading.Event()
            gate.set()
        inner = OnnxScorer.load(package, "cpu", "auto", 1, False)
        return ScoringEngine(
            package,
            GatedScorer(inner, gate),
            PairEncoder.for_package(package, text_limits(settings)),
            metrics,
            batching=batcher_config(settings),
            admission=admission_config(settings),
            warmup=False,
        )

    return factory


def test_swap_with_requests_in_flight_finishes_them_on_the_old_version(model_zoo: Path) -> None:
    old_gate = threading.Event()
    app = versions_app(
        model_zoo,
        gated_factory({"tiny": old_gate}),
        max_batch_size=64,
        default_deadline_ms=30_000,  # the held requests outlast a swap on a busy machine
    )

    async def body() -> None:
        async with serving(app) as client:
            old_engine = app.state.engine
            held = [
                asyncio.create_task(score(client, items=[f"item {i}", "drill"])) for i in range(8)
            ]
            for _ in range(1000):  # every held request admitted (its pairs with the model)
                if old_engine.admission.reserved_pairs == 16:
                    break
                await asyncio.sleep(0.005)
            assert old_engine.admission.reserved_pairs == 16
            swap = await client.put(
                "/admin/models/tiny", json={"package": "tiny-v2"}, headers=ADMIN
            )
            assert swap.status_code == 200, swap.text
            assert swap.json()["version"] == V2 and swap.json()["replaced"]["version"] == V1
            # New requests are scored by the new version while the old ones are still held.
            fresh = await asyncio.gather(*(score(client, query=f"q{i}") for i in range(4)))
            assert [r.json()["model"]["version"] for r in fresh] == [V2] * 4
            assert not any(task.done() for task in held)
            assert old_engine.status == "ready"  # not stopped under its requests
            draining = (await client.get("/admin/models", headers=ADMIN)).json()["draining"]
            assert [(d["version"], d["inflight_requests"]) for d in draining] == [(V1, 8)]
            old_gate.set()
            done = await asyncio.gather(*held)
            assert [r.status_code for r in done] == [200] * 8
            assert [r.json()["model"]["version"] for r in done] == [V1] * 8
            for _ in range(1000):
                if old_engine.status == "stopped":
                    break
                await asyncio.sleep(0.005)
            assert old_engine.status == "stopped"  # released once its requests were answered
            assert app.state.engine is not old_engine and app.state.engine.ready
            assert (await client.get("/readyz")).status_code == 200
            assert metric(app, "relevance_ready") == 1
            assert (await client.get("/admin/models", headers=ADMIN)).json()["draining"] == []

    run(body)


def test_a_corrupt_package_is_refused_and_the_old_version_keeps_serving(model_zoo: Path) -> None:
    async def body() -> None:
        async with serving(versions_app(model_zoo)) as client:
            before = await score(client)
            r = await client.put(
                "/admin/models/tiny", json={"package": "tiny-corrupt"}, headers=ADMIN
            )
            assert r.status_code == 422, r.text
            assert r.json()["field"] == "package" and "SHA-256 mismatch" in r.json()["error"]
            after = await score(client)
            assert after.status_code == 200 and after.json() == {
                **before.json(),
                "timing": after.json()["timing"],
            }
            listed = (await client.get("/admin/models", headers=ADMIN)).json()
            assert [(m["package"], m["version"]) for m in listed["models"]] == [("tiny", V1)]
            assert listed["draining"] == [] and "tiny-corrupt" in listed["packages"]

    run(body)


@pytest.mark.parametrize(
    ("package", "status"),
    [
        *[(p, 422) for p in ("../tiny", "tiny/../tiny", "/etc", "a/b", "..", ".", "")],
        *[(p, 404) for p in ("missing", "notes.txt")],  # names, but of no package directory
    ],
)
def test_admin_takes_package_names_never_paths(model_zoo: Path, package: str, status: int) -> None:
    (model_zoo / "notes.txt").write_text("a file, not a package")

    async def body() -> None:
        async with serving(versions_app(model_zoo)) as client:
            r = await client.put("/admin/models/tiny", json={"package": package}, headers=ADMIN)
            assert r.status_code == status, r.text
            assert r.json()["field"] == "package"
            bad_name = await client.put(
                "/admin/models/.hidden", json={"package": "tiny"}, headers=ADMIN
            )
            assert bad_name.status_code == 422 and bad_name.json()["field"] == "path.name"
            anonymous = await client.put("/admin/models/tiny", json={"package": "tiny-v2"})
            assert anonymous.status_code == 401
            assert (await score(client)).json()["model"]["version"] == V1

    run(body)


def test_the_cache_never_answers_with_the_old_versions_scores(model_zoo: Path) -> None:
    app = versions_app(model_zoo, models={"tiny": "tiny", "next": "tiny-v2"}, score_cache_mb=4)

    async def body() -> None:
        async with serving(app) as client:
            v1 = (await score(client)).json()
            again = (await score(client)).json()
            assert again["scores"] == v1["scores"] and again["timing"]["batches"] == 0  # cached
            v2 = (await score(client, model="next")).json()  # the new weights' own scores
            swap = await client.put(
                "/admin/models/tiny", json={"package": "tiny-v2"}, headers=ADMIN
            )
            assert swap.status_code == 200, swap.text
            misses = metric(app, "relevance_score_cache_lookups_total", {"result": "miss"})
            swapped = (await score(client)).json()
            assert swapped["model"] == {"name": "tiny", "version": V2}
            assert swapped["scores"] == v2["scores"] != v1["scores"]
            assert swapped["timing"]["batches"] >= 1  # scored by the model, not the cache
            after = metric(app, "relevance_score_cache_lookups_total", {"result": "miss"})
            assert after - misses == len(ITEMS)

    run(body)


def test_canary_takes_its_share_sticky_per_query_and_named_requests_bypass_it(
    model_zoo: Path,
) -> None:
    app = versions_app(model_zoo, models={"tiny": "tiny", "next": "tiny-v2"})
    queries = [f"drill {i}" for i in range(60)]

    async def body() -> None:
        async with serving(app) as client:
            r = await client.put(
                "/admin/canary", json={"model": "next", "share": 0.5}, headers=ADMIN
            )
            assert r.status_code == 200 and r.json()["canary"] == {"model": "next", "share": 0.5}
            got = [(await score(client, query=q)).json()["model"]["name"] for q in queries]
            expected = ["next" if canary_bucket(q) < 0.5 else "tiny" for q in queries]
            assert got == expected and {"next", "tiny"} <= set(got)
            repeat = [(await score(client, query=queries[0].upper())).json() for _ in range(3)]
            assert {x["model"]["name"] for x in repeat} == {got[0]}
            canary_query = queries[got.index("next")]
            named = (await score(client, query=canary_query, model="tiny")).json()
            assert named["model"]["name"] == "tiny"  # explicit: no split
            canary = {"model": "next", "version": V2, "route": "canary"}
            assert metric(app, "relevance_model_requests_total", canary) == got.count("next")
            scores = {"model": "next", "version": V2}
            assert metric(app, "relevance_model_score_count", scores) == len(ITEMS) * (
                got.count("next")
            )
            assert metric(app, "relevance_canary_share_ratio") == 0.5
            conflict = await client.delete("/admin/models/next", headers=ADMIN)
            assert conflict.status_code == 409 and conflict.json()["field"] == "name"
            stopped = await client.delete("/admin/canary", headers=ADMIN)
            assert stopped.json()["canary"] is None
            after = [(await score(client, query=q)).json()["model"]["name"] for q in queries[:10]]
            assert after == ["tiny"] * 10
            bad = await client.put(
                "/admin/canary", json={"model": "nope", "share": 0.1}, headers=ADMIN
            )
            assert bad.status_code == 404 and bad.json()["field"] == "model"

    run(body)
