"""A teacher ensemble: members' scores, z-scored, mixed with weights fit on validation only.

When the LLM alone does not beat what it teaches, the teacher becomes a weighted mix of
the LLM and cheaper members (a cross-encoder trained on human labels, BM25). Weights are
searched on a grid over the simplex for the best validation pairwise accuracy; each
member is z-scored with its validation mean and spread first, so the weights compare
members on one scale. The mix is then mapped onto the [0, 1] relevance scale by an
isotonic fit to the validation grades (monotone: it changes no ranking), so labels from
the ensemble are targets a student can regress on.

Nothing here sees the test split: :func:`fit_ensemble` takes validation rows only and
:func:`fit_from_splits` picks them out of a split mapping, so test scores can only ever be
*scored* by an ensemble, never shape one (tests/training/test_ensemble.py perturbs the
test scores to prove it).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from relevance_core.activation import sigmoid
from training.data import grade_to_score

VALIDATION = "validation"
# Share of a strictly increasing logistic of the mix in the ensemble's score (see score()).
TIE_BREAK = 0.01


@dataclass(frozen=True)
class PairIndex:
    """Every same-query pair (better, worse) of differently graded items, for fast accuracy."""

    better: np.ndarray
    worse: np.ndarray

    @classmethod
    def build(cls, query_ids: Sequence, grades: Sequence[float]) -> PairIndex:
        frame = pd.DataFrame({"q": list(query_ids), "g": np.asarray(grades, dtype=np.float64)})
        better, worse = [], []
        for rows in frame.groupby("q", sort=False).indices.values():
            g = frame["g"].to_numpy()[rows]
            i, j = np.nonzero(g[:, None] > g[None, :])
            better.append(rows[i])
            worse.append(rows[j])
        if not better:
            return cls(np.zeros(0, dtype=int), np.zeros(0, dtype=int))
        return cls(np.concatenate(better), np.concatenate(worse))

    def accuracy(self, scores: np.ndarray) -> float:
        """Share of pairs ordered right; ties count 0.5 (the same rule as the evaluation)."""
        if not len(self.better):
            return float("nan")
        diff = scores[self.better] - scores[self.worse]
        return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / len(diff))


@dataclass(frozen=True)
class Ensemble:
    """Weights and per-member z-scoring, plus the isotonic map onto [0, 1]."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    calibration_x: tuple[float, ...]
    calibration_y: tuple[float, ...]
    validation_pairwise_accuracy: float

    def mix(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """The weighted sum of z-scored member scores (the ranking signal)."""
        total = None
        for name, weight, mean, std in zip(
            self.members, self.weights, self.means, self.stds, strict=True
        ):
            part = weight * (np.asarray(scores[name], dtype=np.float64) - mean) / std
            total = part if total is None else total + part
        assert total is not None
        return total

    def score(self, scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """Ensemble score in [0, 1]: the mix through the validation-fitted isotonic map.

        A :data:`TIE_BREAK` share of a logistic of the mix is blended in: the isotonic map
        is flat between its steps, and items tied there would have no margin to learn and
        count half in pairwise accuracy. The result is strictly increasing in the mix.
        """
        mixed = self.mix(scores)
        calibrated = np.interp(mixed, self.calibration_x, self.calibration_y)
        return (1 - TIE_BREAK) * calibrated + TIE_BREAK * sigmoid(mixed, np.float64)

    def to_dict(self) -> dict:
        """Everything :meth:`from_dict` needs to score again (weights first, for readers)."""
        return {
            "weights": dict(zip(self.members, self.weights, strict=True)),
            "validation_pairwise_accuracy": self.validation_pairwise_accuracy,
            "members": list(self.members),
            "means": list(self.means),
            "stds": list(self.stds),
            "calibration_x": list(self.calibration_x),
            "calibration_y": list(self.calibration_y),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Ensemble:
        members = tuple(data["members"])
        return cls(
            members=members,
            weights=tuple(float(data["weights"][m]) for m in members),
            means=tuple(float(v) for v in data["means"]),
            stds=tuple(float(v) for v in data["stds"]),
            calibration_x=tuple(float(v) for v in data["calibration_x"]),
            calibration_y=tuple(float(v) for v in data["calibration_y"]),
            validation_pairwise_accuracy=float(data["validation_pairwise_accuracy"]),
        )


def simplex_grid(members: int, step: float) -> np.ndarray:
    """All weight vectors with entries in multiples of ``step`` that sum to 1."""
    units = round(1 / step)
    rows = [
        np.array(parts, dtype=np.float64) / units
        for parts in itertools.product(range(units + 1), repeat=members)
        if sum(parts) == units
    ]
    return np.stack(rows)


def fit_ensemble(
    validation: pd.DataFrame, scores: Mapping[str, np.ndarray], step: float = 0.05
) -> Ensemble:
    """Fit weights and calibration on validation rows (``query_key``, ``grade``) only.

    ``scores`` maps each member's name to its scores of those rows, in row order.
    Ties in accuracy go to the first weight vector of :func:`simplex_grid`.
    """
    from sklearn.isotonic import IsotonicRegression

    members = tuple(scores)
    matrix = np.stack([np.asarray(scores[m], dtype=np.float64) for m in members], axis=1)
    if len(matrix) != len(validation):
        raise ValueError(f"{len(matrix)} member scores for {len(validation)} validation rows")
    means = matrix.mean(axis=0)
    stds = np.where(matrix.std(axis=0) > 0, matrix.std(axis=0), 1.0)
    z = (matrix - means) / stds
    pairs = PairIndex.build(validation["query_key"], validation["grade"])
    grid = simplex_grid(len(members), step)
    accuracies = np.array([pairs.accuracy(z @ w) for w in grid])
    best = grid[int(np.argmax(accuracies))]
    mixed = z @ best
    target = np.asarray(grade_to_score(validation["grade"].to_numpy()), dtype=np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(mixed, target)
    return Ensemble(
        members=members,
        weights=tuple(float(w) for w in best),
        means=tuple(float(m) for m in means),
        stds=tuple(float(s) for s in stds),
        calibration_x=tuple(float(x) for x in iso.X_thresholds_),
        calibration_y=tuple(float(y) for y in iso.y_thresholds_),
        validation_pairwise_accuracy=float(accuracies.max()),
    )


def fit_from_splits(
    frames: Mapping[str, pd.DataFrame],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    members: Sequence[str] | None = None,
    step: float = 0.05,
) -> Ensemble:
    """Fit on the ``validation`` entry of per-split frames and member scores, nothing else.

    ``scores[split][member]`` are a member's scores of ``frames[split]``; ``members``
    picks a subset (the ensemble without the LLM, for instance).
    """
    chosen = tuple(members or scores[VALIDATION])
    return fit_ensemble(frames[VALIDATION], {m: scores[VALIDATION][m] for m in chosen}, step)
