"""Evaluation metrics against hand-computed values; slices."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training.evaluation.metrics import (
    LongTailSlices,
    class_metrics,
    grade_classes,
    ndcg_at,
    pairwise_accuracy,
    ranking_metrics,
    score_classes,
    slice_metrics,
    spearman,
)


def test_pairwise_accuracy_by_hand() -> None:
    # Query a: grades 3 > 2 > 1 -> 3 pairs; scores order (3,1) and (2,1) right, (3,2) wrong.
    # Query b: grades 2 > 1 with tied scores -> 0.5. Query c: one grade only -> no pair.
    queries = ["a", "a", "a", "b", "b", "c", "c"]
    grades = [3, 2, 1, 2, 1, 2, 2]
    scores = [0.5, 0.6, 0.1, 0.3, 0.3, 0.9, 0.1]
    assert pairwise_accuracy(queries, grades, scores) == pytest.approx((2 + 0.5) / 4)


def test_pairwise_accuracy_bounds() -> None:
    queries, grades = ["a"] * 4, [3, 2.33, 1.67, 1]
    assert pairwise_accuracy(queries, grades, [4, 3, 2, 1]) == 1.0
    assert pairwise_accuracy(queries, grades, [1, 2, 3, 4]) == 0.0
    assert pairwise_accuracy(queries, grades, [1, 1, 1, 1]) == 0.5
    assert math.isnan(pairwise_accuracy(["a", "a"], [2, 2], [1, 0]))


def test_ndcg_by_hand() -> None:
    # Gains (grade - 1): a=2, b=1, c=0. Ranking b, a, c:
    # DCG = 1/log2(2) + 2/log2(3); IDCG = 2/log2(2) + 1/log2(3).
    result = ndcg_at(["q"] * 3, ["a", "b", "c"], [3, 2, 1], [0.5, 0.9, 0.1], ks=(5,))
    expected = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert result["ndcg@5"] == pytest.approx(expected, rel=1e-6)
    perfect = ndcg_at(["q"] * 3, ["a", "b", "c"], [3, 2, 1], [3, 2, 1])
    assert perfect == {"ndcg@5": pytest.approx(1.0), "ndcg@10": pytest.approx(1.0)}


def test_ndcg_skips_queries_without_gain() -> None:
    result = ndcg_at(
        ["q", "q", "r", "r"], ["a", "b", "c", "d"], [3, 1, 1, 1], [1, 0, 0, 1], ks=(5,)
    )
    assert result["ndcg@5"] == pytest.approx(1.0)


def test_class_thresholds() -> None:
    assert list(grade_classes([1.0, 1.5, 1.67, 2.5, 2.67, 3.0])) == [0, 0, 1, 1, 2, 2]
    assert list(score_classes([0.0, 0.2499, 0.25, 0.7499, 0.75, 1.0])) == [0, 0, 1, 1, 2, 2]
    metrics = class_metrics([1.0, 2.0, 3.0, 3.0], [0.1, 0.5, 0.9, 0.5])
    assert metrics["class_accuracy"] == pytest.approx(0.75)
    # per-class F1: irrelevant 1, partial 2/3 (P=1/2, R=1), exact 2/3 (P=1, R=1/2)
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_spearman_handles_degenerate_input() -> None:
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_ranking_metrics_uses_teacher_only_where_labeled() -> None:
    frame = pd.DataFrame(
        {
            "query_key": ["q"] * 4,
            "product_id": ["a", "b", "c", "d"],
            "grade": [3.0, 2.0, 1.0, 1.0],
        }
    )
    scores = np.array([0.9, 0.6, 0.2, 0.1])
    teacher = np.array([0.8, 0.5, 0.1, np.nan])
    metrics = ranking_metrics(frame, scores, teacher, calibrated=False)
    assert metrics["spearman_teacher"] == pytest.approx(1.0)
    assert "class_accuracy" not in metrics
    assert metrics["pairwise_accuracy"] == 1.0


def test_long_tail_slices() -> None:
    slices = LongTailSlices.from_train(["angle bracket", "angle iron", "deck screw"], 5, 0)
    masks = slices.masks(["angle bracket", "angle grinder", "deck screw for outdoor wood use"])
    assert list(masks["rare_term"]) == [False, True, True]
    assert list(masks["long"]) == [False, False, True]
    assert list(masks["rest"]) == [True, False, False]
    assert list(masks["long_tail"]) == [False, True, True]


def test_slice_metrics_score_each_slice_on_its_own_queries() -> None:
    slices = LongTailSlices.from_train(["angle bracket", "deck screw"], 4, 0)
    frame = pd.DataFrame(
        {
            "query": ["angle bracket"] * 2 + ["long deck screw query here"] * 2,
            "query_key": ["a", "a", "b", "b"],
            "grade": [3.0, 1.0, 3.0, 1.0],
        }
    )
    # Right order on the short query, wrong order on the long one.
    out = slice_metrics(frame, np.array([0.9, 0.1, 0.1, 0.9]), slices)
    assert out["rest"]["pairwise_accuracy"] == 1.0 and out["rest"]["queries"] == 1
    assert out["long"]["pairwise_accuracy"] == 0.0 and out["long"]["pairs"] == 2
