"""The cascade's quality: the representation package ranks a list, the cross-encoder its head.

Home Depot queries have about six judged items each, so a cascade that re-scores the best
20 of a query's *judged* items is the cross-encoder alone. A ranking stack sends longer
lists: here each split query's judged items are padded to ``evaluate.cascade_candidates``
(100) with catalogue products never judged for it, drawn from one shared pool (so the
item side is encoded once, as a served store would). The representation package scores
every item of a list; for each k of ``evaluate.cascade_top_k`` the served cross-encoder
re-scores the best k and :func:`service.representation_engine.combine_cascade` joins the
two as the service does. Reported per system: pairwise accuracy on the judged pairs (the
evaluation's metric; the padding has no grade), the share of judged items that reached
the head, and NDCG@10 of the whole list with the padding as irrelevant.

``python -m training cascade --config FILE`` writes ``results/cascade/<package>-<version>
-<split>.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import load_dataset
from training.config import TrainConfig
from training.evaluation.metrics import ndcg_at, pairwise_accuracy

logger = logging.getLogger(__name__)

Score = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def candidate_lists(
    split: pd.DataFrame, catalogue: pd.DataFrame, candidates: int, pool_size: int, seed: int
) -> pd.DataFrame:
    """Each query's judged rows, then never-judged pool products up to ``candidates`` rows.

    Columns of ``split`` plus ``judged``; padding rows have ``grade`` NaN. Deterministic for
    a seed. A query with ``candidates`` or more judged items keeps them all, unpadded.
    """
    rng = np.random.default_rng(seed)
    pool = catalogue.iloc[rng.choice(len(catalogue), size=min(pool_size, len(catalogue)),
                                     replace=False)]  # fmt: skip
    pool_ids, pool_titles = pool["product_id"].to_numpy(), pool["title"].to_numpy()
    frames = []
    for key, judged in split.groupby("query_key", sort=True):
        taken = set(judged["product_id"])
        free = [j for j in rng.permutation(len(pool_ids)) if pool_ids[j] not in taken]
        need = max(0, candidates - len(judged))
        if need > len(free):
            raise ValueError(
                f"cascade_pool: {len(pool_ids)} products cannot pad query {key!r} to "
                f"{candidates} items"
            )
        picks = free[:need]
        padding = pd.DataFrame(
            {
                "query": judged["query"].iloc[0],
                "query_key": key,
                "product_id": pool_ids[picks],
                "title": pool_titles[picks],
                "grade": np.nan,
            }
        )
        frames.append(judged.assign(judged=True))
        frames.append(padding.assign(judged=False))
    return pd.concat(frames, ignore_index=True)


def _ranked(frame: pd.DataFrame, student: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: its row numbers, and their positions in the student's order (best first).

    Every head of any k is a prefix of that order, so one ranking serves them all.
    """
    out = []
    for rows in frame.groupby("query_key", sort=True).indices.values():
        rows = np.asarray(rows)
        out.append((rows, np.argsort(-student[rows], kind="stable")))
    return out


def heads(frame: pd.DataFrame, student: np.ndarray, k: int) -> list[np.ndarray]:
    """Per query, the row numbers of its ``k`` best items by the student (best first)."""
    return [rows[order[:k]] for rows, order in _ranked(frame, student)]


def _combined(
    ranked: list[tuple[np.ndarray, np.ndarray]], student: np.ndarray, cross: np.ndarray, k: int
) -> np.ndarray:
    from service.representation_engine import combine_cascade

    out = np.empty(len(student), dtype=np.float64)
    for rows, order in ranked:
        head = order[:k]
        out[rows] = combine_cascade(student[rows], head.tolist(), cross[rows[head]])
    return out


def cascade_scores(
    frame: pd.DataFrame, student: np.ndarray, cross: np.ndarray, k: int
) -> np.ndarray:
    """Scores of every row once the best ``k`` of each query are re-scored by the cross-encoder.

    ``cross`` needs values only on those head rows (NaN elsewhere is fine).
    """
    return _combined(_ranked(frame, student), student, cross, k)


def _metrics(frame: pd.DataFrame, scores: np.ndarray) -> dict[str, Any]:
    judged = frame["judged"].to_numpy()
    part = frame[judged]
    return {
        "pairwise_accuracy": pairwise_accuracy(part["query_key"], part["grade"], scores[judged]),
        # The padding counts as irrelevant (grade 1, gain 0): ranking it high costs NDCG.
        "ndcg@10": ndcg_at(
            frame["query_key"],
            frame["product_id"],
            frame["grade"].fillna(1.0),
            scores,
            ks=(10,),
        )["ndcg@10"],
    }


def evaluate_cascade(
    frame: pd.DataFrame, student: Score, cross: Score, ks: Sequence[int]
) -> dict[str, Any]:
    """Rows for the student alone, each cascade k and the cross-encoder on the judged items.

    The cross-encoder scores the judged rows (its own pairwise accuracy) and the union of
    the largest k's heads; smaller heads are a prefix of the largest, so one pass serves all.
    """
    queries, titles = frame["query"].tolist(), frame["title"].tolist()
    began = time.monotonic()
    s = np.asarray(student(queries, titles), dtype=np.float64)
    student_s = time.monotonic() - began
    judged = frame["judged"].to_numpy()
    ranked = _ranked(frame, s)
    needed = judged.copy()
    k_max = max(ks) if ks else 0
    for group, order in ranked:
        needed[group[order[:k_max]]] = True
    rows = np.flatnonzero(needed)
    began = time.monotonic()
    c = np.full(len(frame), np.nan)
    c[rows] = cross([queries[i] for i in rows], [titles[i] for i in rows])
    cross_s = time.monotonic() - began

    systems = [{"system": "representation alone", "k": 0, **_metrics(frame, s)}]
    judged_total = int(judged.sum())
    for k in sorted(ks):
        combined = _combined(ranked, s, c, k)
        in_head = sum(int(judged[group[order[:k]]].sum()) for group, order in ranked)
        systems.append(
            {
                "system": f"cascade top {k}",
                "k": k,
                **_metrics(frame, combined),
                "judged_in_head": in_head / judged_total,
            }
        )
    part = frame[judged]
    systems.append(
        {
            "system": "cross-encoder alone (judged items)",
            "k": None,
            "pairwise_accuracy": pairwise_accuracy(part["query_key"], part["grade"], c[judged]),
            "ndcg@10": None,  # it did not score the padding
        }
    )
    return {
        "lists": int(frame["query_key"].nunique()),
        "rows": len(frame),
        "judged_rows": judged_total,
        "distinct_titles": int(frame["title"].nunique()),
        "student_seconds": round(student_s, 1),
        "cross_encoder_pairs": len(rows),
        "cross_encoder_seconds": round(cross_s, 1),
        "systems": systems,
    }


def table(result: dict[str, Any]) -> str:
    """The result as a markdown table."""
    lines = [
        "| system | pairwise acc. (judged pairs) | Δ vs cross-encoder | NDCG@10 (100-item list) "
        "| judged items in the head |",
        "|---|---:|---:|---:|---:|",
    ]
    cross = result["systems"][-1]["pairwise_accuracy"]
    for row in result["systems"]:
        ndcg = "–" if row.get("ndcg@10") is None else f"{row['ndcg@10']:.4f}"
        head = row.get("judged_in_head")
        lines.append(
            f"| {row['system']} | {row['pairwise_accuracy']:.4f} | "
            f"{row['pairwise_accuracy'] - cross:+.4f} | {ndcg} | "
            f"{'–' if head is None else f'{head:.1%}'} |"
        )
    return "\n".join(lines)


SECTION = "## Cascade: the representation package's best k re-scored by the cross-encoder"


def report_lines(result: dict[str, Any] | None) -> list[str]:
    """The report's cascade section (nothing when no cascade was evaluated)."""
    if not result:
        return []
    rep, cross = result["representation_package"], result["cross_encoder"]
    return [
        "",
        SECTION,
        "",
        f"Each of the {result['lists']:,} {result['split']} queries' judged items, padded to "
        f"{result['candidates']} with products never judged for it (a shared pool of "
        f"{result['pool']:,}, seed {result['seed']}): {result['rows']:,} rows, "
        f"{result['judged_rows']:,} judged. {rep['name']} {rep['version']} (ONNX "
        f"{rep['variant']}) ranks every list; {cross['name']} {cross['version']} (ONNX "
        f"{cross['variant']}) re-scores the best k, joined as the service joins them "
        "(`service.representation_engine.combine_cascade`). Pairwise accuracy is over the "
        "judged pairs; NDCG@10 over the whole list, the padding counted irrelevant. From "
        f"`{result['command']}`; latency of the same cascade on 100 items: "
        "docs/benchmarks.md.",
        "",
        table(result),
    ]


def stored_result(config: TrainConfig) -> dict[str, Any] | None:
    """The stored cascade result of the configured representation package, if any."""
    from training.onnx_export.representation_manifest import read_representation_manifest

    try:
        manifest = read_representation_manifest(
            config.path("models_dir") / config.export.representation_package
        )
    except (OSError, ValueError):
        return None
    path = config.path("cascade_results") / (
        f"{manifest.name}-{manifest.version}-{config.evaluate.split}.json"
    )
    return json.loads(path.read_text()) if path.is_file() else None


def update_report(config: TrainConfig, result: dict[str, Any]) -> Path | None:
    """Put the cascade section into the split's evaluation report (when it exists)."""
    split = result["split"]
    stem = "evaluation" if split == "test" else f"evaluation-{split}"
    path = config.path("docs_dir") / f"{stem}.md"
    if not path.is_file():
        return None
    text = path.read_text()
    section = "\n".join(report_lines(result)[1:]) + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    elif "\n## Findings" in text:
        at = text.index("\n## Findings")
        text = text[: at + 1] + section + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    return path


def stage_cascade(config: TrainConfig, command: str | None = None) -> dict[str, Any]:
    """Evaluate the cascade of the representation package into the served package."""
    from training.evaluation.baselines import PackageScorer
    from training.onnx_export.representation import package_scorer
    from training.onnx_export.representation_manifest import read_representation_manifest

    settings = config.evaluate
    dataset = load_dataset(config)
    split = dataset.splits[settings.split]
    frame = candidate_lists(
        split,
        dataset.products,
        settings.cascade_candidates,
        settings.cascade_pool,
        settings.cascade_seed,
    )
    rep_dir = config.path("models_dir") / config.export.representation_package
    manifest = read_representation_manifest(rep_dir)
    variant = "int8" if "int8" in manifest.variants else "fp32"
    student = package_scorer(rep_dir, variant, settings.threads, batch_size=settings.batch_size)
    cross = PackageScorer(config.default_package_dir, settings.threads, settings.batch_size)
    logger.info(
        "cascade: %d lists, %d rows (%d judged), %d distinct titles",
        frame["query_key"].nunique(),
        len(frame),
        int(frame["judged"].sum()),
        frame["title"].nunique(),
    )
    result = evaluate_cascade(frame, student.score, cross.score, settings.cascade_top_k)
    result.update(
        {
            "split": settings.split,
            "candidates": settings.cascade_candidates,
            "pool": settings.cascade_pool,
            "seed": settings.cascade_seed,
            "representation_package": {
                "name": manifest.name,
                "version": manifest.version,
                "variant": variant,
            },
            "cross_encoder": {
                "name": cross.manifest.name,
                "version": cross.manifest.version,
                "variant": cross.scorer.variant,
            },
            "data_sha256": dataset.sha256,
            "command": command,
        }
    )
    out = (
        config.path("cascade_results") / f"{manifest.name}-{manifest.version}-{settings.split}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    logger.info("cascade results: %s; report: %s", out, update_report(config, result))
    return result


__all__ = [
    "candidate_lists",
    "cascade_scores",
    "evaluate_cascade",
    "report_lines",
    "stage_cascade",
    "stored_result",
    "table",
]
