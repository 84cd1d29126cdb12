"""No input, however odd, makes /score or /rerank answer 5xx (504 only for a short deadline)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TEXT = st.text(max_size=300)  # any unicode: control characters, combining marks, emoji
ITEM = TEXT | st.fixed_dictionaries({"id": st.text(max_size=10), "text": TEXT})
SCORE_BODY = st.fixed_dictionaries(
    {"query": TEXT, "items": st.lists(ITEM, max_size=12)},
    optional={
        "top_k": st.integers(-2, 20) | st.none(),
        "truncate": st.booleans(),
        "deadline_ms": st.integers(-1, 5000) | st.none(),
        "extra": JSON,
    },
)
RERANK_BODY = st.fixed_dictionaries(
    {"query": TEXT, "texts": st.lists(TEXT, max_size=12)},
    optional={
        "raw_scores": st.booleans(),
        "return_text": st.booleans(),
        "truncate": st.booleans(),
        "truncation_direction": st.sampled_from(["Right", "left", "up", 3]),
    },
)
FUZZ = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def acceptable(status: int, body: Any) -> bool:
    if status == 504:  # only a deadline the client chose can run out here
        return isinstance(body, dict) and isinstance(body.get("deadline_ms"), int)
    return status < 500


def test_fuzzed_requests_never_fail_the_server(make_app: Callable[..., FastAPI]) -> None:
    with warnings.catch_warnings():  # starlette deprecates its httpx-based TestClient
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with TestClient(make_app(max_text_chars=200, max_items=10)) as client:

        @FUZZ
        @given(body=SCORE_BODY | JSON)
        def score(body: Any) -> None:
            r = client.post("/score", json=body)
            assert acceptable(r.status_code, body), (body, r.status_code, r.text)
            if r.status_code == 200:
                assert len(r.json()["scores"]) == min(len(body["items"]), body.get("top_k") or 99)
            else:
                assert r.json()["error"]

        @FUZZ
        @given(body=RERANK_BODY)
        def rerank(body: Any) -> None:
            r = client.post("/rerank", json=body)
            assert r.status_code < 500, (body, r.status_code, r.text)

        @FUZZ
        @given(
            raw=st.binary(max_size=200),
            ctype=st.sampled_from(["application/json", "text/plain", ""]),
        )
        def raw_bytes(raw: bytes, ctype: str) -> None:
            r = client.post("/score", content=raw, headers={"content-type": ctype} if ctype else {})
            assert 400 <= r.status_code < 500 or r.status_code == 200, (raw, r.status_code)

        score()
        rerank()
        raw_bytes()
        # Literals Python's json accepts but JSON does not.
        for raw in (
            b'{"query": "x", "items": ["a"], "top_k": 1e999}',
            b'{"query": NaN, "items": []}',
        ):
            r = client.post("/score", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
