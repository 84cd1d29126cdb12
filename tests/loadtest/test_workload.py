"""Request generation: data or synthetic text, candidate counts in range, endpoint mix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from loadtest.workload import Catalogue, Mix, RequestFactory, parse_range, slo_budget_s


def _write_csv(path: Path) -> Path:
    rows = ["id,product_uid,product_title,search_term,relevance"]
    for q in range(5):
        for p in range(8):
            rows.append(f'{q}{p},{100 + p},"Title {q}-{p}, with comma",query {q},2.5')
    path.write_text("\n".join(rows) + "\n")
    return path


def test_catalogue_reads_queries_and_titles(tmp_path: Path) -> None:
    catalogue = Catalogue.load(_write_csv(tmp_path / "train.csv"))
    assert catalogue.queries == [f"query {q}" for q in range(5)]
    assert len(catalogue.titles) == 40 and "Title 0-0, with comma" in catalogue.titles
    assert catalogue.source.endswith("train.csv")


def test_catalogue_falls_back_to_synthetic(tmp_path: Path) -> None:
    catalogue = Catalogue.load(tmp_path / "missing.csv")
    assert catalogue.source.startswith("synthetic")
    assert catalogue.queries and len(catalogue.titles) > 100


def test_requests_follow_the_mix() -> None:
    mix = Mix(min_items=20, max_items=60, rerank_share=0.3, shadow_share=0.1, shadow_max_items=25)
    requests = RequestFactory(Catalogue.synthetic(), mix).take(400)
    counts = Counter(r.endpoint for r in requests)
    assert 0.2 < counts["rerank"] / 400 < 0.4 and 0.04 < counts["shadow"] / 400 < 0.17
    for r in requests:
        high = 25 if r.endpoint == "shadow" else 60
        assert 20 <= len(r.texts) <= high and len(set(r.texts)) == len(r.texts)
    score = next(r for r in requests if r.endpoint == "score")
    body = json.loads(score.json_bytes())
    assert body["items"][0] == {"id": "p0", "text": score.texts[0]}
    rerank = next(r for r in requests if r.endpoint == "rerank")
    assert rerank.path == "/rerank" and json.loads(rerank.json_bytes())["texts"] == rerank.texts


def test_same_seed_same_requests() -> None:
    catalogue = Catalogue.synthetic()
    a = RequestFactory(catalogue, Mix(seed=3)).take(20)
    b = RequestFactory(catalogue, Mix(seed=3)).take(20)
    assert a == b


def test_mix_env_round_trip_and_checks() -> None:
    mix = Mix(10, 30, rerank_share=0.5, shadow_share=0.2, seed=7)
    again = Mix.from_env(mix.to_env())
    assert (again.min_items, again.max_items, again.seed) == (10, 30, 7)
    assert (again.rerank_share, again.shadow_share) == (0.5, 0.2)
    with pytest.raises(ValueError):
        Mix(rerank_share=0.8, shadow_share=0.3)
    with pytest.raises(ValueError):
        Mix(min_items=50, max_items=10)
    assert parse_range("20-200") == (20, 200) and parse_range("7") == (7, 7)


def test_slo_budget_grows_with_items() -> None:
    assert slo_budget_s(40, 500, 100) == 0.5
    assert slo_budget_s(200, 500, 100) == 1.0
