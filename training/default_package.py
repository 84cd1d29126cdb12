"""Keep the default model package: verify it, else rebuild it from what the repository holds.

``python -m training ensure-default`` (what ``make serve`` runs) imports no torch when
the package verifies; a rebuild trains students and never runs the LLM teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.artifacts import (
    PipelineError,
    augmentation_labels_path,
    best_on_validation,
    labeled_augmentation,
    load_dataset,
    read_run,
    run_name,
    students_dir,
)
from training.config import TrainConfig

logger = logging.getLogger(__name__)


def ensure_default(config: TrainConfig) -> Path | None:
    """Keep a verified default package, else rebuild it from the cache."""
    from service.model_package import ModelPackageError, load_package

    try:
        load_package(config.default_package_dir)
    except ModelPackageError as exc:
        logger.warning("default model package unusable (%s); rebuilding it", exc)
        return rebuild_default(config)
    logger.info("default model package %s verifies; nothing to do", config.default_package_dir)
    return config.default_package_dir


def rebuild_default(config: TrainConfig) -> Path:
    """Rebuild the default package from what is on disk, never running the teacher.

    Trains the human-only student and, when teacher labels of the augmentation set are
    cached, a student distilled on all of them, then the committee student when the
    config names a committee of those runs; exports the best one on validation.
    Bounded by student training time (no labeling, which takes hours on a CPU).
    """
    from training.onnx_export.stage import stage_export
    from training.stages import stage_committee, stage_distill

    dataset = load_dataset(config)
    sizes = [0]
    try:
        labels = augmentation_labels_path(config, dataset)
    except PipelineError:  # no teacher package: no teacher id to find labels under
        labels = None
    # Without labels, building the augmentation set (BM25 over the catalogue) buys nothing.
    cached = len(labeled_augmentation(config, dataset)) if labels and labels.is_file() else 0
    if cached:
        sizes.append(cached)
    logger.info(
        "rebuilding the default package from cached inputs: students %s",
        [run_name(size) for size in sizes],
    )
    runs = stage_distill(config, sizes=sizes)
    members = config.committee.members
    if members and all(read_run(students_dir(config) / name) for name in members):
        # Committee labels are cached too (and cheap to redo): the second round rebuilds.
        runs.append(stage_committee(config))
    best = best_on_validation(r for r in (read_run(d) for d in runs) if r)
    return stage_export(config, student=best["name"])
