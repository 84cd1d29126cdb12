"""The cascade evaluation: padded candidate lists, the head re-scored, metrics per k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.evaluation.cascade import candidate_lists, cascade_scores, evaluate_cascade, heads


def _split() -> pd.DataFrame:
    rows = [
        ("drill", "q1", "p1", "cordless drill", 3.0),
        ("drill", "q1", "p2", "drill bit set", 2.0),
        ("drill", "q1", "p3", "garden hose", 1.0),
        ("paint", "q2", "p4", "white paint", 3.0),
        ("paint", "q2", "p5", "paint roller", 2.0),
    ]
    return pd.DataFrame(rows, columns=["query", "query_key", "product_id", "title", "grade"])


def _catalogue(n: int = 40) -> pd.DataFrame:
    ids = [f"p{i}" for i in range(1, n + 1)]
    return pd.DataFrame({"product_id": ids, "title": [f"product {i}" for i in ids]})


def test_lists_are_padded_to_size_with_never_judged_products_deterministically() -> None:
    split = _split()
    a = candidate_lists(split, _catalogue(), candidates=8, pool_size=20, seed=3)
    b = candidate_lists(split, _catalogue(), candidates=8, pool_size=20, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("query_key").size().to_dict() == {"q1": 8, "q2": 8}
    judged = set(zip(split["query_key"], split["product_id"], strict=True))
    padding = a[~a["judged"]]
    assert padding["grade"].isna().all()
    assert not any(
        p in judged for p in zip(padding["query_key"], padding["product_id"], strict=True)
    )
    # The judged rows are all there, with their grades.
    kept = a[a["judged"]].loc[:, split.columns].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, split)
    # Every query draws from one shared pool of 20 products (one encoding per item).
    assert padding["product_id"].nunique() <= 20
    with pytest.raises(ValueError, match="cascade_pool"):
        candidate_lists(split, _catalogue(), candidates=30, pool_size=10, seed=3)


def test_the_head_takes_the_cross_encoder_scores_and_stays_above_the_tail() -> None:
    frame = candidate_lists(_split(), _catalogue(), candidates=5, pool_size=20, seed=1)
    rng = np.random.default_rng(0)
    student = rng.uniform(0.2, 0.9, len(frame))
    cross = rng.uniform(0.0, 0.3, len(frame))  # lower than most student scores
    combined = cascade_scores(frame, student, cross, k=2)
    for head in heads(frame, student, 2):
        assert combined[head] == pytest.approx(cross[head])
    for rows in frame.groupby("query_key").indices.values():
        head = set(heads(frame.loc[rows].reset_index(drop=True), student[rows], 2)[0])
        tail = [i for i in range(len(rows)) if i not in head]
        local = combined[rows]
        assert local[tail].max() < local[list(head)].min()
        # The tail keeps the student's order.
        assert np.argsort(local[tail]).tolist() == np.argsort(student[rows][tail]).tolist()
    # k = 0: the student unchanged.
    assert cascade_scores(frame, student, cross, k=0) == pytest.approx(student)


def test_a_large_enough_head_is_the_cross_encoder_and_none_is_the_student() -> None:
    frame = candidate_lists(_split(), _catalogue(), candidates=6, pool_size=30, seed=2)
    grade = frame["grade"].fillna(1.0).to_numpy()

    def cross(queries, titles):  # knows the grades: perfect on the judged pairs
        lookup = dict(zip(frame["title"], grade, strict=True))
        return np.array([lookup[t] / 3 for t in titles])

    def student(queries, titles):  # the irrelevant judged item first, the rest in order
        lookup = dict(zip(frame["title"], grade, strict=True))
        return np.array([0.95 if t.startswith("garden") else 0.5 + lookup[t] / 10
                         if lookup[t] > 1 else 0.1 for t in titles])  # fmt: skip

    result = evaluate_cascade(frame, student, cross, ks=(2, 6))
    by = {row["system"]: row for row in result["systems"]}
    # q1: 1 of 3 pairs right (the garden hose on top), q2: its one pair right.
    assert by["representation alone"]["pairwise_accuracy"] == pytest.approx(0.5)
    assert by["cross-encoder alone (judged items)"]["pairwise_accuracy"] == 1.0
    # Top 2 re-scored puts the drill above the hose; the bit set stays below it.
    assert by["cascade top 2"]["pairwise_accuracy"] == pytest.approx(0.75)
    assert by["cascade top 6"]["pairwise_accuracy"] == 1.0
    assert by["cascade top 6"]["judged_in_head"] == 1.0
    assert by["cascade top 2"]["judged_in_head"] == pytest.approx(4 / 5)
    assert by["cascade top 6"]["ndcg@10"] > by["representation alone"]["ndcg@10"]
    # The cross-encoder scored the judged rows and the heads only, not the padding.
    assert result["cross_encoder_pairs"] == len(frame)  # k=6 heads cover every row here
    smaller = evaluate_cascade(frame, student, cross, ks=(1,))
    assert smaller["cross_encoder_pairs"] == int(frame["judged"].sum())
