"""The ``evaluate`` stage: every system scored on the held-out split, then the report.

Writes ``runs/evaluation/<split>.json`` (the results: every row's metrics and slices, the
teacher-sample table, the conditions of the run), ``docs/evaluation.md`` and its curve.
When the teacher labeled only a sample of the split's queries, a second table compares
every system on that sample, the only fair comparison with the teacher.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    load_dataset,
    reproduce_command,
    split_labels_path,
)
from training.config import EvaluateConfig, TrainConfig
from training.evaluation.cascade import stored_result as stored_cascade
from training.evaluation.metrics import LongTailSlices, ranking_metrics, slice_metrics
from training.evaluation.report import SystemResult, findings, plot_curve, render_markdown
from training.evaluation.systems import Scored, score_systems, teacher_row, teacher_scores_for
from training.recipe import recipe_results

logger = logging.getLogger(__name__)


def stage_evaluate(
    config: TrainConfig, teacher_labels: Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """Score every system on the held-out split; write the report, plot and results JSON."""
    import torch

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
    teacher_scores = teacher_scores_for(frame, teacher_labels)
    sample = frame.sample(n=min(settings.latency_pairs, len(frame)), random_state=config.split.seed)
    negatives = _negatives(config, dataset)
    # Every system scores the split and the validation queries' random negatives in one
    # pass; the scores are split apart again below.
    scored = score_systems(config, dataset, pd.concat([frame, negatives]), sample)
    for system in scored:
        system.scores, system.negative_scores = (
            system.scores[: len(frame)],
            system.scores[len(frame) :],
        )
    if teacher_scores is not None:
        scored.append(teacher_row(config, teacher_scores, teacher_labels, sample))
        scored[-1].negative_scores = _teacher_negatives(config, dataset, negatives)
    from training.evaluation.systems import ensemble_rows

    ensemble = _ensemble_record(config, dataset)
    scored.extend(ensemble_rows(ensemble, scored))
    systems, subset = _tables(frame, scored, teacher_scores, slices)
    results: dict[str, Any] = {
        **_evaluated(config, dataset, frame),
        "command": command or reproduce_command(["evaluate"]),
        "teacher_labels": str(teacher_labels) if teacher_scores is not None else None,
        "latency": _latency(settings, len(sample)),
        "slices": slices.describe(),
        "slice_sizes": {
            name: int(frame["query_key"][mask].nunique())
            for name, mask in slices.masks(frame["query"].tolist()).items()
        },
        "systems": [s.to_dict() for s in systems],
        "teacher_subset": subset,
        "negatives": _negatives_summary(config, negatives),
        "ensemble": ensemble,
        "frontier": _frontier(config, dataset),
        "cascade": stored_cascade(config),
        "config": config.to_dict(),
    }
    # Per run, size and seed (the curve's two seeds, the smaller
    # students' sources and measured ONNX costs): training.recipe.student_run_results.
    results["student_runs"] = recipe_results(config, dataset, results["systems"])
    results["findings"] = findings(results)
    _write(config, results)
    return results


def _tables(
    frame: pd.DataFrame,
    scored: list[Scored],
    teacher_scores: np.ndarray | None,
    slices: LongTailSlices,
) -> tuple[list[SystemResult], dict[str, Any] | None]:
    """Rows on the whole split and, when the teacher labeled a sample only, on that sample."""

    def result(s: Scored, rows: np.ndarray, with_slices: bool) -> SystemResult:
        part = frame[rows].reset_index(drop=True)
        teacher = None if teacher_scores is None or s.kind == "teacher" else teacher_scores[rows]
        return SystemResult(
            name=s.name,
            kind=s.kind,
            metrics=ranking_metrics(part, s.scores[rows], teacher, calibrated=s.calibrated),
            slices=slice_metrics(part, s.scores[rows], slices) if with_slices else {},
            latency_ms_per_pair=s.latency_ms_per_pair,
            latency_cached_ms_per_pair=s.latency_cached_ms_per_pair,
            augment_pairs=s.augment_pairs,
            labels_from=s.labels_from,
            validation_pairwise_accuracy=s.validation_pairwise_accuracy,
            notes=s.notes,
            negatives_irrelevant_share=_negatives_share(s),
            latency_measured_at=s.latency_measured_at,
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
    return systems, subset


def _negatives(config: TrainConfig, dataset: Dataset) -> pd.DataFrame:
    """The validation queries' random negatives (none when evaluate.negatives_per_query is 0)."""
    from training.artifacts import validation_negatives

    if not config.evaluate.negatives_per_query:
        return pd.DataFrame(columns=["query", "query_key", "product_id", "title"])
    return validation_negatives(config, dataset)


def _teacher_negatives(
    config: TrainConfig, dataset: Dataset, negatives: pd.DataFrame
) -> np.ndarray | None:
    """The teacher's cached labels of the random negatives (labeled with the validation split)."""
    from training.artifacts import negatives_labels_path

    if not len(negatives):
        return None
    return teacher_scores_for(negatives, negatives_labels_path(config, dataset))


def _negatives_share(system: Scored) -> float | None:
    """Share of the random negatives a system scores irrelevant: systems on the [0, 1]
    scale whose every negative is scored (the teacher: when its labels cover them)."""
    from training.evaluation.negatives import irrelevant_share

    scores = system.negative_scores
    if not system.calibrated or scores is None or not len(scores) or np.isnan(scores).any():
        return None
    return irrelevant_share(scores)


def _negatives_summary(config: TrainConfig, negatives: pd.DataFrame) -> dict[str, Any]:
    from training.evaluation.negatives import IRRELEVANT_BELOW

    settings = config.evaluate
    return {
        "pairs": len(negatives),
        "queries": int(negatives["query_key"].nunique()),
        "per_query": settings.negatives_per_query,
        "seed": settings.negatives_seed,
        "threshold": IRRELEVANT_BELOW,
        "target": settings.negatives_target,
        "split": "validation",
    }


def _ensemble_record(config: TrainConfig, dataset: Dataset) -> dict[str, Any] | None:
    from training.artifacts import read_ensemble_record

    try:
        return read_ensemble_record(config, dataset)
    except PipelineError:  # no teacher package: no ensemble of it
        return None


def _frontier(config: TrainConfig, dataset: Dataset) -> dict[str, Any] | None:
    if not config.frontier.enabled:
        return None
    from training.evaluation.frontier import build_frontier

    return build_frontier(config, dataset)


def _evaluated(config: TrainConfig, dataset: Dataset, frame: pd.DataFrame) -> dict[str, Any]:
    """What was evaluated: the split, its size and the data file."""
    return {
        "split": config.evaluate.split,
        "pairs": len(frame),
        "queries": int(frame["query_key"].nunique()),
        "data": dataset.describe(config) | {"file": str(config.paths.data)},
    }


def _latency(settings: EvaluateConfig, pairs: int) -> dict[str, Any]:
    """How the latency column was measured."""
    teacher_pairs = min(settings.teacher_latency_pairs, pairs)
    return {
        "pairs": pairs,
        "teacher_pairs": teacher_pairs,
        "batch_size": settings.batch_size,
        "threads": settings.threads,
        "description": (
            f"wall time to score a fixed sample of {pairs} {settings.split} pairs "
            f"(the teacher: the first {teacher_pairs} "
            f"of them) in batches of {settings.batch_size} with {settings.threads} CPU "
            "thread(s), PyTorch FP32 unless the row says ONNX, divided by the number of "
            "pairs."
        ),
    }


def _write(config: TrainConfig, results: dict[str, Any]) -> None:
    split = results["split"]
    out_dir = config.path("runs_dir") / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{split}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    docs = config.path("docs_dir")
    stem = "evaluation" if split == "test" else f"evaluation-{split}"
    plot = plot_curve(results, docs / f"{stem}_curve.png")
    frontier_plot = None
    if results.get("frontier"):
        from training.evaluation.frontier import plot_frontier

        frontier_plot = plot_frontier(results["frontier"], split, docs / f"{stem}_frontier.png")
    (docs / f"{stem}.md").write_text(
        render_markdown(results, plot.name, frontier_plot.name if frontier_plot else None)
    )
    logger.info("report written to %s", docs / f"{stem}.md")
