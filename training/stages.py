"""The training stages: teacher -> label -> distill -> committee (and ``all``).

Every stage reads the one :class:`training.config.TrainConfig`, writes its output under
the configured directories (names and fingerprints in :mod:`training.artifacts`) and
skips itself when that output exists and was made from the same inputs:

- ``teacher``: LoRA fine-tuning of the LLM teacher (resumes from its last checkpoint)
  and the checksummed teacher package ``models/<teacher_package>/``.
- ``label``: teacher labels for the held-out split(s) that the evaluation compares
  against, then for the augmentation set up to the largest curve size, appended to
  ``labels/<teacher_id>/...csv`` (resumes where it stopped).
- ``distill``: one student per augmentation size (0 = human labels only) under
  ``runs/students/<name>/``, plus the curve's seed variants.
- ``small``: students of a few of the distilled L6 student's own layers, distilled again,
  exported and timed next to it (:mod:`training.small`).
- ``committee``: optional second round: the averaged scores of chosen first-round
  students label a larger augmentation set (``labels/committee-<id>/...csv``) and a fresh
  student ``committee-n<N>`` is distilled from them.
- ``represent``: a representation student (bi-encoder or late interaction, see
  :mod:`training.representation`) on the human pairs plus the labels
  ``representation.labels`` names, ``runs/students/<architecture>-n<N>/``.

``distill``, ``small``, ``committee`` and ``represent`` share one step, :func:`fit_run`:
fingerprint -> skip when current -> record -> train -> save. ``evaluate`` is
:mod:`training.evaluation.stage`, ``export`` :mod:`training.onnx_export.stage`.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    augment_data_version,
    augmentation_label_source,
    augmentation_labels_path,
    committee_labels_path,
    committee_run_name,
    committee_student_fingerprint,
    curve_sizes,
    load_augmentation,
    load_dataset,
    negatives_labels_path,
    read_run,
    run_name,
    split_labels_path,
    split_sample,
    student_fingerprint,
    students_dir,
    teacher_labeled_augmentation,
    validation_negatives,
    with_scores,
)
from training.config import CONFIG_FILE_NAME, TrainConfig
from training.label import label_pairs

if TYPE_CHECKING:
    from training.recipe import CurveRun

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- teacher


# Teacher settings that change how a run goes, not what it learns: a checkpoint or package
# made with other values is still the same teacher.
_TEACHER_RUNTIME_FIELDS = ("threads", "checkpoint_minutes", "device")


def _teacher_identity(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    normal = json.loads(json.dumps(config, default=list))
    return {k: v for k, v in normal.items() if k not in _TEACHER_RUNTIME_FIELDS}


def stage_teacher(
    config: TrainConfig, force: bool = False, max_seconds: float | None = None
) -> Path | None:
    """Fine-tune the teacher (resumable) and write its package; None when stopped early."""
    from training.teacher import train_teacher, write_teacher_package

    package = config.teacher_package_dir
    wanted = _teacher_identity(asdict(config.teacher))
    dataset = load_dataset(config)
    manifest_path = package / "manifest.json"
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if (
            _teacher_identity(manifest.get("config")) == wanted
            and manifest.get("data", {}).get("sha256") == dataset.sha256
        ):
            logger.info("teacher package %s is up to date; skipping", package)
            return package
    work_dir = config.path("teacher_checkpoints")
    state_file = work_dir / "checkpoint" / "state.json"
    if state_file.is_file():
        previous = _teacher_identity(json.loads(state_file.read_text()).get("config"))
        if previous != wanted:
            if not force:
                differs = ", ".join(
                    f"{key}: checkpoint {(previous or {}).get(key)!r}, config {wanted.get(key)!r}"
                    for key in sorted(set(previous or {}) | set(wanted))
                    if (previous or {}).get(key) != wanted.get(key)
                )
                raise PipelineError(
                    f"{state_file} was trained with another teacher config ({differs}); set "
                    "those values (e.g. --set teacher.train_pairs=...) to continue it, or pass "
                    "--force to discard it and start over"
                )
            shutil.rmtree(work_dir / "checkpoint")
    train = dataset.splits["train"]
    wanted_pairs = config.teacher.train_pairs
    sample = (
        train
        if wanted_pairs is None or wanted_pairs >= len(train)
        else train.sample(n=wanted_pairs, random_state=config.teacher.seed)
    )
    checkpoint = train_teacher(
        sample["query"].tolist(),
        sample["title"].tolist(),
        sample["grade"].to_numpy(),
        config.teacher,
        work_dir,
        config.path("teacher_cache_dir"),
        max_seconds=max_seconds,
    )
    state = json.loads((checkpoint / "state.json").read_text())
    if state["step"] < state["total_steps"]:
        logger.warning(
            "teacher stopped at step %d/%d; run the stage again to resume",
            state["step"],
            state["total_steps"],
        )
        return None
    extra = {"data": {**dataset.describe(config), "teacher_train_pairs": len(sample)}}
    return write_teacher_package(checkpoint, package, config.teacher, extra)


# --------------------------------------------------------------------------- label


class LazyTeacher:
    """``predict_proba`` that loads the teacher only when a pair actually needs a label."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self._teacher = None

    def __call__(self, queries: list[str], titles: list[str]) -> np.ndarray:
        if self._teacher is None:
            from relevance_core.teacher import load_teacher

            self._teacher = load_teacher(
                self.config.teacher_package_dir,
                self.config.path("teacher_cache_dir"),
                self.config.label.threads,
                precision=self.config.label.precision,
            )
            self._teacher.batch_size = self.config.label.batch_size
        return self._teacher.predict_proba(queries, titles)


def stage_label(
    config: TrainConfig,
    limit: int | None = None,
    max_seconds: float | None = None,
    splits: Sequence[str] | None = None,
) -> dict[str, int]:
    """Label the held-out split(s), then the first ``limit`` augmentation pairs (default:
    the largest curve size). Already-labeled pairs are skipped. Returns label counts."""
    dataset = load_dataset(config)
    predict = LazyTeacher(config)
    started = time.monotonic()

    def remaining() -> float | None:
        return None if max_seconds is None else max(0.0, max_seconds - (time.monotonic() - started))

    def label(pairs: pd.DataFrame, path: Path, limit: int | None, seconds: float | None):
        settings = config.label
        if settings.engine == "ray":
            from training.label_ray import label_pairs_ray

            return label_pairs_ray(
                pairs,
                path,
                package_dir=config.teacher_package_dir,
                cache_dir=config.path("teacher_cache_dir"),
                limit=limit,
                chunk_size=settings.chunk_size,
                max_seconds=seconds,
                actors=settings.ray_actors,
                threads_per_actor=settings.threads,
                batch_size=settings.batch_size,
                precision=settings.precision,
            )
        return label_pairs(predict, pairs, path, limit, settings.chunk_size, seconds)

    counts = {}
    chosen = config.label.splits if splits is None else splits
    for split in chosen:
        path = split_labels_path(config, dataset, split)
        sample = split_sample(config, dataset, split)
        labels = label(sample, path, None, remaining())
        counts[split] = len(labels)
        logger.info("%s: %d/%d pairs labeled -> %s", split, len(labels), len(sample), path)
    if "validation" in chosen and config.evaluate.negatives_per_query:
        # The teacher's row of the random-negatives check (and the ensemble's LLM part).
        path = negatives_labels_path(config, dataset)
        negatives = validation_negatives(config, dataset)
        labels = label(negatives, path, None, remaining())
        counts["negatives"] = len(labels)
        logger.info("random negatives: %d/%d labeled -> %s", len(labels), len(negatives), path)
    augmentation = load_augmentation(config, dataset)
    wanted = min(
        len(augmentation), limit if limit is not None else max(curve_sizes(config, dataset))
    )
    if remaining() is None or remaining() > 0:
        path = augmentation_labels_path(config, dataset)
        labels = label(augmentation, path, wanted, remaining())
        counts["augmentation"] = len(labels)
        logger.info("augmentation: %d/%d pairs labeled -> %s", len(labels), wanted, path)
    return counts


# --------------------------------------------------------------------------- students


def fit_run(
    config: TrainConfig,
    dataset: Dataset,
    name: str,
    fingerprint: str,
    prepare: Callable[[], tuple[pd.DataFrame | None, dict[str, Any]]],
    force: bool = False,
    train: Callable[..., dict[str, Any]] | None = None,
    frame: Callable[[pd.DataFrame | None], pd.DataFrame] | None = None,
) -> Path:
    """Train the student run ``name`` unless a finished run with ``fingerprint`` is there.

    ``prepare()`` (called only when the run is trained) returns the labeled augmentation
    pairs to add to the human training pairs (``teacher_score``; None for none) and the
    record fields that describe them. ``frame(labeled)`` turns those into the training
    rows (default: :func:`training.distill.training_frame` of the human pairs and them).
    ``train`` fits and saves the run, with the signature of
    :func:`training.distill.train_student` (the default). Returns the run directory.
    """
    out_dir = students_dir(config) / name
    previous = read_run(out_dir)
    if previous and previous.get("fingerprint") == fingerprint and not force:
        logger.info("student %s is up to date; skipping", out_dir)
        return out_dir
    from training.distill import train_student, training_frame

    train = train or train_student
    labeled, fields = prepare()
    record = {
        "name": name,
        "fingerprint": fingerprint,
        **fields,
        "data": dataset.describe(config),
        "config": config.to_dict(),
    }
    rows = training_frame(dataset.splits["train"], labeled) if frame is None else frame(labeled)
    train(rows, dataset.splits["validation"], config.student, config.loss, out_dir, record)
    config.save(out_dir / CONFIG_FILE_NAME)
    return out_dir


def stage_distill(
    config: TrainConfig,
    sizes: Sequence[int] | None = None,
    force: bool = False,
    runs: Sequence[str] | None = None,
) -> list[Path]:
    """Train one student per augmentation size (0 = human only); finished runs are kept.

    Without ``sizes``: the whole curve with its seed variants
    (:func:`training.recipe.curve_runs`); ``runs`` keeps only the curve's runs of those
    names, in that order (two processes can then share the curve's work).
    """
    from training.distill import train_student
    from training.mirror_ingest import mirror_training_pairs
    from training.recipe import curve_runs, distill_frame, run_fields, select_runs

    dataset = load_dataset(config)
    # Ingested live traffic (python -m training ingest-mirror) joins every run's teacher
    # pairs when mirror.use is on and the configured teacher has any.
    mirror = mirror_training_pairs(config, dataset)

    def prepare(size: int) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        if not size:
            fields = {"augment_pairs": 0, "teacher_id": None, "augment_version": None}
            pairs, fields = None, {**fields, "augment_sources": {}}
        else:
            pairs = teacher_labeled_augmentation(config, dataset, size)
            source = augmentation_label_source(config, dataset)  # the LLM or the ensemble
            fields = {
                "augment_pairs": size,
                "teacher_id": source.id,
                "labels_from": source.kind,
                "augment_version": augment_data_version(config, dataset),
                "augment_sources": pairs["source"].value_counts().to_dict(),
            }
        if mirror is None:
            return pairs, fields
        live, provenance = mirror
        pairs = live if pairs is None else pd.concat([pairs, live], ignore_index=True)
        return pairs, {
            **fields,
            "teacher_id": provenance["teacher_id"],
            "augment_sources": {**fields["augment_sources"], "mirror": len(live)},
            "mirror": provenance,
        }

    named = functools.partial(distill_run_name, mirror=mirror)

    def prepare_run(run: CurveRun) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        pairs, fields = prepare(run.augment_pairs)
        return pairs, {**fields, **run_fields(run)}

    return [
        fit_run(
            run.config,
            dataset,
            run.name,
            distill_fingerprint(run, dataset, mirror, config),
            lambda run=run: prepare_run(run),
            force,
            # Every seed is selected on the same validation queries (the config's seed's).
            train=functools.partial(train_student, selection_seed=config.student.seed),
            frame=lambda labeled, run=run: distill_frame(run.config, dataset, labeled),
        )
        for run in select_runs(curve_runs(config, dataset, sizes, name=named), runs)
    ]


def distill_run_name(size: int, mirror: tuple[pd.DataFrame, dict[str, Any]] | None) -> str:
    """The distill stage's name of a size's run (with ingested live pairs, their count)."""
    from training.mirror_ingest import mirror_run_name

    return run_name(size) if mirror is None else mirror_run_name(run_name(size), len(mirror[0]))


def distill_fingerprint(
    run: CurveRun,
    dataset: Dataset,
    mirror: tuple[pd.DataFrame, dict[str, Any]] | None,
    recipe: TrainConfig,
) -> str:
    """The fingerprint the distill stage trains ``run`` of ``recipe``'s curve under
    (``mirror``: the ingested live pairs of
    :func:`training.mirror_ingest.mirror_training_pairs`)."""
    from training.mirror_ingest import mirror_fingerprint

    base = student_fingerprint(run.config, dataset, run.augment_pairs, recipe)
    return base if mirror is None else mirror_fingerprint(base, mirror[1])


def stage_small(config: TrainConfig, force: bool = False) -> list[Path]:
    """Smaller students from the L6 run's own layers, exported and timed (:mod:`training.small`)."""
    from training.small import stage_small as train_small

    return train_small(config, force=force)


def stage_ingest_mirror(config: TrainConfig, paths: Sequence[Path]) -> dict[str, Any]:
    """Mirrored live pairs -> ``labels/<teacher>/mirror-<version>.csv.gz`` (see
    :mod:`training.mirror_ingest`); returns the counts."""
    from training.mirror_ingest import ingest_mirror

    return ingest_mirror(config, paths)


def stage_committee(config: TrainConfig, force: bool = False) -> Path:
    """Label the first ``committee.augment_pairs`` augmentation pairs with the committee's
    mean score (cached) and distill a student from human labels plus those labels."""
    from training.committee import committee_id, read_committee_labels

    settings = config.committee
    if not settings.members:
        raise PipelineError(
            "committee.members is empty: name the student runs that form the committee, "
            "e.g. --set committee.members=human-only,distill-n5888"
        )
    dataset = load_dataset(config)
    member_dirs = [students_dir(config) / name for name in settings.members]
    for run_dir in member_dirs:
        if read_run(run_dir) is None:
            raise PipelineError(
                f"committee member {run_dir} is not a finished student run; "
                "run `python -m training distill` first"
            )
    cid = committee_id(member_dirs)
    path = committee_labels_path(config, dataset, cid)
    pairs = load_augmentation(config, dataset).head(settings.augment_pairs)
    labels = None if force else read_committee_labels(path)
    if labels is None:
        labels = _label_with_committee(config, cid, member_dirs, pairs, path)
    labeled = with_scores(pairs, labels)
    fields = {
        "augment_pairs": len(labeled),
        "labels_from": "committee",
        "teacher_id": cid,
        "committee": list(settings.members),
        "committee_labels": f"{cid}/{path.name}",
        "augment_version": augment_data_version(config, dataset),
        "augment_sources": labeled["source"].value_counts().to_dict(),
    }
    return fit_run(
        config,
        dataset,
        committee_run_name(len(labeled)),
        committee_student_fingerprint(config, dataset, cid, len(labeled)),
        lambda: (labeled, fields),
        force,
    )


def stage_represent(config: TrainConfig, force: bool = False) -> Path:
    """Train the representation student on the human pairs plus ``representation.labels``,
    then each architecture of ``representation.also`` the same way; returns the main run."""
    from training.representation.runs import variant_configs

    main, *others = variant_configs(config)
    out = _represent(main, force)
    for other in others:
        _represent(other, force)
    return out


def _represent(config: TrainConfig, force: bool) -> Path:
    from training.representation.runs import (
        label_source,
        labeled_pairs,
        labels_sha256,
        representation_fingerprint,
        representation_run_name,
    )

    settings = config.representation
    dataset = load_dataset(config)
    labeled = labeled_pairs(config, dataset)
    pairs = 0 if labeled is None else len(labeled)
    sha = labels_sha256(config)
    fields = {
        "architecture": settings.architecture,
        "augment_pairs": pairs,
        "labels_from": label_source(config) if pairs else None,
        "teacher_id": Path(settings.labels).parent.name if settings.labels else None,
        "labels_file": settings.labels,
        "labels_sha256": sha,
        "augment_version": augment_data_version(config, dataset) if pairs else None,
        "augment_sources": labeled["source"].value_counts().to_dict() if pairs else {},
    }

    def train(*args: Any) -> dict[str, Any]:
        from training.representation.train import train_representation

        return train_representation(*args, settings=settings)

    return fit_run(
        config,
        dataset,
        representation_run_name(settings.architecture, pairs),
        representation_fingerprint(config, dataset, sha, pairs),
        lambda: (labeled, fields),
        force,
        train=train,
    )


def _label_with_committee(
    config: TrainConfig, cid: str, member_dirs: list[Path], pairs: pd.DataFrame, path: Path
) -> pd.DataFrame:
    import torch

    from training.committee import committee_scores, write_committee_labels

    torch.set_num_threads(config.student.threads)
    logger.info("committee %s labels %d pairs -> %s", cid, len(pairs), path)
    labels = committee_scores(
        member_dirs, pairs, config.student.max_length, config.committee.batch_size
    )
    write_committee_labels(labels, path)
    return labels


# --------------------------------------------------------------------------- all


def stage_all(config: TrainConfig, force: bool = False, command: str | None = None) -> Path | None:
    """Every stage in order; each skips itself when its output is current."""
    from training.evaluation.stage import stage_evaluate
    from training.onnx_export.stage import stage_export

    if stage_teacher(config, force=force) is None:
        return None
    stage_label(config)
    if config.ensemble.use != "llm":
        from training.ensemble_stage import stage_ensemble

        # The ensemble needs the human-only student; its decision names who labels the rest.
        stage_distill(config, sizes=[0], force=force)
        stage_ensemble(config, force=force)
    stage_distill(config, force=force)
    stage_small(config, force=force)
    stage_evaluate(config, command=command)
    return stage_export(config, force=force)
