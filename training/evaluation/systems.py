"""Every system the evaluation compares, scored on the evaluation split (before metrics).

BM25 and the zero-shot embedding cosine (baselines), each finished student run (cross-
encoders, and representation students with their latency uncached and with the items'
vectors cached), the committee teacher of each committee student (the mean of its
members' scores), the served default package (as the service runs it), the
representation package when one is exported, and the teacher's cached labels. A student
run's row comes from its stored result when that scored the same set
(:mod:`training.evaluation.student_results`); otherwise it is scored and stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    curve_sizes,
    read_run,
    run_name,
    students_dir,
)
from training.config import TrainConfig
from training.evaluation import student_results as results
from training.evaluation.baselines import latency_ms_per_pair
from training.evaluation.report import committee_row_name, student_row_name
from training.label import read_labels, stored_labels

logger = logging.getLogger(__name__)


def teacher_scores_for(frame: pd.DataFrame, labels_file: Path | None) -> np.ndarray | None:
    """Teacher scores aligned to ``frame``'s rows, NaN where the file has no label."""
    if labels_file is None or stored_labels(labels_file) is None:
        return None
    labels = read_labels(labels_file).loc[:, ["query_key", "product_id", "teacher_score"]]
    merged = frame.loc[:, ["query_key", "product_id"]].merge(
        labels, on=["query_key", "product_id"], how="left"
    )
    scores = merged["teacher_score"].to_numpy(dtype=np.float64)
    return scores if not np.isnan(scores).all() else None


@dataclass
class Scored:
    """One system's scores on the evaluation split, before metrics."""

    name: str
    kind: str
    scores: np.ndarray
    calibrated: bool
    latency_ms_per_pair: float | None = None
    # Representation students: item vectors pre-computed, only query + interaction timed.
    latency_cached_ms_per_pair: float | None = None
    augment_pairs: int | None = None
    # Who labeled the augmentation pairs: "teacher" (the LLM), "committee" or None.
    labels_from: str | None = None
    validation_pairwise_accuracy: float | None = None
    notes: str = ""
    # Scores of the validation queries' random negatives (the evaluation's negatives row).
    negative_scores: np.ndarray | None = None
    # When the latency was timed, if not in this run (a stored result: maybe another
    # machine), so that no report compares it side by side with one timed now.
    latency_measured_at: str | None = None


def score_systems(
    config: TrainConfig, dataset: Dataset, frame: pd.DataFrame, sample: pd.DataFrame
) -> list[Scored]:
    """BM25, zero-shot embedding cosine, every trained student, committees and the package."""
    from training.evaluation.baselines import BM25Scorer, EmbeddingCosineScorer

    batch = config.evaluate.batch_size
    queries, titles = frame["query"].tolist(), frame["title"].tolist()
    lat_queries, lat_titles = sample["query"].tolist(), sample["title"].tolist()
    lat_ids, lat_n = sample["product_id"].tolist(), len(sample)
    scored = []

    bm25 = BM25Scorer(dataset.products)
    scored.append(
        Scored(
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
        Scored(
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
    # Every run evaluate reports (student_results.evaluated_runs): the curve's sizes, any
    # other size trained with `distill --size N`, committee students, and the stored
    # results of runs whose weights are gone.
    records = results.evaluated_runs(config, dataset)
    for size in sorted({0, *curve_sizes(config, dataset)} - {r["augment_pairs"] for r in records}):
        logger.warning("student %s not trained yet; left out of the evaluation", run_name(size))
    records.sort(key=lambda r: (r.get("labels_from") == "committee", r["augment_pairs"]))
    table = results.table_set(config, frame, sample)
    for record in records:
        row = score_run(config, record, frame, sample, table)
        if row is not None:
            scored.append(row)
            logger.info("scored %s", row.name)
    by_name = {s.name: s for s in scored}
    for record in records:
        if record.get("labels_from") != "committee" or record.get("architecture"):
            continue
        members = [by_name.get(student_row_name(name)) for name in record["committee"]]
        if any(m is None for m in members):
            logger.warning("a member of %s's committee is missing; no teacher row", record["name"])
            continue
        scored.append(
            Scored(
                committee_row_name(record["name"]),
                "committee",
                np.mean([m.scores for m in members], axis=0),
                calibrated=True,
                latency_ms_per_pair=sum(m.latency_ms_per_pair or 0.0 for m in members),
                notes=f"mean score of {', '.join(record['committee'])}: the labels "
                f"{record['name']} learned from",
            )
        )
    scored.extend(score_package(config, frame, sample))
    scored.extend(score_representation_package(config, frame, sample))
    return scored


def score_run(
    config: TrainConfig,
    record: dict,
    frame: pd.DataFrame,
    sample: pd.DataFrame,
    table: str,
) -> Scored | None:
    """A student run's row: its stored result when that scored ``table`` (the set hash),
    else scored from its weights and stored; None when neither is here."""
    entry = results.stored_entry(config, record)
    part = results.usable(entry, "table", table)
    if part is not None:
        assert entry is not None and entry.scores is not None  # usable() checked both
        row = run_row(
            record,
            entry.scores,
            part["latency_ms_per_pair"],
            part.get("latency_cached_ms_per_pair"),
        )
        row.notes = "; ".join(n for n in (row.notes, results.stored_note(entry, part)) if n)
        row.latency_measured_at = str(part.get("measured_at", "?"))[:10]
        return row
    if not results.weights_present(config, record):
        logger.warning(
            "%s: no weights here and no stored result of this evaluation set; left out",
            record["name"],
        )
        return None
    if record.get("architecture"):
        row = score_representation_run(config, record, frame, sample)
    else:
        row = score_cross_encoder_run(config, record, frame, sample)
    fields = {
        "latency_ms_per_pair": row.latency_ms_per_pair,
        "latency_cached_ms_per_pair": row.latency_cached_ms_per_pair,
    }
    row.scores = results.store_table(config, record, row.scores, table, fields)
    return row


def run_row(
    record: dict, scores: np.ndarray, latency: float | None, cached: float | None = None
) -> Scored:
    """The report row of a student run from its scores and latencies (fresh or stored)."""
    augment = record["augment_pairs"]
    if record.get("architecture"):
        head = record.get("head", {})
        return Scored(
            student_row_name(record["name"]),
            "representation",
            scores,
            calibrated=True,
            latency_ms_per_pair=latency,
            latency_cached_ms_per_pair=cached,
            augment_pairs=augment,
            labels_from=record.get("labels_from") if augment else None,
            validation_pairwise_accuracy=record["validation_pairwise_accuracy"],
            notes=f"{record['architecture']} (item vectors {head.get('dim')}-d), labels "
            f"{record.get('labels_file') or 'human only'}; ms / pair with the item vectors "
            f"cached: {cached or 0.0:.3f} (uncached: both sides encoded, {latency or 0.0:.3f})",
        )
    labels_from = record.get("labels_from", "teacher") if augment else None
    return Scored(
        student_row_name(record["name"]),
        "student",
        scores,
        calibrated=True,
        augment_pairs=augment,
        labels_from=labels_from,
        validation_pairwise_accuracy=record["validation_pairwise_accuracy"],
        latency_ms_per_pair=latency,
        notes=(
            "labels of the augmentation pairs: mean score of the committee "
            + ", ".join(record["committee"])
            if labels_from == "committee"
            else ""
        ),
    )


def score_cross_encoder_run(
    config: TrainConfig, record: dict, frame: pd.DataFrame, sample: pd.DataFrame
) -> Scored:
    """A cross-encoder student run (PyTorch FP32) from its weights."""
    from training.student import load_student, predict_scores

    batch = config.evaluate.batch_size
    lat_queries, lat_titles = sample["query"].tolist(), sample["title"].tolist()
    model, tokenizer = load_student(
        students_dir(config) / record["name"], config.student.max_length
    )
    scores = predict_scores(
        model, tokenizer, frame["query"].tolist(), frame["title"].tolist(), batch
    )
    latency = latency_ms_per_pair(
        lambda rows: predict_scores(model, tokenizer, lat_queries[rows], lat_titles[rows], batch),
        len(sample),
        batch,
    )
    return run_row(record, scores, latency)


def _representation_latency(scorer, sample: pd.DataFrame, batch: int) -> tuple[float, float]:
    """(uncached, cached) ms per pair: both sides encoded, or the items' vectors stored."""
    queries, titles, n = sample["query"].tolist(), sample["title"].tolist(), len(sample)
    uncached = latency_ms_per_pair(lambda rows: scorer.score(queries[rows], titles[rows]), n, batch)
    stored = scorer.encode_items(titles)
    cached = latency_ms_per_pair(
        lambda rows: scorer.score_encoded(
            queries[rows], titles[rows], scorer.encode_queries(queries[rows]), stored
        ),
        n,
        batch,
    )
    return uncached, cached


def score_representation_run(
    config: TrainConfig, record: dict, frame: pd.DataFrame, sample: pd.DataFrame
) -> Scored:
    """A representation student run (PyTorch FP32), each side encoded apart."""
    from training.representation.model import load_representation
    from training.representation.train import scorer as run_scorer

    batch = config.evaluate.batch_size
    model, query_tokenizer, item_tokenizer = load_representation(
        students_dir(config) / record["name"]
    )
    scorer = run_scorer(model, query_tokenizer, item_tokenizer, batch)
    uncached, cached = _representation_latency(scorer, sample, batch)
    scores = scorer.score(frame["query"].tolist(), frame["title"].tolist())
    return run_row(record, scores, uncached, cached)


def score_representation_package(
    config: TrainConfig, frame: pd.DataFrame, sample: pd.DataFrame
) -> list[Scored]:
    """Each exported representation package (the main architecture's and each of
    ``representation.also``; INT8 graphs, else FP32) that verifies."""
    from training.representation.runs import representation_package_dir, variant_configs

    architectures = dict.fromkeys(v.representation.architecture for v in variant_configs(config))
    return [
        row
        for architecture in architectures
        for row in _representation_package_row(
            config, representation_package_dir(config, architecture), frame, sample
        )
    ]


def _representation_package_row(
    config: TrainConfig, package_dir: Path, frame: pd.DataFrame, sample: pd.DataFrame
) -> list[Scored]:
    from training.onnx_export import ExportError
    from training.onnx_export.representation import package_scorer
    from training.onnx_export.representation_manifest import read_representation_manifest

    try:
        manifest = read_representation_manifest(package_dir)
        variant = next(
            v
            for v in ("int8", "fp32")
            if v in manifest.variants
            and (package_dir / manifest.variants[v].query.file).is_file()
            and (package_dir / manifest.variants[v].item.file).is_file()
        )
        scorer = package_scorer(
            package_dir, variant, config.evaluate.threads, batch_size=config.evaluate.batch_size
        )
    except (OSError, ValueError, StopIteration, ExportError) as exc:
        logger.info("no representation package row: %s", exc)
        return []
    uncached, cached = _representation_latency(scorer, sample, config.evaluate.batch_size)
    source = manifest.provenance.get("student", {})
    return [
        Scored(
            f"representation package {manifest.name} {manifest.version} "
            f"({manifest.architecture}, ONNX {variant}, CPU)",
            "representation",
            scorer.score(frame["query"].tolist(), frame["title"].tolist()),
            calibrated=True,
            latency_ms_per_pair=uncached,
            latency_cached_ms_per_pair=cached,
            notes=f"exported from the run {source.get('run', '?')} (fingerprint "
            f"{source.get('fingerprint', '?')}); item vectors stored as "
            f"{manifest.item_vectors.dtype}; ms / pair with the item vectors cached: "
            f"{cached:.3f} (uncached {uncached:.3f})",
        )
    ]


def score_package(config: TrainConfig, frame: pd.DataFrame, sample: pd.DataFrame) -> list[Scored]:
    """The shipped default package, as the service runs it, when one verifies."""
    from service.model_package import ModelPackageError
    from training.evaluation.baselines import PackageScorer

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
        Scored(
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


def teacher_latency(config: TrainConfig, sample: pd.DataFrame) -> float | None:
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


def teacher_row(
    config: TrainConfig, scores: np.ndarray, labels_file: Path, sample: pd.DataFrame
) -> Scored:
    """The teacher, from its cached labels (its latency measured on the package when present)."""
    from training.artifacts import teacher_label_id

    return Scored(
        f"teacher ({teacher_label_id(config)})",
        "teacher",
        scores,
        calibrated=True,
        latency_ms_per_pair=teacher_latency(config, sample),
        notes=f"scores from the label cache {labels_file}",
    )


ENSEMBLE_ROW = "teacher ensemble (LLM + human-only + BM25)"


def ensemble_rows(record: dict | None, scored: list[Scored]) -> list[Scored]:
    """The ensemble of ``record`` (training/ensemble_stage.py) scored from its members' rows.

    Its weights and isotonic map come from validation; here they only score. None when a
    member has no row or the teacher did not label the whole split.
    """
    from training.artifacts import HUMAN_ONLY
    from training.ensemble import Ensemble

    if record is None:
        return []
    teacher = [s for s in scored if s.kind == "teacher"]
    members = {
        "llm": teacher[0] if teacher else None,
        HUMAN_ONLY: next((s for s in scored if s.name == student_row_name(HUMAN_ONLY)), None),
        "bm25": next((s for s in scored if s.name == "BM25"), None),
    }
    if any(m is None for m in members.values()) or np.isnan(members["llm"].scores).any():
        logger.warning("a member of the ensemble has no full row; no ensemble row")
        return []
    ensemble = Ensemble.from_dict(record["ensemble"])
    negatives = None
    if all(m.negative_scores is not None for m in members.values()):
        negatives = ensemble.score({k: m.negative_scores for k, m in members.items()})
    costs = [m.latency_ms_per_pair for m in members.values()]
    weights = ", ".join(f"{k} {w:.2f}" for k, w in record["ensemble"]["weights"].items())
    return [
        Scored(
            ENSEMBLE_ROW,
            "ensemble",
            ensemble.score({k: m.scores for k, m in members.items()}),
            calibrated=True,
            latency_ms_per_pair=sum(costs) if all(c is not None for c in costs) else None,  # type: ignore[misc]
            negative_scores=negatives,
            notes=f"weights {weights} (z-scored members), fit with its isotonic map on "
            f"validation only ({record['id']}); cost: the sum of its members'",
        )
    ]
