"""Score calibration: Platt scaling fit on validation, carried in the manifest, applied alike."""

from __future__ import annotations

import numpy as np
import pytest

from relevance_core.activation import sigmoid
from service.model_package import load_package
from training.artifacts import load_dataset, validation_negatives
from training.evaluation.baselines import PackageScorer
from training.evaluation.metrics import pairwise_accuracy
from training.evaluation.negatives import irrelevant_share
from training.score_calibration import calibrate_package, fit_platt


def test_fit_platt_recovers_a_known_map_and_keeps_scale_positive() -> None:
    x = np.random.default_rng(0).normal(0, 2, 4000)
    targets = sigmoid(1.7 * x - 0.8, np.float64)  # soft targets of a known map
    scale, bias = fit_platt(x, targets)
    assert scale == pytest.approx(1.7, abs=0.02) and bias == pytest.approx(-0.8, abs=0.02)
    # Targets that fall as the logit rises: the best increasing map is flat, never reversed.
    scale, _ = fit_platt(x, 1 - targets)
    assert 0 < scale < 0.05


def test_calibration_of_random_negatives_on_a_tiny_run(pipeline_copy) -> None:
    config = pipeline_copy.model_copy(
        update={"export": pipeline_copy.export.model_copy(update={"calibration": "always"})}
    )
    dataset = load_dataset(config)
    package_dir = config.default_package_dir
    negatives = validation_negatives(config, dataset)
    validation = dataset.splits["validation"]
    before = PackageScorer(package_dir, 1, 8)
    raw_val = before.score(validation["query"].tolist(), validation["title"].tolist())
    raw_neg = before.score(negatives["query"].tolist(), negatives["title"].tolist())
    assert before.manifest.calibration is None

    fit = calibrate_package(config, dataset, package_dir)
    manifest = load_package(package_dir).manifest  # still verifies: graphs untouched
    assert manifest.calibration is not None and manifest.calibration.scale > 0
    assert fit == manifest.calibration.fit and fit["calibrated"] is True
    after = PackageScorer(package_dir, 1, 8)
    logits = after.logits(negatives["query"].tolist(), negatives["title"].tolist())
    scored = after.score(negatives["query"].tolist(), negatives["title"].tolist())
    # The package's scorer applies the manifest's map: sigmoid(scale * logit + bias).
    np.testing.assert_allclose(
        scored,
        sigmoid(manifest.calibration.scale * logits + manifest.calibration.bias, np.float64),
        rtol=1e-6,
    )
    assert fit["validation_negatives_irrelevant_before"] == irrelevant_share(raw_neg)
    assert fit["validation_negatives_irrelevant_after"] == pytest.approx(irrelevant_share(scored))
    # Random negatives (target 0) pull the scores down: more of them come out irrelevant.
    assert irrelevant_share(scored) > irrelevant_share(raw_neg)
    # Strictly increasing: the ranking of the human pairs is exactly what it was.
    val = after.score(validation["query"].tolist(), validation["title"].tolist())
    keys, grades = validation["query_key"], validation["grade"]
    assert pairwise_accuracy(keys, grades, val) == pairwise_accuracy(keys, grades, raw_val)
    # Kept on a second export of the same package; "never" fits nothing.
    assert calibrate_package(config, dataset, package_dir) == fit
    never = config.model_copy(
        update={"export": config.export.model_copy(update={"calibration": "never"})}
    )
    assert calibrate_package(never, dataset, package_dir) is None
