"""Which students a recipe trains, on what rows, and what their results say together.

- :func:`curve_runs`: the ``distill`` stage's students: one per augmentation size (0 = the
  human-only baseline), and each end of the curve again at every ``curve.end_seeds``
  seed. Everything but the seed is equal.
- :func:`distill_frame`: the rows a distilled student fits (human pairs with the teacher's
  scores when the loss uses them, plus teacher-labeled augmentation pairs).
- :func:`student_run_results`: for the results JSON of the evaluation, each student
  run's seed, variant and scores, the curve per size and seed, and the noise between two
  seeds.

Term matching (item tokens that occur in the query marked with their own token type) was
evaluated here as an ablation of the largest student and removed on 2026-12-03: it did
worse on validation (docs/evaluation_history.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    curve_sizes,
    human_only_config,
    human_teacher_scores,
    run_name,
    variant_run_name,
)
from training.config import TrainConfig


@dataclass(frozen=True)
class CurveRun:
    """One student of the ``distill`` stage: its run name, augmentation size and config."""

    name: str
    augment_pairs: int
    config: TrainConfig
    # The run this one repeats with one knob changed (None: a point of the curve itself).
    variant_of: str | None = None


def _with_student(config: TrainConfig, **changes: Any) -> TrainConfig:
    return config.model_copy(update={"student": config.student.model_copy(update=changes)})


def curve_runs(
    config: TrainConfig,
    dataset: Dataset,
    sizes: Sequence[int] | None = None,
    name: Callable[[int], str] = run_name,
) -> list[CurveRun]:
    """The students to train: ``sizes`` (default: 0 and the curve's sizes) at the config's
    seed; with the default sizes also the seed variants.

    ``name(size)`` names a size's run (the variants add their suffix to it).
    """
    full_curve = sizes is None
    sizes = [0, *curve_sizes(config, dataset)] if sizes is None else list(sizes)

    def at(size: int, base: TrainConfig) -> TrainConfig:
        return human_only_config(base) if size == 0 else base

    runs = [CurveRun(name(size), size, at(size, config)) for size in sizes]
    if not full_curve:
        return runs
    ends = sorted({sizes[0], sizes[-1]})
    for seed in config.curve.end_seeds:
        if seed == config.student.seed:
            continue
        for size in ends:
            runs.append(
                CurveRun(
                    variant_run_name(name(size), seed=seed),
                    size,
                    at(size, _with_student(config, seed=seed)),
                    variant_of=name(size),
                )
            )
    return runs


def select_runs(runs: list[CurveRun], names: Sequence[str] | None) -> list[CurveRun]:
    """The runs named ``names`` in that order (all of ``runs`` for None).

    Raises PipelineError naming the known runs when a name is not one of them.
    """
    if names is None:
        return runs
    by_name = {run.name: run for run in runs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise PipelineError(
            f"unknown run(s) {', '.join(unknown)}; the curve's runs: {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


def distill_frame(
    config: TrainConfig, dataset: Dataset, labeled: pd.DataFrame | None
) -> pd.DataFrame:
    """The rows a student of ``config`` fits: the human training pairs plus ``labeled``.

    The teacher's scores of the human pairs are read (and required) only when
    ``config.loss`` uses them.
    """
    from training.distill import training_frame, uses_teacher_on_human_pairs

    human = dataset.splits["train"]
    scores = (
        human_teacher_scores(config, dataset) if uses_teacher_on_human_pairs(config.loss) else None
    )
    return training_frame(human, labeled, scores, config.loss)


def run_fields(run: CurveRun) -> dict[str, Any]:
    """What a run record says of its place in the recipe (seed, variant, targets)."""
    loss = run.config.loss
    return {
        "seed": run.config.student.seed,
        "variant_of": run.variant_of,
        "targets": {
            "human_teacher_weight": loss.human_teacher_weight,
            "margin_scale": loss.margin_scale,
        },
    }


# --------------------------------------------------------------------------- results


def _spread(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(max(finite) - min(finite)) if len(finite) > 1 else None


def _mean(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def recipe_results(
    config: TrainConfig, dataset: Dataset, systems: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """:func:`student_run_results` of the runs evaluate reports and their measured costs
    (the small stage's ``cost.json`` on disk, else the stored frontier result's)."""
    from training.evaluation.student_results import evaluated_runs, stored_entry
    from training.small import read_cost

    def cost(record: dict[str, Any]) -> dict[str, Any] | None:
        found = read_cost(config, record["name"])
        if found is None and (entry := stored_entry(config, record)) and entry.frontier:
            found = entry.frontier.get("cost")
        return found

    records = evaluated_runs(config, dataset)
    costs = {r["name"]: c for r in records if (c := cost(r)) is not None}
    return student_run_results(records, systems, costs)


def student_run_results(
    records: Sequence[dict[str, Any]],
    systems: Sequence[dict[str, Any]],
    costs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Per-run, per-size and per-seed results of the cross-encoder students.

    ``records``: finished run records; ``systems``: the evaluation's rows (``to_dict``);
    ``costs``: the small stage's ``cost.json`` by run (ONNX, the served CPU variant).
    Returns ``runs`` (one entry per run with a row), ``curve`` (per augmentation size:
    each seed's test and validation pairwise accuracy of the full-size students, their
    mean and spread) and ``seed_noise`` (the largest spread at any size, validation and
    test).
    """
    from training.evaluation.report import student_row_name

    rows = {s["name"]: s for s in systems}
    runs = []
    for record in records:
        if record.get("architecture") or record.get("labels_from") == "committee":
            continue
        row = rows.get(student_row_name(record["name"]))
        if row is None:
            continue
        student = record.get("config", {}).get("student", {})
        runs.append(
            {
                "run": record["name"],
                "row": row["name"],
                "augment_pairs": record["augment_pairs"],
                "seed": record.get("seed", student.get("seed")),
                "layers": record.get("layers"),
                "source_run": record.get("source_run"),
                "variant_of": record.get("variant_of"),
                "test_pairwise_accuracy": row["metrics"].get("pairwise_accuracy"),
                "validation_pairwise_accuracy": record.get("validation_pairwise_accuracy"),
                "onnx_cost": (costs or {}).get(record["name"]),
            }
        )
    # The curve: full-size students (no layers dropped), seeds side by side.
    sizes = {r["augment_pairs"] for r in runs if r["layers"] is None}
    curve = []
    for size in sorted(sizes):
        members = [r for r in runs if r["augment_pairs"] == size and r["layers"] is None]
        test = [r["test_pairwise_accuracy"] for r in members]
        validation = [r["validation_pairwise_accuracy"] for r in members]
        curve.append(
            {
                "augment_pairs": size,
                "seeds": [
                    {
                        "seed": r["seed"],
                        "run": r["run"],
                        "test_pairwise_accuracy": r["test_pairwise_accuracy"],
                        "validation_pairwise_accuracy": r["validation_pairwise_accuracy"],
                    }
                    for r in sorted(members, key=lambda r: r["seed"])
                ],
                "test_mean": _mean(test),
                "test_spread": _spread(test),
                "validation_mean": _mean(validation),
                "validation_spread": _spread(validation),
            }
        )
    noise = {
        split: max(
            (c[f"{split}_spread"] for c in curve if c[f"{split}_spread"] is not None),
            default=None,
        )
        for split in ("validation", "test")
    }
    return {
        "runs": runs,
        "curve": curve,
        "seed_noise": noise,
    }
