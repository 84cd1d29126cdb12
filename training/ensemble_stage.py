"""The ``ensemble`` stage: the teacher ensemble fit on validation, its report and its labels.

Members (:data:`training.artifacts.ENSEMBLE_MEMBERS`): the LLM teacher (its cached labels
of the whole validation and test splits), the human-only student and BM25. The weights
and the isotonic map are fit on validation only (:func:`training.ensemble.fit_from_splits`);
so is the ensemble without the LLM, which says whether the LLM adds anything.

The rule (``ensemble.use``): with "auto" the ensemble becomes the teacher of the
augmentation labels when the LLM alone misses the human-only student + ``ensemble.margin``
in validation pairwise accuracy; then every LLM-labeled augmentation pair is labeled by
the ensemble (the LLM's part read from its label cache, the two cheap members scored
here). Writes ``labels/<ensemble id>/ensemble.json`` (weights, the member table, the
decision) and, when the ensemble is the teacher, ``labels/<ensemble id>/<data
version>.csv.gz``; both are committed, so ``ensure-default`` never needs the LLM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    ENSEMBLE_MEMBERS,
    HUMAN_ONLY,
    Dataset,
    PipelineError,
    augmentation_labels_path,
    ensemble_id,
    ensemble_labels_path,
    ensemble_record_path,
    load_augmentation,
    load_dataset,
    read_ensemble_record,
    read_run,
    split_labels_path,
    student_fingerprint,
    students_dir,
    with_scores,
)
from training.atomic import atomic_path
from training.config import TrainConfig
from training.ensemble import Ensemble, fit_from_splits
from training.evaluation.metrics import pairwise_accuracy
from training.label import read_labels

logger = logging.getLogger(__name__)

SPLITS = ("validation", "test")
LLM = ENSEMBLE_MEMBERS[0]
WITHOUT_LLM = tuple(m for m in ENSEMBLE_MEMBERS if m != LLM)


def llm_split_scores(config: TrainConfig, dataset: Dataset, split: str) -> np.ndarray:
    """The LLM's cached labels of a whole split, in row order; every pair must have one."""
    from training.evaluation.systems import teacher_scores_for

    frame = dataset.splits[split]
    path = split_labels_path(config, dataset, split)
    scores = teacher_scores_for(frame, path)
    missing = len(frame) if scores is None else int(np.isnan(scores).sum())
    if missing or config.label.eval_queries:
        raise PipelineError(
            f"the ensemble is fit and reported on whole splits: {path} lacks {missing} of the "
            f"{len(frame)} {split} pairs (label.eval_queries={config.label.eval_queries}); run "
            "`python -m training label --set label.eval_queries=0` with validation and test "
            "in label.splits"
        )
    assert scores is not None
    return scores


class CheapMembers:
    """The human-only student and BM25, which score any pairs in minutes on a CPU."""

    def __init__(self, config: TrainConfig, dataset: Dataset) -> None:
        from training.evaluation.baselines import BM25Scorer
        from training.student import load_student

        run_dir = students_dir(config) / HUMAN_ONLY
        record = read_run(run_dir)
        wanted = student_fingerprint(config, dataset, 0)
        if record is None or record.get("fingerprint") != wanted:
            raise PipelineError(
                f"the ensemble needs the human-only student of this config at {run_dir} "
                f"(fingerprint {wanted}); run `python -m training distill --size 0` first"
            )
        self.batch_size = config.ensemble.batch_size
        self.model, self.tokenizer = load_student(run_dir, config.student.max_length)
        self.bm25 = BM25Scorer(dataset.products)

    def score(self, pairs: pd.DataFrame) -> dict[str, np.ndarray]:
        """``human-only`` and ``bm25`` scores of ``pairs`` (query, title, product_id)."""
        from training.student import predict_scores

        queries, titles = pairs["query"].tolist(), pairs["title"].tolist()
        return {
            HUMAN_ONLY: predict_scores(
                self.model, self.tokenizer, queries, titles, self.batch_size
            ),
            "bm25": self.bm25.score(queries, pairs["product_id"].tolist()),
        }


def member_table(
    frames: Mapping[str, pd.DataFrame],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    full: Ensemble,
    without: Ensemble,
) -> list[dict[str, Any]]:
    """Pairwise accuracy of each member, the ensemble and the ensemble without the LLM."""
    rows = []
    systems = [(m, lambda s, m=m: s[m]) for m in ENSEMBLE_MEMBERS]
    systems += [("ensemble", full.score), ("ensemble without the LLM", without.score)]
    for name, score in systems:
        row: dict[str, Any] = {"system": name}
        for split, frame in frames.items():
            row[split] = pairwise_accuracy(frame["query_key"], frame["grade"], score(scores[split]))
        rows.append(row)
    return rows


def decide(table: list[dict[str, Any]], use: str, margin: float) -> dict[str, Any]:
    """Who labels the augmentation, by the configured rule, with the numbers behind it."""
    by_name = {row["system"]: row for row in table}
    llm, human = by_name[LLM]["validation"], by_name[HUMAN_ONLY]["validation"]
    llm_enough = llm >= human + margin
    if use == "auto":
        teacher = "llm" if llm_enough else "ensemble"
    else:
        teacher = "ensemble" if use == "ensemble" else "llm"
    gain = {s: by_name["ensemble"][s] - by_name["ensemble without the LLM"][s] for s in SPLITS}
    adds = all(g > 0 for g in gain.values())
    return {
        "use": use,
        "margin": margin,
        "teacher": teacher,
        "llm_validation": llm,
        "human_only_validation": human,
        "llm_alone_enough": llm_enough,
        "llm_gain": gain,
        "llm_adds": adds,
        "rule": (
            f"ensemble.use={use!r}: the ensemble labels the augmentation when the LLM alone "
            f"misses the human-only student + {margin} in validation pairwise accuracy"
            if use == "auto"
            else f"ensemble.use={use!r}"
        ),
    }


def verdict(record: Mapping[str, Any]) -> str:
    """The plain sentence the report prints: does the LLM add to the ensemble?"""
    d = record["decision"]
    weight = record["ensemble"]["weights"][LLM]
    gain_v, gain_t = d["llm_gain"]["validation"], d["llm_gain"]["test"]
    says = "adds" if d["llm_adds"] else "does not add"
    return (
        f"The LLM {says} to the ensemble: with it {gain_v:+.4f} validation and {gain_t:+.4f} "
        f"test pairwise accuracy over the human-only student and BM25 alone (LLM weight "
        f"{weight:.2f}). Alone it scores {d['llm_validation']:.4f} on validation against the "
        f"human-only student's {d['human_only_validation']:.4f} "
        f"({'meets' if d['llm_alone_enough'] else 'misses'} +{d['margin']}); the augmentation "
        f"labels are the {'ensemble' if d['teacher'] == 'ensemble' else 'LLM'}'s."
    )


def stage_ensemble(config: TrainConfig, force: bool = False) -> dict[str, Any]:
    """Fit the ensemble on validation, report it on validation and test, label by the rule."""
    import torch

    torch.set_num_threads(config.student.threads)
    dataset = load_dataset(config)
    eid = ensemble_id(config, dataset)
    record_path = ensemble_record_path(config, dataset)
    llm_labels = with_scores(
        load_augmentation(config, dataset), read_labels(augmentation_labels_path(config, dataset))
    )
    existing = None if force else read_ensemble_record(config, dataset)
    if existing is not None and (
        existing["decision"]["teacher"] == "llm"
        or existing.get("augmentation_pairs") == len(llm_labels)
    ):
        logger.info("ensemble %s is up to date; skipping", record_path)
        return existing
    cheap = CheapMembers(config, dataset)
    frames = {split: dataset.splits[split] for split in SPLITS}
    scores = {
        split: {LLM: llm_split_scores(config, dataset, split), **cheap.score(frames[split])}
        for split in SPLITS
    }
    step = config.ensemble.step
    full = fit_from_splits(frames, scores, members=ENSEMBLE_MEMBERS, step=step)
    without = fit_from_splits(frames, scores, members=WITHOUT_LLM, step=step)
    table = member_table(frames, scores, full, without)
    record: dict[str, Any] = {
        "id": eid,
        "members": list(ENSEMBLE_MEMBERS),
        "ensemble": full.to_dict(),
        "without_llm": without.to_dict(),
        "table": table,
        "decision": decide(table, config.ensemble.use, config.ensemble.margin),
        "fit": "weights, z-scoring and isotonic map on the whole validation split only",
    }
    record["verdict"] = verdict(record)
    logger.info("%s", record["verdict"])
    if record["decision"]["teacher"] == "ensemble":
        path = ensemble_labels_path(config, dataset)
        labels = label_augmentation(full, cheap, llm_labels)
        with atomic_path(path) as tmp:
            labels.to_csv(tmp, index=False, float_format="%.6f", compression="gzip")
        record["augmentation_pairs"] = len(labels)
        record["labels"] = path.name
        logger.info("ensemble labels of %d augmentation pairs -> %s", len(labels), path)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def label_augmentation(
    ensemble: Ensemble, cheap: CheapMembers, llm_labeled: pd.DataFrame, chunk: int = 4096
) -> pd.DataFrame:
    """The ensemble's labels of every LLM-labeled augmentation pair, with each member's score."""
    parts = []
    for start in range(0, len(llm_labeled), chunk):
        rows = llm_labeled.iloc[start : start + chunk]
        member = {LLM: rows["teacher_score"].to_numpy(dtype=np.float64), **cheap.score(rows)}
        part = rows.loc[:, ["query_key", "product_id"]].reset_index(drop=True)
        part["teacher_score"] = ensemble.score(member)
        for name in ENSEMBLE_MEMBERS:
            part[f"member:{name}"] = member[name]
        parts.append(part)
    columns = [
        "query_key",
        "product_id",
        "teacher_score",
        *(f"member:{m}" for m in ENSEMBLE_MEMBERS),
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
