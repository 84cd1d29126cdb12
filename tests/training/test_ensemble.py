"""The teacher ensemble: weights from validation only, calibration onto [0, 1]."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.ensemble import PairIndex, fit_ensemble, fit_from_splits, simplex_grid
from training.evaluation.metrics import pairwise_accuracy


def _split(seed: int, queries: int = 40, items: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {"query_key": f"q{seed}-{q}", "grade": float(rng.choice([1.0, 1.67, 2.33, 3.0]))}
        for q in range(queries)
        for _ in range(items)
    ]
    return pd.DataFrame(rows)


def _members(frame: pd.DataFrame, seed: int, good: str) -> dict[str, np.ndarray]:
    """Two members: ``good`` tracks the grade, the other is noise."""
    rng = np.random.default_rng(seed)
    grade = frame["grade"].to_numpy()
    bad = "b" if good == "a" else "a"
    return {good: grade + rng.normal(0, 0.3, len(frame)), bad: rng.normal(0, 1, len(frame))}


def test_pair_index_matches_the_evaluation_metric():
    frame = _split(0)
    scores = np.random.default_rng(1).normal(size=len(frame)).round(1)  # with ties
    expected = pairwise_accuracy(frame["query_key"], frame["grade"], scores)
    assert PairIndex.build(frame["query_key"], frame["grade"]).accuracy(scores) == pytest.approx(
        expected
    )


def test_simplex_grid_sums_to_one():
    grid = simplex_grid(3, 0.25)
    assert len(grid) == 15
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)


def test_weights_follow_the_useful_member_and_scores_are_calibrated():
    validation = _split(0)
    ensemble = fit_ensemble(validation, _members(validation, 1, good="a"))
    weights = dict(zip(ensemble.members, ensemble.weights, strict=True))
    assert weights["a"] > 0.8
    scored = ensemble.score(_members(validation, 1, good="a"))
    assert scored.min() >= 0.0 and scored.max() <= 1.0
    # calibrated onto the grade scale: irrelevant items score low, exact ones high
    grade = validation["grade"].to_numpy()
    assert scored[grade == 1.0].mean() < 0.3 < 0.7 < scored[grade == 3.0].mean()


def test_test_rows_never_shape_the_weights():
    frames = {"validation": _split(0), "test": _split(5)}
    scores = {
        "validation": _members(frames["validation"], 1, good="a"),
        # on test the other member is the useful one: a leak would move the weights
        "test": _members(frames["test"], 2, good="b"),
    }
    fitted = fit_from_splits(frames, scores)
    # the test scores changed arbitrarily (and made useless): same ensemble
    scrambled = {
        "validation": scores["validation"],
        "test": {m: np.zeros(len(frames["test"])) for m in ("a", "b")},
    }
    assert fit_from_splits(frames, scrambled) == fitted
    assert dict(zip(fitted.members, fitted.weights, strict=True))["a"] > 0.8
    # while fitting on the test rows really would choose the other member
    leaked = fit_ensemble(frames["test"], scores["test"])
    assert dict(zip(leaked.members, leaked.weights, strict=True))["b"] > 0.8


def test_member_subset_and_shape_checks():
    frames = {"validation": _split(0)}
    scores = {"validation": {**_members(frames["validation"], 1, good="a"), "c": np.zeros(240)}}
    without = fit_from_splits(frames, scores, members=["a", "b"])
    assert without.members == ("a", "b")
    with pytest.raises(ValueError, match="validation rows"):
        fit_ensemble(frames["validation"], {"a": np.zeros(3)})
