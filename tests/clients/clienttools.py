"""What every client is held to: the service's own ``/score`` for the same query and
texts, ranked best first (ties in input order, as every rerank shape ranks)."""

from __future__ import annotations

import json
import urllib.request

import pytest

QUERY = "cordless drill"
# Different lengths and overlaps with the query, so the tiny model's scores differ.
TEXTS = [
    "DEWALT 20V MAX cordless drill driver kit with two batteries",
    "Everbilt 3/4 in. brass gate valve",
    "white ceiling fan with led light kit",
    "drill",
    "copper pipe anchor screw shelf hinge cabinet door lock",
    "Simpson Strong-Tie 12-gauge angle bracket",
    "outdoor patio chair",
]
# Scores are float32 on the server; JSON carries them exactly, within this.
SCORE_TOLERANCE = 1e-6


def ranked_reference(url: str, texts: list[str] = TEXTS) -> list[tuple[int, float]]:
    """(index, score) best first from the service's own /score."""
    body = json.dumps({"query": QUERY, "items": texts}).encode()
    request = urllib.request.Request(
        url + "/score", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        scores = [s["score"] for s in json.load(r)["scores"]]
    ranking = sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))
    assert len({round(s, 6) for _, s in ranking}) == len(texts), "ties make the order moot"
    return ranking


def assert_ranking(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """Same order exactly; scores within :data:`SCORE_TOLERANCE`."""
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=SCORE_TOLERANCE)
