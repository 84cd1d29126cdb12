"""Held-out evaluation metrics: ranking and classification metrics per system, and slices.

Metrics, per system, on the pairs of held-out queries (validation for checkpoint
selection, test for the report):

- **pairwise accuracy**: over item pairs of one query with different human grades, the
  share the scores order like the grades; a score tie counts 0.5 (random = 0.5). The
  primary figure: candidate lists are short, so NDCG of a random order is already high.
- **NDCG@5 / NDCG@10** (ranx) with linear graded gains ``grade - 1``; queries whose
  items all have grade 1 have no ideal ranking and are left out.
- **Spearman** correlation, pooled over all pairs, with the human grades and, where the
  teacher labeled the pairs, with the teacher's scores.
- **class accuracy and macro-F1** of the three relevance classes: human grade
  <= 1.5 irrelevant, <= 2.5 partial, else exact; score < 0.25 irrelevant, < 0.75 partial,
  else exact. Only for systems whose score is on the [0, 1] relevance scale.

Slices: long queries (at least ``long_query_words`` words), queries with a term that is
rare in the training queries, and the rest (neither).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

GRADE_CLASS_BOUNDS = (1.5, 2.5)  # grade <= 1.5 irrelevant, <= 2.5 partial, else exact
SCORE_CLASS_BOUNDS = (0.25, 0.75)  # score < 0.25 irrelevant, < 0.75 partial, else exact
CLASS_NAMES = ("irrelevant", "partial", "exact")
_TERM = re.compile(r"[a-z0-9]+")


# --------------------------------------------------------------------------- metrics


def _groups(query_ids: Sequence[Hashable]) -> list[np.ndarray]:
    rows: dict[Hashable, list[int]] = defaultdict(list)
    for row, qid in enumerate(query_ids):
        rows[qid].append(row)
    return [np.asarray(r) for r in rows.values()]


def pairwise_accuracy(
    query_ids: Sequence[Hashable], grades: Sequence[float], scores: Sequence[float]
) -> float:
    """Share of same-query item pairs with different grades that the scores order correctly.

    Ties in score count 0.5. NaN when no query has two different grades.
    """
    grades_arr = np.asarray(grades, dtype=np.float64)
    scores_arr = np.asarray(scores, dtype=np.float64)
    right, total = 0.0, 0
    for rows in _groups(query_ids):
        g, s = grades_arr[rows], scores_arr[rows]
        better = g[:, None] > g[None, :]
        n = int(better.sum())
        if n == 0:
            continue
        diff = s[:, None] - s[None, :]
        right += float(((diff > 0) & better).sum()) + 0.5 * float(((diff == 0) & better).sum())
        total += n
    return right / total if total else math.nan


def ndcg_at(
    query_ids: Sequence[Hashable],
    item_ids: Sequence[Hashable],
    grades: Sequence[float],
    scores: Sequence[float],
    ks: Sequence[int] = (5, 10),
) -> dict[str, float]:
    """Mean NDCG@k (ranx) with linear gains ``grade - 1`` over queries with a positive gain."""
    from ranx import Qrels, Run, evaluate

    # ranx stores relevance as integers: gains in hundredths keep the 1/3-step grades.
    gains = np.rint((np.asarray(grades, dtype=np.float64) - 1.0) * 100).astype(int)
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    run: dict[str, dict[str, float]] = defaultdict(dict)
    for qid, iid, gain, score in zip(query_ids, item_ids, gains, scores, strict=True):
        qrels[str(qid)][str(iid)] = int(gain)
        run[str(qid)][str(iid)] = float(score)
    kept = [q for q, items in qrels.items() if max(items.values()) > 0]
    if not kept:
        return {f"ndcg@{k}": math.nan for k in ks}
    metrics = [f"ndcg@{k}" for k in ks]
    result = evaluate(
        Qrels({q: qrels[q] for q in kept}),
        Run({q: run[q] for q in kept}),
        metrics,
        make_comparable=True,
    )
    if isinstance(result, float):
        result = {metrics[0]: result}
    return {name: float(value) for name, value in result.items()}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN for fewer than 3 values or a constant input)."""
    from scipy.stats import spearmanr

    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a_arr) < 3 or np.ptp(a_arr) == 0 or np.ptp(b_arr) == 0:
        return math.nan
    return float(spearmanr(a_arr, b_arr).statistic)


def grade_classes(grades: Sequence[float]) -> np.ndarray:
    """Class index (0 irrelevant, 1 partial, 2 exact) of human grades."""
    low, high = GRADE_CLASS_BOUNDS
    g = np.asarray(grades, dtype=np.float64)
    return np.where(g <= low, 0, np.where(g <= high, 1, 2))


def score_classes(scores: Sequence[float]) -> np.ndarray:
    """Class index of [0, 1] scores, with the service's thresholds."""
    low, high = SCORE_CLASS_BOUNDS
    s = np.asarray(scores, dtype=np.float64)
    return np.where(s < low, 0, np.where(s < high, 1, 2))


def class_metrics(grades: Sequence[float], scores: Sequence[float]) -> dict[str, float]:
    """Accuracy and macro-F1 (over the three classes) of thresholded scores."""
    from sklearn.metrics import accuracy_score, f1_score

    truth, predicted = grade_classes(grades), score_classes(scores)
    return {
        "class_accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(
            f1_score(truth, predicted, labels=[0, 1, 2], average="macro", zero_division=0)
        ),
    }


def ranking_metrics(
    frame: pd.DataFrame,
    scores: np.ndarray,
    teacher_scores: np.ndarray | None = None,
    calibrated: bool = True,
) -> dict[str, float]:
    """All metrics of one system on ``frame`` (columns ``query_key``, ``product_id``, ``grade``).

    ``teacher_scores`` may hold NaN where the teacher has no label; Spearman with the
    teacher uses the labeled pairs only. ``calibrated`` says whether the scores live on the
    [0, 1] relevance scale (then the class metrics apply).
    """
    keys, grades = frame["query_key"].tolist(), frame["grade"].to_numpy()
    metrics: dict[str, float] = {
        "pairwise_accuracy": pairwise_accuracy(keys, grades, scores),
        **ndcg_at(keys, frame["product_id"].tolist(), grades, scores),
        "spearman_human": spearman(scores, grades),
    }
    if teacher_scores is not None:
        labeled = ~np.isnan(teacher_scores)
        metrics["spearman_teacher"] = spearman(np.asarray(scores)[labeled], teacher_scores[labeled])
    if calibrated:
        metrics.update(class_metrics(grades, scores))
    return metrics


# --------------------------------------------------------------------------- slices


def query_terms(query: str) -> set[str]:
    return set(_TERM.findall(query.lower()))


@dataclass(frozen=True)
class LongTailSlices:
    """Which held-out queries are long, which hold a rare term; the rest is neither."""

    long_words: int
    rare_max_count: int
    term_counts: Counter = field(default_factory=Counter)

    @classmethod
    def from_train(
        cls, train_queries: Sequence[str], long_words: int, rare_max_count: int
    ) -> LongTailSlices:
        counts: Counter = Counter()
        for query in set(train_queries):
            counts.update(query_terms(query))
        return cls(long_words, rare_max_count, counts)

    def is_long(self, query: str) -> bool:
        return len(query.split()) >= self.long_words

    def has_rare_term(self, query: str) -> bool:
        return any(self.term_counts[t] <= self.rare_max_count for t in query_terms(query))

    def masks(self, queries: Sequence[str]) -> dict[str, np.ndarray]:
        long = np.asarray([self.is_long(q) for q in queries], dtype=bool)
        rare = np.asarray([self.has_rare_term(q) for q in queries], dtype=bool)
        return {"long": long, "rare_term": rare, "long_tail": long | rare, "rest": ~(long | rare)}

    def describe(self) -> dict[str, str]:
        return {
            "long": f"at least {self.long_words} words",
            "rare_term": (
                "a term that no training query contains"
                if self.rare_max_count == 0
                else f"a term found in at most {self.rare_max_count} training queries"
            ),
            "long_tail": "long or rare_term",
            "rest": "neither long nor with a rare term",
        }


def slice_metrics(
    frame: pd.DataFrame, scores: np.ndarray, slices: LongTailSlices
) -> dict[str, dict[str, float]]:
    """Pairwise accuracy and Spearman with the human grades within each slice."""
    out = {}
    for name, mask in slices.masks(frame["query"].tolist()).items():
        part = frame[mask]
        out[name] = {
            "queries": int(part["query_key"].nunique()),
            "pairs": len(part),
            "pairwise_accuracy": pairwise_accuracy(
                part["query_key"].tolist(), part["grade"].to_numpy(), scores[mask]
            ),
            "spearman_human": spearman(scores[mask], part["grade"].to_numpy()),
        }
    return out
