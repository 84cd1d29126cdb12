"""Loading and the split by query."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.data import (
    DataError,
    SplitFractions,
    catalogue,
    grade_to_score,
    load_labeled,
    split_by_query,
)


def _frame(n_queries: int = 300) -> pd.DataFrame:
    rows = []
    for q in range(n_queries):
        for item in range(3):
            rows.append((f"query {q}", f"query {q}", f"p{q}-{item}", f"title {item}", 1.0 + item))
    return pd.DataFrame(rows, columns=["query", "query_key", "product_id", "title", "grade"])


def test_no_query_in_two_splits() -> None:
    splits = split_by_query(_frame())
    keys = [set(part["query_key"]) for part in splits.values()]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert sum(len(part) for part in splits.values()) == len(_frame())
    assert all(len(part) for part in splits.values())


def test_split_is_deterministic_and_independent_of_row_order() -> None:
    frame = _frame()
    first = split_by_query(frame, seed=5)
    again = split_by_query(frame.sample(frac=1.0, random_state=1), seed=5)
    for name in first:
        assert set(first[name]["query_key"]) == set(again[name]["query_key"])
    other_seed = split_by_query(frame, seed=6)
    assert set(first["test"]["query_key"]) != set(other_seed["test"]["query_key"])


def test_split_fractions_roughly_hold() -> None:
    splits = split_by_query(_frame(2000), fractions=SplitFractions(0.6, 0.2, 0.2))
    share = {name: part["query_key"].nunique() / 2000 for name, part in splits.items()}
    assert share["train"] == pytest.approx(0.6, abs=0.05)
    assert share["test"] == pytest.approx(0.2, abs=0.05)


def test_load_labeled_cleans_and_merges_case_variants(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "id,product_uid,product_title,search_term,relevance\n"
        "1,100001,Simpson  Angle,Angle Bracket,3\n"
        "2,100001,Simpson Angle,angle  bracket,2\n"
        "3,100002,Other,angle bracket,bad\n"
        "4,100003,,angle bracket,2\n"
        "5,100004,Drill,drill,1\n"
    )
    frame = load_labeled(path)
    assert len(frame) == 2
    merged = frame[frame["product_id"] == "100001"].iloc[0]
    assert merged["grade"] == pytest.approx(2.5)
    assert merged["query_key"] == "angle bracket"
    assert set(catalogue(frame)["product_id"]) == {"100001", "100004"}
    # Case variants of one query are one query: they land in one split.
    splits = split_by_query(frame)
    assert sum("angle bracket" in set(p["query_key"]) for p in splits.values()) == 1


def test_missing_or_malformed_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv"):
        load_labeled(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"bad\.csv"):
        load_labeled(bad)


def test_grade_to_score_maps_scale_ends() -> None:
    assert grade_to_score(1.0) == 0.0 and grade_to_score(3.0) == 1.0 and grade_to_score(2.0) == 0.5
