"""Teacher shadow: endpoint limits, and a failing or slow teacher never touching /score."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from apitools import make_texts, metric, run, serving
from fastapi import FastAPI
from scipy.stats import spearmanr

from service.shadow import spearman

QUERY = "angle bracket"


class FakeTeacher:
    """Deterministic teacher: longer texts score higher."""

    name = "fake-teacher"
    version = "1"

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.calls = 0
        self.lock = threading.Lock()

    def score(self, queries: list[str], texts: list[str]) -> np.ndarray:
        with self.lock:
            self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("teacher exploded")
        return np.array([min(1.0, len(t) / 200) for t in texts])


def test_spearman_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 5, size=12).astype(float)  # ties on purpose
        b = a + rng.normal(size=12)
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(np.ones(4), np.arange(4.0)) is None
    assert spearman(np.array([1.0]), np.array([2.0])) is None


def test_shadow_endpoint_uses_the_teacher(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(teacher_loader=FakeTeacher)
    items = [{"id": "a", "text": "short"}, {"id": "b", "text": "a much longer product title"}]

    async def body() -> None:
        async with serving(app) as client:
            assert await app.state.shadow.wait_loaded(10)
            r = await client.post("/shadow/score", json={"query": QUERY, "items": items})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["model"] == {"name": "fake-teacher", "version": "1"}
            assert [s["id"] for s in out["scores"]] == ["a", "b"]
            assert out["scores"][0]["score"] < out["scores"][1]["score"]
            info = (await client.get("/info")).json()["shadow"]
            assert info["status"] == "ready" and info["teacher"] == "fake-teacher"

    run(body)


def test_shadow_endpoint_holds_the_same_limits_and_names_fields_like_score(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    teacher = FakeTeacher()
    output = tmp_path / "pairs.jsonl"
    app = make_app(
        teacher_loader=lambda: teacher,
        max_text_chars=100,
        shadow_max_items=3,
        shadow_mirror_rate=1.0,
        shadow_output=output,
    )
    long_text = "x" * 150

    async def body() -> None:
        async with serving(app) as client:
            assert await app.state.shadow.wait_loaded(10)
            payload = {"query": QUERY, "items": ["a", long_text]}
            r = await client.post("/shadow/score", json=payload)
            # The teacher saw the text cut to 100 characters: its score is len / 200.
            assert r.status_code == 200 and r.json()["scores"][1]["score"] == 0.5
            r = await client.post("/shadow/score", json={**payload, "truncate": False})
            assert r.status_code == 413 and r.json()["field"] == "items[1].text"
            r = await client.post("/shadow/score", json={"query": QUERY, "items": ["a"] * 4})
            assert r.status_code == 413 and r.json()["field"] == "items"
            r = await client.post(
                "/shadow/score", json={"query": QUERY, "items": ["a"], "deadline_ms": 10**7}
            )
            assert r.status_code == 422 and r.json()["field"] == "deadline_ms"
            # /score mirrors what it scored: the cut text, not the one sent.
            assert (await client.post("/score", json=payload)).status_code == 200
            for _ in range(200):
                if output.exists() and len(output.read_text().splitlines()) == 2:
                    break
                await asyncio.sleep(0.01)
        mirrored = [json.loads(line) for line in output.read_text().splitlines()]
        assert [m["text"] for m in mirrored] == ["a", "x" * 100]
        assert mirrored[1]["teacher_score"] == 0.5

    run(body)


def test_missing_or_broken_teacher_is_503_and_score_still_works(
    make_app: Callable[..., FastAPI],
) -> None:
    def broken() -> FakeTeacher:
        raise FileNotFoundError("no teacher package at /nowhere")

    async def body() -> None:
        for app, reason in (
            (make_app(), "no teacher configured"),
            (make_app(teacher_loader=broken), "no teacher package"),
        ):
            async with serving(app) as client:
                await app.state.shadow.wait_loaded(10)
                r = await client.post("/shadow/score", json={"query": QUERY, "items": ["a"]})
                assert r.status_code == 503 and reason in r.json()["error"], r.text
                assert (
                    await client.post("/score", json={"query": QUERY, "items": ["a"]})
                ).status_code == 200

    run(body)


def test_shadow_busy_is_429_and_slow_is_504(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(
        teacher_loader=lambda: FakeTeacher(delay_s=0.5), shadow_concurrency=1, shadow_timeout_s=0.3
    )

    async def body() -> None:
        async with serving(app) as client:
            assert await app.state.shadow.wait_loaded(10)
            payload = {"query": QUERY, "items": ["a", "b"]}
            first, second = await asyncio.gather(
                client.post("/shadow/score", json=payload),
                client.post("/shadow/score", json=payload),
            )
            assert sorted([first.status_code, second.status_code]) == [429, 504]
            busy = first if first.status_code == 429 else second
            assert int(busy.headers["Retry-After"]) >= 1
            # The slot frees when the teacher thread ends, not when the client gave up.
            await asyncio.sleep(0.8)
            r = await client.post("/shadow/score", json=payload)
            assert r.status_code == 504

    run(body)


def test_shadow_honours_the_requests_deadline_ms(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(
        teacher_loader=lambda: FakeTeacher(delay_s=0.5),
        shadow_timeout_s=5,
        default_deadline_ms=1000,
        max_deadline_ms=1000,
    )

    async def body() -> None:
        async with serving(app) as client:
            assert await app.state.shadow.wait_loaded(10)
            payload = {"query": QUERY, "items": ["a", "b"]}
            r = await client.post("/shadow/score", json={**payload, "deadline_ms": 5000})
            assert r.status_code == 422 and "deadline_ms" in r.text
            t0 = time.monotonic()
            r = await client.post("/shadow/score", json={**payload, "deadline_ms": 100})
            assert r.status_code == 504 and "deadline_ms" in r.text
            assert time.monotonic() - t0 < 0.45  # the teacher's 0.5 s was not waited out
            r = await client.post("/shadow/score", json={**payload, "deadline_ms": 1000})
            assert r.status_code in (200, 429)  # 429: the timed-out call may still hold a slot

    run(body)


@pytest.mark.parametrize("teacher", ["failing", "slow"])
def test_mirror_trouble_leaves_score_unchanged(
    make_app: Callable[..., FastAPI], teacher: str
) -> None:
    requests = [make_texts(6, seed=s) for s in range(12)]
    fake = FakeTeacher(fail=True) if teacher == "failing" else FakeTeacher(delay_s=2.0)

    async def scores(app: FastAPI) -> tuple[list[list[float]], float]:
        async with serving(app) as client:
            await app.state.shadow.wait_loaded(10)
            started = time.monotonic()
            out = []
            for texts in requests:
                r = await client.post("/score", json={"query": QUERY, "items": texts})
                assert r.status_code == 200, r.text
                out.append([s["score"] for s in r.json()["scores"]])
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.1)  # let the mirror worker pick up what it can
        return out, elapsed

    async def body() -> None:
        baseline, _ = await scores(make_app())
        app = make_app(teacher_loader=lambda: fake, shadow_mirror_rate=1.0, shadow_queue_size=2)
        mirrored, elapsed = await scores(app)
        assert mirrored == baseline
        assert fake.calls >= 1
        if teacher == "slow":
            assert elapsed < 2.0  # twelve /score answers while one teacher call sleeps 2 s
            assert (
                metric(
                    app,
                    "relevance_shadow_requests_total",
                    {"source": "mirror", "outcome": "dropped"},
                )
                >= 9
            )
        else:
            assert (
                metric(
                    app, "relevance_shadow_requests_total", {"source": "mirror", "outcome": "error"}
                )
                >= 1
            )

    run(body)


def test_mirror_exports_agreement_and_jsonl(
    make_app: Callable[..., FastAPI], tmp_path: Path
) -> None:
    output = tmp_path / "mirror" / "pairs.jsonl"
    app = make_app(
        teacher_loader=FakeTeacher,
        shadow_mirror_rate=1.0,
        shadow_queue_size=64,
        shadow_output=output,
    )
    items = [{"id": f"i{n}", "text": t} for n, t in enumerate(make_texts(5, seed=9))]

    async def body() -> None:
        async with serving(app) as client:
            await app.state.shadow.wait_loaded(10)
            for _ in range(3):
                assert (
                    await client.post("/score", json={"query": QUERY, "items": items})
                ).status_code == 200
            for _ in range(200):  # the worker writes in the background
                if (
                    metric(
                        app,
                        "relevance_shadow_requests_total",
                        {"source": "mirror", "outcome": "ok"},
                    )
                    == 3
                ):
                    break
                await asyncio.sleep(0.01)
        lines = [json.loads(line) for line in output.read_text().splitlines()]
        assert len(lines) == 15
        assert set(lines[0]) == {
            "query",
            "text",
            "item_id",
            "teacher_score",
            "student_score",
            "teacher",
            "teacher_version",
        }
        assert lines[0]["teacher"] == "fake-teacher" and lines[0]["item_id"] == "i0"
        assert lines[0]["teacher_version"] == "1"
        assert metric(app, "relevance_shadow_spearman_count") == 3
        # the mean agreement the dashboard and the alert read: sum / count of a summary
        assert metric(app, "relevance_shadow_rank_agreement_count") == 3
        requests = [lines[i : i + 5] for i in range(0, 15, 5)]  # one mirrored request each
        rhos = [
            spearman(
                np.array([x["student_score"] for x in rows]),
                np.array([x["teacher_score"] for x in rows]),
            )
            for rows in requests
        ]
        assert metric(app, "relevance_shadow_rank_agreement_sum") == pytest.approx(sum(rhos))
        assert metric(app, "relevance_shadow_mean_abs_diff_count") == 3
        assert metric(app, "relevance_shadow_mirrored_pairs_total") == 15

    run(body)
