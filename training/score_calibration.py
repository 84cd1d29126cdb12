"""Score calibration: make the served scores mean what the manifest's classes say.

Human-judged pairs are all retrieved candidates, so a student trained on them alone can
rank well and still score an unrelated catalogue product 0.5 ("partial"). When fewer than
``evaluate.negatives_target`` of the validation queries' random negatives score below the
irrelevant threshold, the export fits Platt scaling, ``sigmoid(scale * logit + bias)``
with ``scale > 0``, on validation: the human pairs with their grade's score as a soft
target, and random catalogue products of the same queries (another draw than the one
evaluated) with target 0, the two sets weighted alike. The map goes into the manifest
(``calibration``) and :func:`relevance_core.activation.activate` applies it for the
service and the evaluation alike. Being strictly increasing, it changes no ranking.

Both package kinds are calibrated the same way on their served variant's logits: a
cross-encoder's graph output, a representation package's head logit
(``scale * similarity + bias``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from relevance_core.activation import sigmoid
from training.artifacts import Dataset, PipelineError, validation_negatives
from training.config import TrainConfig
from training.data import grade_to_score
from training.evaluation.metrics import class_metrics
from training.evaluation.negatives import IRRELEVANT_BELOW, irrelevant_share, random_negative_pairs

logger = logging.getLogger(__name__)

# The draw the calibration fits on: the evaluated one's seed plus this (never the same pairs).
FIT_SEED_OFFSET = 1


def fit_platt(
    logits: np.ndarray, targets: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """``(scale, bias)`` minimising the weighted cross-entropy of ``sigmoid(scale * x + bias)``
    against soft ``targets`` in [0, 1]; ``scale`` is kept positive (fit as its log)."""
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale = np.exp(params[0])
        z = scale * x + params[1]
        p = sigmoid(z, np.float64)
        # log(1 + e^z) - t z: the cross-entropy, stable for large |z|
        value = float(np.sum(w * (np.logaddexp(0.0, z) - t * z)))
        residual = w * (p - t)
        return value, np.array([float(np.sum(residual * x) * scale), float(np.sum(residual))])

    result = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B")
    return float(np.exp(result.x[0])), float(result.x[1])


def package_logits(package_dir: Path, threads: int, batch_size: int) -> Callable[[Any], np.ndarray]:
    """``frame -> logits`` of a package of either kind, its served CPU variant, before any
    calibration (what the map is fit on)."""
    from service.representation_package import (
        REPRESENTATION,
        load_representation_package,
        package_kind,
    )

    if package_kind(package_dir) == REPRESENTATION:
        from training.onnx_export.representation import package_scorer

        variant = load_representation_package(package_dir).select_variant("auto")
        pairs = package_scorer(package_dir, variant, threads, batch_size=batch_size)
    else:
        from training.evaluation.baselines import PackageScorer

        pairs = PackageScorer(package_dir, threads, batch_size)
    return lambda frame: pairs.logits(frame["query"].tolist(), frame["title"].tolist())


def calibrate_package(
    config: TrainConfig, dataset: Dataset, package_dir: Path, force: bool = False
) -> dict[str, Any] | None:
    """Fit and store the calibration by ``export.calibration``; returns what was decided.

    "never": nothing. "auto": only when the uncalibrated package misses the target on
    the evaluated draw of validation random negatives. A package that already carries a
    calibration keeps it unless ``force``. Cross-encoder and representation packages alike.
    """
    from service.model_package import ScoreCalibration, write_manifest
    from service.representation_package import load_any_package

    mode = config.export.calibration
    if mode == "never":
        return None
    if not config.evaluate.negatives_per_query:
        raise PipelineError(
            f"export.calibration={mode!r} fits on random negatives: set "
            "evaluate.negatives_per_query > 0"
        )
    package = load_any_package(package_dir)
    if package.manifest.calibration is not None and not force:
        return package.manifest.calibration.fit
    settings = config.evaluate
    logits = package_logits(package_dir, settings.threads, settings.batch_size)
    validation = dataset.splits["validation"]
    evaluated = validation_negatives(config, dataset)
    fit_draw = validation_negatives(config, dataset, seed=settings.negatives_seed + FIT_SEED_OFFSET)
    test_draw = random_negative_pairs(
        dataset.splits["test"],
        dataset.products,
        settings.negatives_per_query,
        settings.negatives_seed,
    )

    raw = {"validation": logits(validation), "evaluated": logits(evaluated)}
    before = irrelevant_share(sigmoid(raw["evaluated"], np.float64))
    decision: dict[str, Any] = {
        "mode": mode,
        "target": settings.negatives_target,
        "threshold": IRRELEVANT_BELOW,
        "negatives_per_query": settings.negatives_per_query,
        "validation_negatives_irrelevant_before": before,
    }
    if mode == "auto" and before >= settings.negatives_target:
        logger.info("random negatives %.1f%% irrelevant: no calibration needed", 100 * before)
        return {**decision, "calibrated": False}
    grades = validation["grade"].to_numpy()
    x = np.concatenate([raw["validation"], logits(fit_draw)])
    targets = np.concatenate([grade_to_score(grades), np.zeros(len(fit_draw))])
    # Each set weighs as much as the other, whatever the draw's size.
    weights = np.concatenate(
        [np.full(len(validation), 1 / len(validation)), np.full(len(fit_draw), 1 / len(fit_draw))]
    )
    scale, bias = fit_platt(x, targets, weights)

    def calibrated(values: np.ndarray) -> np.ndarray:
        return sigmoid(scale * values + bias, np.float64)

    fit = {
        **decision,
        "calibrated": True,
        "method": "platt on validation: human pairs (soft grade targets) and a separate draw "
        f"of {len(fit_draw)} random negatives (target 0, seed {settings.negatives_seed + 1}), "
        "each set weighted 1/2",
        "validation_negatives_irrelevant_after": irrelevant_share(calibrated(raw["evaluated"])),
        "test_negatives_irrelevant_after": irrelevant_share(calibrated(logits(test_draw))),
        "validation_class_accuracy_before": class_metrics(grades, sigmoid(raw["validation"]))[
            "class_accuracy"
        ],
        "validation_class_accuracy_after": class_metrics(grades, calibrated(raw["validation"]))[
            "class_accuracy"
        ],
    }
    manifest = package.manifest.model_copy(
        update={"calibration": ScoreCalibration(scale=scale, bias=bias, fit=fit)}
    )
    write_manifest(package_dir, manifest)  # type: ignore[arg-type]
    logger.info(
        "calibration scale %.3f bias %.3f: random negatives irrelevant %.1f%% -> %.1f%%",
        scale,
        bias,
        100 * before,
        100 * fit["validation_negatives_irrelevant_after"],
    )
    return fit
