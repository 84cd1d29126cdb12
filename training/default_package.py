"""Keep the default model package: verify it, else rebuild it from what the repository holds.

``python -m training ensure-default`` (what ``make serve`` runs) imports no torch when
the package verifies; a rebuild trains students and never runs the LLM teacher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
from training.label import stored_labels

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

    With the frontier's choice (``paths.default_choice``, committed): that run, retrained
    from its recorded config and the committed labels (:func:`rebuild_choice`). Without
    one: the human-only student and, when teacher labels of the augmentation set are
    cached, a student distilled on all of them, then the committee student when the
    config names a committee of those runs; exports the best one on validation.
    Bounded by student training time (no labeling, which takes hours on a CPU).
    """
    from training.evaluation.frontier import read_choice
    from training.onnx_export.stage import stage_export
    from training.stages import stage_committee, stage_distill

    choice = read_choice(config)
    if choice is not None:
        return stage_export(config, student=rebuild_choice(config, choice))
    dataset = load_dataset(config)
    sizes = [0]
    try:
        labels = augmentation_labels_path(config, dataset)
    except PipelineError:  # no teacher package: no teacher id to find labels under
        labels = None
    # Without labels, building the augmentation set (BM25 over the catalogue) buys nothing.
    cached = len(labeled_augmentation(config, dataset)) if labels and stored_labels(labels) else 0
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


def recorded_config(config: TrainConfig, recorded: dict[str, Any]) -> TrainConfig:
    """A run's recorded config with this machine's paths (and no extra curve runs)."""
    data = {**recorded, "paths": config.paths.model_dump()}
    # Rebuild one run, not the seeds and ablations a recipe trains around it.
    data["curve"] = {**data.get("curve", {}), "end_seeds": []}
    return TrainConfig.model_validate(data)


def rebuild_choice(config: TrainConfig, choice: dict[str, Any]) -> str:
    """Retrain every run of the choice's ``chain`` (a smaller student's source first) from
    its recorded config and the committed labels; returns the chosen run's name here.

    Each rebuilt run must come out with its recorded fingerprint (same config, data and
    labels), else :class:`PipelineError` says which differs.
    """
    from training.stages import stage_distill

    names: dict[str, str] = {}
    for link in choice["chain"]:
        if link.get("source_run"):
            from training.small import stage_small

            base = recorded_config(config, choice["chain"][0]["config"])
            small = TrainConfig.model_validate(link["config"]).small.model_copy(
                update={"layers": (tuple(link["layers"]),), "source": names[link["source_run"]]}
            )
            (run_dir,) = stage_small(base.model_copy(update={"small": small}))
        else:
            (run_dir,) = stage_distill(
                recorded_config(config, link["config"]), sizes=[link["augment_pairs"]]
            )
        record = read_run(run_dir)
        if record is None or record["fingerprint"] != link["fingerprint"]:
            raise PipelineError(
                f"rebuilding {link['name']} gave {run_dir.name} with fingerprint "
                f"{(record or {}).get('fingerprint')}, not the recorded {link['fingerprint']}: "
                "its config, data or committed labels changed since the frontier chose it"
            )
        names[link["name"]] = run_dir.name
        logger.info("rebuilt %s as %s", link["name"], run_dir.name)
    return names[choice["run"]]
