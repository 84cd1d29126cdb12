"""The quality/latency frontier of students, and the rule that picks the default package.

One point per system: test pairwise accuracy (whole split) against measured cost per
pair. Students are exported and their served variant timed by the small stage's cost
measurement (:func:`training.small.measure_costs`: ``small.cost_variant`` through ONNX
Runtime at ``small.cost_threads`` threads, fastest of alternating rounds on the same
validation pairs), and their accuracy is that of the same graph. BM25 is timed in Python
on those pairs; the LLM teacher through ``training/teacher_bench.py``'s timing at the same
thread count; the ensemble costs the sum of its members. A student measured before on
the same pairs and settings is read back from its stored result
(:mod:`training.evaluation.student_results`), so a run whose weights are gone stays on it.

The rule (:func:`choose_default`): among the students, the best validation pairwise
accuracy (served variant, whole validation split) whose request of ``frontier.slo_items``
items, that many times its cost per pair, fits ``budget_share * slo_latency_ms`` (the
service's SLO). The choice and how to retrain it go to ``models/default-choice.json``
(:func:`write_choice`), which ``ensure-default`` rebuilds from committed labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    HUMAN_ONLY,
    Dataset,
    PipelineError,
    read_ensemble_record,
    split_labels_path,
    students_dir,
)
from training.config import FrontierConfig, TrainConfig
from training.evaluation import student_results as results
from training.evaluation.metrics import pairwise_accuracy

logger = logging.getLogger(__name__)

SMALL_MAX_LAYERS = 3


@dataclass
class Point:
    """One system on the frontier."""

    name: str
    kind: str  # baseline | student | teacher | ensemble
    test_pairwise_accuracy: float | None
    validation_pairwise_accuracy: float | None
    ms_per_pair: float | None
    layers: int | None = None
    run: str | None = None
    fingerprint: str | None = None
    cost: str = ""
    notes: str = ""

    def request_ms(self, items: int) -> float | None:
        return None if self.ms_per_pair is None else self.ms_per_pair * items


def budget_ms(settings: FrontierConfig) -> float:
    return settings.slo_latency_ms * settings.budget_share


def rule_text(settings: FrontierConfig) -> str:
    share = "" if settings.budget_share == 1 else f"{settings.budget_share:g} x "
    return (
        "the student with the best validation pairwise accuracy (served variant, whole "
        f"validation split) whose request of {settings.slo_items} items ({settings.slo_items} "
        f"x its measured ms per pair) fits {share}the service's SLO of "
        f"{settings.slo_latency_ms:g} ms ({budget_ms(settings):g} ms); ties go to the cheaper"
    )


def choose_default(points: Sequence[Point], settings: FrontierConfig) -> Point | None:
    """The rule of :func:`rule_text`; None when no student fits the budget."""
    budget = budget_ms(settings)
    eligible = [
        p
        for p in points
        if p.kind == "student"
        and p.ms_per_pair is not None
        and p.validation_pairwise_accuracy is not None
        and p.ms_per_pair * settings.slo_items <= budget
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda p: (p.validation_pairwise_accuracy, -(p.ms_per_pair or 0.0)))


def frontier_records(config: TrainConfig, dataset: Dataset) -> list[dict[str, Any]]:
    """The servable cross-encoder runs on the frontier (``frontier.runs``, else all of
    :func:`~training.evaluation.student_results.evaluated_runs`).

    Left out: representation students (another cost model), committee students (their
    labels are the old students' own) and runs recorded with term matching (removed; the
    serving path never computed its marks, so they have no served variant to time).
    """
    records = [
        r
        for r in results.evaluated_runs(config, dataset)
        if not r.get("architecture")
        and r.get("labels_from") != "committee"
        and not r["config"]["student"].get("term_matching")
    ]
    wanted = config.frontier.runs
    if not wanted:
        return records
    by_name = {r["name"]: r for r in records}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise PipelineError(f"frontier.runs names runs that are not trained: {missing}")
    return [by_name[name] for name in wanted]


def encoder_layers(run_dir: Path) -> int | None:
    path = run_dir / "config.json"
    return json.loads(path.read_text()).get("num_hidden_layers") if path.is_file() else None


def _accuracy(frame: pd.DataFrame, scores: np.ndarray) -> float | None:
    """Pairwise accuracy over the whole queries that have scores (None when none)."""
    scores = np.asarray(scores, dtype=np.float64)
    covered = (
        pd.Series(~np.isnan(scores), index=frame.index)
        .groupby(frame["query_key"])
        .transform("all")
        .to_numpy()
    )
    if not covered.any():
        return None
    part = frame[covered]
    return pairwise_accuracy(part["query_key"], part["grade"], scores[covered])


def cost_sample(config: TrainConfig, dataset: Dataset) -> pd.DataFrame:
    """The validation pairs every system is timed on (the small stage's sample)."""
    validation = dataset.splits["validation"]
    n = min(config.small.cost_pairs, len(validation))
    return validation.sample(n=n, random_state=config.split.seed)


def student_points(config: TrainConfig, dataset: Dataset, records: list[dict]) -> list[Point]:
    """Every run exported, timed (served variant) and scored on validation and test; a
    run whose stored result measured this set is read back instead (no weights needed)."""
    if not records:
        return []
    frontier_set = results.frontier_set(config, dataset, cost_sample(config, dataset))
    measured: dict[str, tuple[dict[str, Any], str]] = {}
    todo = []
    for record in records:
        entry = results.stored_entry(config, record)
        part = results.usable(entry, "frontier", frontier_set)
        if part is not None and entry is not None:
            measured[record["name"]] = part, results.stored_note(entry, part)
        elif results.weights_present(config, record):
            todo.append(record)
        else:
            logger.warning(
                "%s: no weights here and no stored frontier result of this set; left off",
                record["name"],
            )
    for record, fields in zip(todo, _measure(config, dataset, todo), strict=True):
        measured[record["name"]] = results.store_frontier(config, record, frontier_set, fields), ""
    return [
        _student_point(record, *measured[record["name"]])
        for record in records
        if record["name"] in measured
    ]


def _measure(config: TrainConfig, dataset: Dataset, records: list[dict]) -> list[dict[str, Any]]:
    """Export and time ``records``' runs (served variant), and score validation and test."""
    from training.evaluation.baselines import PackageScorer
    from training.small import measure_costs

    if not records:
        return []
    costs = measure_costs(config, dataset, [r["name"] for r in records])
    out = []
    for record in records:
        cost = costs[record["name"]]
        scorer = PackageScorer(
            Path(cost["package"]),
            cost["threads"],
            config.evaluate.batch_size,
            variant=cost["variant"],
        )
        accuracy = {
            split: _accuracy(frame, scorer.score(frame["query"].tolist(), frame["title"].tolist()))
            for split, frame in dataset.splits.items()
            if split in ("validation", "test")
        }
        out.append(
            {
                "validation_pairwise_accuracy": accuracy["validation"],
                "test_pairwise_accuracy": accuracy["test"],
                "cost": cost,
                "layers": encoder_layers(students_dir(config) / record["name"]),
            }
        )
    return out


def _student_point(record: dict, measured: dict[str, Any], note: str = "") -> Point:
    name, cost, layers = record["name"], measured["cost"], measured["layers"]
    return Point(
        name=f"student: {name}",
        kind="student",
        test_pairwise_accuracy=measured["test_pairwise_accuracy"],
        validation_pairwise_accuracy=measured["validation_pairwise_accuracy"],
        ms_per_pair=cost["ms_per_pair"],
        layers=layers,
        run=name,
        fingerprint=record["fingerprint"],
        cost=f"ONNX {cost['variant']}, {cost['threads']} threads, {cost['pairs']} "
        f"validation pairs in batches of {cost['batch_size']}, fastest of "
        f"{cost['rounds']} rounds",
        notes=", ".join(
            part
            for part in (
                f"{layers} layers" if layers else "",
                f"{record['augment_pairs']:,} augmentation pairs"
                if record.get("augment_pairs")
                else "human labels only",
                f"labels: {record.get('labels_from') or 'teacher'}"
                if record.get("augment_pairs")
                else "",
                f"from {record['source_run']}" if record.get("source_run") else "",
                note,
            )
            if part
        ),
    )


def bm25_point(config: TrainConfig, dataset: Dataset, sample: pd.DataFrame) -> Point:
    from training.evaluation.baselines import BM25Scorer, latency_ms_per_pair

    bm25 = BM25Scorer(dataset.products)
    accuracy = {
        split: _accuracy(
            dataset.splits[split],
            bm25.score(
                dataset.splits[split]["query"].tolist(),
                dataset.splits[split]["product_id"].tolist(),
            ),
        )
        for split in ("validation", "test")
    }
    queries, ids = sample["query"].tolist(), sample["product_id"].tolist()
    ms = latency_ms_per_pair(
        lambda rows: bm25.score(queries[rows], ids[rows]), len(sample), config.evaluate.batch_size
    )
    return Point(
        "BM25",
        "baseline",
        accuracy["test"],
        accuracy["validation"],
        ms,
        cost="bm25s in Python, one thread; each query scores the whole catalogue, so a "
        "request of many items of one query costs less than this per pair",
    )


def teacher_point(config: TrainConfig, dataset: Dataset, sample: pd.DataFrame) -> Point | None:
    """The LLM teacher: accuracy from its cached labels, cost timed when its package is here."""
    from training.evaluation.systems import teacher_scores_for

    try:
        accuracy = {}
        for split in ("validation", "test"):
            scores = teacher_scores_for(
                dataset.splits[split], split_labels_path(config, dataset, split)
            )
            accuracy[split] = None if scores is None else _accuracy(dataset.splits[split], scores)
    except PipelineError:  # no teacher package: no labels either
        return None
    if accuracy["test"] is None:
        return None
    ms, cost = None, "not timed (no teacher package or frontier.teacher_pairs = 0)"
    pairs = min(config.frontier.teacher_pairs, len(sample))
    if pairs and (config.teacher_package_dir / "manifest.json").is_file():
        from relevance_core.teacher import load_teacher
        from training.teacher_bench import teacher_ms_per_pair

        threads = config.small.cost_threads
        teacher = load_teacher(
            config.teacher_package_dir, config.path("teacher_cache_dir"), threads
        )
        teacher.batch_size = config.label.batch_size
        ms = teacher_ms_per_pair(
            teacher, sample["query"].tolist()[:pairs], sample["title"].tolist()[:pairs], threads
        )
        cost = (
            f"PyTorch FP32, {threads} threads, {pairs} validation pairs in batches of "
            f"{config.label.batch_size} (training/teacher_bench.py's timing, best of 2)"
        )
    labeled = config.label.eval_queries
    return Point(
        "teacher (LLM)",
        "teacher",
        accuracy["test"],
        accuracy["validation"],
        ms,
        cost=cost,
        notes=f"on its labeled sample of {labeled} queries per split" if labeled else "",
    )


def ensemble_point(config: TrainConfig, dataset: Dataset, points: list[Point]) -> Point | None:
    record = read_ensemble_record(config, dataset)
    if record is None:
        return None
    rows = {row["system"]: row for row in record["table"]}
    by_kind = {p.run or p.kind: p for p in points}
    members = [by_kind.get("teacher"), by_kind.get(HUMAN_ONLY), by_kind.get("baseline")]
    known = all(m is not None and m.ms_per_pair is not None for m in members)
    return Point(
        "teacher ensemble (LLM + human-only + BM25)",
        "ensemble",
        rows["ensemble"]["test"],
        rows["ensemble"]["validation"],
        sum(m.ms_per_pair for m in members) if known else None,  # type: ignore[misc]
        cost="sum of its members' costs",
        notes="validation is where its weights were fit (in-sample)",
    )


def build_frontier(config: TrainConfig, dataset: Dataset) -> dict[str, Any]:
    """Every point, the rule's choice (written to ``paths.default_choice``) and the rule."""
    settings = config.frontier
    records = frontier_records(config, dataset)
    sample = cost_sample(config, dataset)
    points = [bm25_point(config, dataset, sample), *student_points(config, dataset, records)]
    teacher = teacher_point(config, dataset, sample)
    if teacher is not None:
        points.append(teacher)
    ensemble = ensemble_point(config, dataset, points)
    if ensemble is not None:
        points.append(ensemble)
    choice = choose_default(points, settings)
    if choice is not None:
        # Every reported run, so a smaller student's source is there without its weights.
        runs = results.evaluated_runs(config, dataset)
        write_choice(config, choice, {r["name"]: r for r in runs})
    else:
        logger.warning("no student fits the frontier's budget; no default choice written")
    return {
        "rule": rule_text(settings),
        "budget_ms": budget_ms(settings),
        "slo_items": settings.slo_items,
        "small_max_layers": SMALL_MAX_LAYERS,
        "choice": choice.run if choice else None,
        "points": [asdict(p) for p in points],
    }


def write_choice(config: TrainConfig, choice: Point, records: dict[str, dict]) -> Path:
    """``models/default-choice.json``: the chosen run and each run it is trained from.

    ``chain`` lists, dependencies first, what ``ensure-default`` retrains: a smaller
    student needs its source run.
    """
    record = records[choice.run]  # type: ignore[index]
    chain = []
    source = record.get("source_run")
    if source:
        source_record = records.get(source) or _read_record(config, source)
        chain.append(_link(source_record))
    chain.append(_link(record))
    settings = config.frontier
    data = {
        "run": choice.run,
        "fingerprint": choice.fingerprint,
        "rule": rule_text(settings),
        "validation_pairwise_accuracy": choice.validation_pairwise_accuracy,
        "test_pairwise_accuracy": choice.test_pairwise_accuracy,
        "ms_per_pair": choice.ms_per_pair,
        "request_ms": choice.request_ms(settings.slo_items),
        "budget_ms": budget_ms(settings),
        "chain": chain,
    }
    path = config.default_choice_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    logger.info("frontier choice %s -> %s", choice.run, path)
    return path


def _read_record(config: TrainConfig, name: str) -> dict[str, Any]:
    from training.artifacts import read_run

    record = read_run(students_dir(config) / name)
    if record is None:
        raise PipelineError(f"{name}, the source of the frontier's choice, is not trained")
    return record


def _link(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "fingerprint", "augment_pairs", "labels_from", "source_run", "layers")
    return {**{k: record.get(k) for k in keys}, "config": record["config"]}


def read_choice(config: TrainConfig) -> dict[str, Any] | None:
    path = config.default_choice_path
    return json.loads(path.read_text()) if path.is_file() else None


def plot_frontier(frontier: dict[str, Any], split: str, path: Path) -> Path:
    """Test pairwise accuracy against ms per pair (log scale), the choice starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"baseline": "tab:gray", "student": "tab:blue", "teacher": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=120)
    for point in frontier["points"]:
        if point["ms_per_pair"] is None or point["test_pairwise_accuracy"] is None:
            continue
        chosen = point["run"] is not None and point["run"] == frontier["choice"]
        small = point["kind"] == "student" and (point["layers"] or 99) <= SMALL_MAX_LAYERS
        ax.scatter(
            point["ms_per_pair"],
            point["test_pairwise_accuracy"],
            color=colours.get(point["kind"], "tab:green"),
            marker="*" if chosen else ("s" if small else "o"),
            s=160 if chosen else 40,
            zorder=3,
        )
        ax.annotate(
            point["name"].removeprefix("student: ") + (" (default)" if chosen else ""),
            (point["ms_per_pair"], point["test_pairwise_accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    per_pair_budget = frontier["budget_ms"] / frontier["slo_items"]
    ax.axvline(
        per_pair_budget,
        color="tab:orange",
        linestyle="--",
        label=f"SLO budget: {frontier['slo_items']} items in {frontier['budget_ms']:g} ms",
    )
    ax.set_xscale("log")
    ax.set_xlabel("measured ms per pair (students: ONNX served variant; log scale)")
    ax.set_ylabel(f"{split} pairwise accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
