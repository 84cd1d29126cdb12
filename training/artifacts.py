"""What the stages write and read: names, paths, fingerprints and cached inputs (no torch).

Every stage output lives under a configured directory and carries a fingerprint of the
config sections and data it was made from, so a stage can tell a current output (skip)
from a stale one (redo):

- ``runs/students/<run>/``: a finished student run (``run.json`` plus the saved model and
  its :data:`TOKENIZER_FILES`); runs are named by :func:`run_name` / :func:`committee_run_name`.
- ``runs/augment/<data version>-<split fingerprint>.csv``: the augmentation set.
- ``labels/<teacher_id>/<version>.csv``: teacher labels (see ``training.label``);
  ``labels/committee-<id>/<version>-n<N>.csv``: committee labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relevance_core.hashing import sha256_file
from training.atomic import atomic_path
from training.config import TrainConfig
from training.data import SplitFractions, catalogue, load_labeled, query_subset, split_by_query
from training.label import data_version, label_path, read_labels, split_version

logger = logging.getLogger(__name__)

HUMAN_ONLY = "human-only"
RUN_RECORD = "run.json"
# Tokenizer files a saved student carries and the export copies into a package (with the
# model's config.json).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
)


class PipelineError(RuntimeError):
    """A stage cannot run: a missing input from an earlier stage, named with the fix."""


# --------------------------------------------------------------------------- data


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
    return Dataset(path, sha256_file(path), labeled, splits, catalogue(labeled))


# --------------------------------------------------------------------------- labels


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


# The teacher ensemble's members (training/ensemble_stage.py), in the order they are fit.
ENSEMBLE_MEMBERS = ("llm", "human-only", "bm25")
ENSEMBLE_RECORD = "ensemble.json"


def ensemble_id(config: TrainConfig, dataset: Dataset) -> str:
    """``ensemble-<hash>`` of its members' identities (the LLM's labels, the human-only
    student's fingerprint, BM25 over this data) and the weight grid."""
    identity = [
        list(ENSEMBLE_MEMBERS),
        teacher_label_id(config),
        student_fingerprint(config, dataset, 0),
        dataset.sha256,
        config.ensemble.step,
    ]
    return "ensemble-" + hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:10]


def ensemble_record_path(config: TrainConfig, dataset: Dataset) -> Path:
    """``labels/<ensemble id>/ensemble.json``: weights, member table and the decision."""
    return config.path("labels_dir") / ensemble_id(config, dataset) / ENSEMBLE_RECORD


def ensemble_labels_path(config: TrainConfig, dataset: Dataset) -> Path:
    """``labels/<ensemble id>/<data_version>.csv.gz``: the ensemble's augmentation labels."""
    version = augment_data_version(config, dataset)
    return config.path("labels_dir") / ensemble_id(config, dataset) / f"{version}.csv.gz"


def read_ensemble_record(config: TrainConfig, dataset: Dataset) -> dict[str, Any] | None:
    path = ensemble_record_path(config, dataset)
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass(frozen=True)
class LabelSource:
    """Who labels the augmentation pairs students learn from, and where the labels are."""

    kind: str  # "teacher" (the LLM) | "ensemble"
    id: str
    path: Path


def augmentation_label_source(config: TrainConfig, dataset: Dataset) -> LabelSource:
    """The LLM's labels, or the ensemble's (``ensemble.use``, and for "auto" its decision)."""
    use = config.ensemble.use
    if use != "llm":
        record = read_ensemble_record(config, dataset)
        if record is None:
            raise PipelineError(
                f"ensemble.use={use!r} needs the ensemble's decision "
                f"{ensemble_record_path(config, dataset)}; run `python -m training ensemble` "
                "first (after the label stage and the human-only student)"
            )
        if use == "ensemble" or record["decision"]["teacher"] == "ensemble":
            return LabelSource(
                "ensemble", ensemble_id(config, dataset), ensemble_labels_path(config, dataset)
            )
    llm = augmentation_labels_path(config, dataset)
    return LabelSource("teacher", teacher_label_id(config), llm)


def split_sample(config: TrainConfig, dataset: Dataset, split: str) -> pd.DataFrame:
    """The pairs of a held-out split that the teacher labels (a fixed sample of queries)."""
    frame = dataset.splits[split]
    if not config.label.eval_queries:  # None or 0: the whole split
        return frame
    return query_subset(frame, config.label.eval_queries, seed=config.split.seed)


def split_labels_path(config: TrainConfig, dataset: Dataset, split: str) -> Path:
    """``labels/<teacher_id>/<split>-<n>q-<data sha>.csv``: teacher labels of a held-out sample."""
    frame = dataset.splits[split]
    queries = config.label.eval_queries or int(frame["query_key"].nunique())
    version = split_version(dataset.sha256, split, queries)
    return label_path(config.path("labels_dir"), teacher_label_id(config), version)


def validation_negatives(config: TrainConfig, dataset: Dataset, seed: int | None = None):
    """Random catalogue products never judged for their validation query (the negatives row).

    ``evaluate.negatives_per_query`` per query, drawn with ``seed`` (default
    ``evaluate.negatives_seed``; the score calibration fits on another seed's draw).
    """
    from training.evaluation.negatives import random_negative_pairs

    settings = config.evaluate
    return random_negative_pairs(
        dataset.splits["validation"],
        dataset.products,
        settings.negatives_per_query,
        settings.negatives_seed if seed is None else seed,
    )


def negatives_labels_path(config: TrainConfig, dataset: Dataset) -> Path:
    """``labels/<teacher_id>/negatives-validation-<n>pq-s<seed>-<data sha>.csv``."""
    settings = config.evaluate
    version = (
        f"negatives-validation-{settings.negatives_per_query}pq-s{settings.negatives_seed}-"
        f"{dataset.sha256[:12]}"
    )
    return label_path(config.path("labels_dir"), teacher_label_id(config), version)


def committee_labels_path(config: TrainConfig, dataset: Dataset, committee: str) -> Path:
    """``labels/<committee id>/<data_version>-n<N>.csv``: the committee's labels."""
    version = augment_data_version(config, dataset)
    return (
        config.path("labels_dir") / committee / f"{version}-n{config.committee.augment_pairs}.csv"
    )


# --------------------------------------------------------------------------- augmentation


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
    # Two workers that start side by side build the same set: each writes its own file.
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
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


def labeled_augmentation(config: TrainConfig, dataset: Dataset) -> pd.DataFrame:
    """The augmentation pairs that carry a cached label of the label source, in set order."""
    source = augmentation_label_source(config, dataset)
    if source.kind == "ensemble":
        labels = pd.read_csv(source.path, dtype={"query_key": str, "product_id": str})
    else:
        labels = read_labels(source.path)
    return with_scores(load_augmentation(config, dataset), labels)


def with_scores(pairs: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """``pairs`` that have a label, with its ``teacher_score``, in the order of ``pairs``."""
    return pairs.merge(
        labels.loc[:, ["query_key", "product_id", "teacher_score"]],
        on=["query_key", "product_id"],
        how="inner",
    )


def human_teacher_scores(config: TrainConfig, dataset: Dataset) -> np.ndarray:
    """The teacher's scores of every human training pair, aligned to the train split.

    They come from the label stage's cache of the ``train`` split (``label.splits``
    holding "train" and ``label.eval_queries = 0``, so the whole split is labeled).
    """
    train = dataset.splits["train"]
    path = split_labels_path(config, dataset, "train")
    labels = read_labels(path).loc[:, ["query_key", "product_id", "teacher_score"]]
    merged = train.loc[:, ["query_key", "product_id"]].merge(
        labels, on=["query_key", "product_id"], how="left"
    )
    scores = merged["teacher_score"].to_numpy(dtype=np.float64)
    missing = int(np.isnan(scores).sum())
    if missing:
        raise PipelineError(
            f"{path} lacks teacher scores of {missing} of the {len(train)} human training "
            "pairs, which loss.human_teacher_weight > 0 or loss.margin_scale = 'teacher' need; "
            'run `python -m training label` with label.splits holding "train" and '
            "label.eval_queries = 0"
        )
    return scores


def teacher_labeled_augmentation(config: TrainConfig, dataset: Dataset, size: int) -> pd.DataFrame:
    """The first ``size`` teacher-labeled pairs of the augmentation set, in set order."""
    merged = labeled_augmentation(config, dataset)
    if len(merged) < size:
        source = augmentation_label_source(config, dataset)
        then = " and `python -m training ensemble`" if source.kind == "ensemble" else ""
        raise PipelineError(
            f"{source.path} holds {len(merged)} labels of the augmentation set, {size} are "
            f"needed; run `python -m training label --limit {size}`{then} first"
        )
    return merged.head(size).reset_index(drop=True)


# --------------------------------------------------------------------------- student runs


def run_name(augment_pairs: int) -> str:
    return HUMAN_ONLY if augment_pairs == 0 else f"distill-n{augment_pairs}"


def variant_run_name(base: str, seed: int | None = None) -> str:
    """``base`` trained with another seed (``-seed<N>``)."""
    return base if seed is None else f"{base}-seed{seed}"


def small_run_name(source: str, layers: Sequence[int]) -> str:
    """A smaller student made of ``layers`` of the run ``source``: ``<source>-l1.3.5``."""
    return f"{source}-l{'.'.join(str(i) for i in layers)}"


def committee_run_name(augment_pairs: int) -> str:
    return f"committee-n{augment_pairs}"


def students_dir(config: TrainConfig) -> Path:
    return config.path("runs_dir") / "students"


def human_only_config(config: TrainConfig) -> TrainConfig:
    """``config`` for the human-only baseline: the teacher's scores play no part in its loss.

    It is what every distilled student is measured against, so it learns from the human
    grades alone (each pair's grade, margins between grades), whatever ``loss`` says of
    the teacher's scores of the human pairs.
    """
    neutral = {"human_teacher_weight": 0.0, "margin_scale": "per_source"}
    return config.model_copy(update={"loss": config.loss.model_copy(update=neutral)})


def student_fingerprint(
    config: TrainConfig, dataset: Dataset, size: int, recipe: TrainConfig | None = None
) -> str:
    """Identity of a first-round student: split, student and loss config, data, its labels.

    The human-only student's (size 0) ignores the loss's teacher knobs, as its training does.
    ``recipe``: the config whose labels a variant run (another seed) learns
    from, when ``config`` is the variant's own; the labeler (the LLM, or the ensemble whose
    members include the recipe's human-only student) is the recipe's, not the variant's.
    """
    extra: dict[str, Any] = {"data": dataset.sha256, "augment_pairs": size}
    if not size:
        config = human_only_config(config)
    if size:
        labels = recipe or config
        # The LLM's id when it labels the augmentation (as before the ensemble existed).
        extra.update(
            teacher=augmentation_label_source(labels, dataset).id,
            augment=augment_data_version(labels, dataset),
        )
    return config.fingerprint("split", "student", "loss", extra=extra)


def small_student_fingerprint(
    config: TrainConfig, source: dict[str, Any], layers: Sequence[int]
) -> str:
    """Identity of a smaller student: the source run, its layers, the assistant's weight.

    ``config`` is the recipe's (its student section, not the derived one whose backbone
    is the source run's directory: a path is no identity).
    """
    extra = {
        "source": source["fingerprint"],
        "layers": list(layers),
        "assistant_weight": config.small.assistant_weight,
    }
    return config.fingerprint("split", "student", "loss", extra=extra)


def committee_student_fingerprint(
    config: TrainConfig, dataset: Dataset, committee: str, pairs: int
) -> str:
    """Identity of a committee student: as a first-round one, keyed by the committee's id."""
    extra = {
        "data": dataset.sha256,
        "committee": committee,
        "augment": augment_data_version(config, dataset),
        "n": pairs,
    }
    return config.fingerprint("split", "student", "loss", extra=extra)


def read_run(out_dir: Path) -> dict[str, Any] | None:
    """The record of a finished run, or None."""
    path = out_dir / RUN_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def finished_runs(config: TrainConfig) -> list[dict[str, Any]]:
    """The records of every finished run under ``runs/students/``, by name."""
    return [r for r in (read_run(d) for d in sorted(students_dir(config).glob("*"))) if r]


def best_on_validation(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The run record with the best validation pairwise accuracy (the first of equals)."""
    return max(records, key=lambda r: r["validation_pairwise_accuracy"] or -1.0)


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run, as recorded in reports."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", "training", *args])
