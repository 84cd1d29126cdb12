"""Smaller students: layers of a distilled L6 student, distilled again, exported and timed.

For each ``small.layers`` entry the ``small`` stage builds a student from the source run's
own weights (its embeddings, the chosen encoder layers in order, its head), trains it on
the source's rows (the human pairs and the same teacher-labeled augmentation pairs, with
the recipe's loss) and, with ``small.assistant_weight > 0``, on the source student's
own scores of those rows as well (a teacher assistant, :func:`training.distill.with_assistant`).
Then the source and every small student are exported by the same export code as the
default package, into ``runs/packages/<run>/``, and timed on the same validation pairs
with the served CPU variant (:func:`measure_costs`): ``runs/packages/<run>/cost.json``.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    augment_data_version,
    curve_sizes,
    human_only_config,
    load_dataset,
    read_run,
    run_name,
    small_run_name,
    small_student_fingerprint,
    students_dir,
    teacher_labeled_augmentation,
)
from training.config import TrainConfig

logger = logging.getLogger(__name__)

ASSISTANT_SCORES = "assistant_scores.csv"
COST_FILE = "cost.json"


def source_run(config: TrainConfig, dataset: Dataset) -> str:
    """The run the small students start from: ``small.source``, or the curve's largest size."""
    if config.small.source != "auto":
        return config.small.source
    return run_name(max([0, *curve_sizes(config, dataset)]))


def packages_dir(config: TrainConfig) -> Path:
    """Where the small stage exports runs (not the default package's directory)."""
    return config.path("runs_dir") / "packages"


def assistant_scores(
    source_dir: Path, frame: pd.DataFrame, max_length: int, batch: int
) -> np.ndarray:
    """The source student's scores of ``frame``'s rows, cached in its run directory.

    The cache (``assistant_scores.csv``: query_key, product_id, score) goes away with the
    run directory when the source is retrained, so it is never stale.
    """
    from training.student import load_student, predict_scores

    path = source_dir / ASSISTANT_SCORES
    keys = frame.loc[:, ["query_key", "product_id"]].astype(str)
    cached = (
        pd.read_csv(path, dtype={"query_key": str, "product_id": str})
        if path.is_file()
        else pd.DataFrame(columns=["query_key", "product_id", "score"])
    )
    merged = keys.merge(cached, on=["query_key", "product_id"], how="left")
    todo = merged["score"].isna().to_numpy()
    if todo.any():
        model, tokenizer = load_student(source_dir, max_length)
        rows = frame[todo]
        logger.info("teacher assistant %s scores %d pairs", source_dir.name, len(rows))
        scores = predict_scores(
            model, tokenizer, rows["query"].tolist(), rows["title"].tolist(), batch
        )
        fresh = keys[todo].assign(score=scores).drop_duplicates(["query_key", "product_id"])
        (pd.concat([cached, fresh], ignore_index=True) if len(cached) else fresh).to_csv(
            path, index=False
        )
        merged.loc[todo, "score"] = scores
    return merged["score"].to_numpy(dtype=np.float64)


def stage_small(config: TrainConfig, force: bool = False) -> list[Path]:
    """Train every ``small.layers`` student from the source run, export and time them all.

    Returns the small students' run directories (empty when ``small.layers`` is empty).
    """
    from training.distill import train_student, with_assistant
    from training.recipe import distill_frame
    from training.stages import fit_run

    settings = config.small
    if not settings.layers:
        return []
    _check_cost_variant(config)
    dataset = load_dataset(config)
    source_name = source_run(config, dataset)
    source_dir = students_dir(config) / source_name
    source = read_run(source_dir)
    if source is None:
        raise PipelineError(
            f"the small students' source {source_dir} is not a finished student run; "
            "run `python -m training distill` first (or set small.source)"
        )
    if source.get("architecture"):
        raise PipelineError(f"small.source {source_name} is a representation student")
    size = int(source["augment_pairs"])
    # The source's rows under the recipe's loss (a human-only source: the human grades).
    base = config if size else human_only_config(config)
    source_student = source["config"]["student"]
    out = []
    for layers in settings.layers:
        name = small_run_name(source_name, layers)
        student = base.student.model_copy(
            update={
                "backbone": str(source_dir),
                "layers": tuple(layers),
            }
        )
        derived = base.model_copy(update={"student": student})

        def prepare(
            layers: tuple[int, ...] = layers, seed: int = student.seed
        ) -> tuple[pd.DataFrame | None, dict]:
            fields = {
                "augment_pairs": size,
                "teacher_id": source.get("teacher_id"),
                "augment_version": augment_data_version(config, dataset) if size else None,
                "augment_sources": source.get("augment_sources", {}),
                "source_run": source_name,
                "source_fingerprint": source["fingerprint"],
                "layers": list(layers),
                "assistant_weight": settings.assistant_weight,
                "seed": seed,
            }
            labeled = teacher_labeled_augmentation(config, dataset, size) if size else None
            return labeled, fields

        def frame(labeled: pd.DataFrame | None, derived: TrainConfig = derived) -> pd.DataFrame:
            rows = distill_frame(derived, dataset, labeled)
            if settings.assistant_weight > 0:
                scores = assistant_scores(
                    source_dir, rows, derived.student.max_length, derived.student.eval_batch_size
                )
                rows = with_assistant(rows, scores, settings.assistant_weight)
            return rows

        out.append(
            fit_run(
                derived,
                dataset,
                name,
                small_student_fingerprint(config, source, layers),
                prepare,
                force,
                # Checkpoints are chosen on the same validation queries as the source's.
                train=functools.partial(train_student, selection_seed=source_student["seed"]),
                frame=frame,
            )
        )
    measure_costs(config, dataset, [source_name, *(d.name for d in out)], force=force)
    return out


def measure_costs(
    config: TrainConfig, dataset: Dataset, runs: list[str], force: bool = False, rounds: int = 3
) -> dict[str, dict[str, Any]]:
    """Export ``runs`` to ``runs/packages/<run>/`` and time their served CPU variant.

    Each package scores the same ``small.cost_pairs`` validation pairs (batches of
    ``evaluate.batch_size``, ``small.cost_threads`` ONNX threads) in ``rounds`` rounds that
    alternate between the packages; a package's cost is its fastest round, the one least
    disturbed by other work on a shared machine. Writes and returns each ``cost.json``.
    """
    from training.onnx_export.stage import export_student

    settings = config.small
    _check_cost_variant(config)
    packages = {
        run: export_student(config, run, packages_dir(config) / run, package_name=run, force=force)
        for run in runs
    }
    validation = dataset.splits["validation"]
    sample = validation.sample(
        n=min(settings.cost_pairs, len(validation)), random_state=config.split.seed
    )
    queries, titles = sample["query"].tolist(), sample["title"].tolist()
    timers = {
        run: _package_timer(path, settings.cost_variant, settings.cost_threads)
        for run, path in packages.items()
    }
    best = {run: float("inf") for run in runs}
    for _ in range(rounds):
        for run, timer in timers.items():
            best[run] = min(best[run], timer(queries, titles, config.evaluate.batch_size))
    source_ms = best[runs[0]]
    costs = {}
    for run in runs:
        ms = best[run]
        costs[run] = {
            "run": run,
            "package": str(packages[run]),
            "variant": settings.cost_variant,
            "threads": settings.cost_threads,
            "pairs": len(sample),
            "batch_size": config.evaluate.batch_size,
            "rounds": rounds,
            "ms_per_pair": ms,
            "pairs_per_second": 1000.0 / ms if ms > 0 else None,
            "relative_to": runs[0],
            "speedup": source_ms / ms if ms > 0 else None,
        }
        (packages[run] / COST_FILE).write_text(json.dumps(costs[run], indent=2) + "\n")
        logger.info(
            "%s: %.3f ms / pair (%s, %d threads), %.2fx %s",
            run,
            ms,
            settings.cost_variant,
            settings.cost_threads,
            costs[run]["speedup"] or 0.0,
            runs[0],
        )
    return costs


def _check_cost_variant(config: TrainConfig) -> None:
    if config.small.cost_variant not in config.export.variants:
        raise PipelineError(
            f"small.cost_variant {config.small.cost_variant!r} is not among export.variants "
            f"{list(config.export.variants)}: the packages would lack the graph to time"
        )


def _package_timer(package_dir: Path, variant: str, threads: int):
    """``timer(queries, titles, batch) -> ms per pair`` for one package's ONNX graph."""
    import time

    from service.features import load_tokenizer
    from service.model_package import load_package
    from service.scorers.cross_encoder import OnnxScorer
    from training.scoring import length_order, score_pairs

    package = load_package(package_dir)
    scorer = OnnxScorer.load(package, "cpu", variant=variant, intra_op_threads=threads)
    tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)

    def timer(queries: list[str], titles: list[str], batch: int) -> float:
        order = length_order(queries, titles)
        score_pairs(scorer.run, tokenizer, queries[:batch], titles[:batch], batch)  # warm-up
        started = time.perf_counter()
        score_pairs(scorer.run, tokenizer, queries, titles, batch, order=order)
        return (time.perf_counter() - started) * 1000.0 / max(1, len(queries))

    return timer


def read_cost(config: TrainConfig, run: str) -> dict[str, Any] | None:
    """The measured cost of ``run``'s package from the small stage, or None."""
    path = packages_dir(config) / run / COST_FILE
    return json.loads(path.read_text()) if path.is_file() else None
