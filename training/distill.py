"""Fit a student on human and teacher targets with the hybrid loss; keep the best checkpoint.

Training rows carry a pointwise target and a margin target in [0, 1] and a group id (see
:func:`training_frame`). By default human-labeled pairs use ``grade_to_score(grade)`` and
teacher-labeled augmentation pairs the teacher's score, and groups are (query, source), so
a margin is only ever taken between two human targets or between two teacher targets of
the same query, never across the two scales. With teacher scores of the human pairs too
(``loss.human_teacher_weight``, ``loss.margin_scale``) the human pairs' pointwise target
becomes the teacher's score or a blend, and the margins of a query span its human and its
augmentation pairs on the teacher's one scale (Hofstätter et al.'s margin-MSE; the hybrid
pointwise + margin-MSE of DisRanker, arXiv:2411.04539). :func:`with_assistant` blends a
second, smaller teacher's scores (a teacher assistant) into both targets.

The optimiser is AdamW with linear warm-up and decay. Validation pairwise accuracy is
measured every ``eval_every_steps`` and at the end; the best state is what gets saved.
The loop is :func:`training.fit_loop.fit`, the representation student's too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.config import LossConfig, StudentConfig
from training.data import grade_to_score
from training.fit_loop import fit, lr_scale, save_run
from training.losses import HybridDistillationLoss
from training.seeding import seed_everything
from training.student import build_student, encode_batch, predict_scores, save_student

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ("query", "query_key", "product_id", "title", "target", "source")


def uses_teacher_on_human_pairs(loss: LossConfig) -> bool:
    """Whether ``loss`` needs the teacher's scores of the human-labeled training pairs."""
    return loss.human_teacher_weight > 0 or loss.margin_scale == "teacher"


def training_frame(
    human: pd.DataFrame,
    teacher_labeled: pd.DataFrame | None = None,
    human_teacher_scores: np.ndarray | None = None,
    loss: LossConfig | None = None,
) -> pd.DataFrame:
    """Rows to fit: human pairs plus teacher-labeled pairs, with their targets and groups.

    ``teacher_labeled`` needs ``query``, ``query_key``, ``product_id``, ``title`` and
    ``teacher_score``; ``human_teacher_scores`` are the teacher's scores of ``human``'s
    rows (aligned), needed when ``loss`` uses them (:func:`uses_teacher_on_human_pairs`).
    Adds ``target`` (pointwise), ``margin_target`` and ``group``:

    - human rows: ``target = (1 - w) * grade_to_score(grade) + w * teacher score`` with
      ``w = loss.human_teacher_weight``; teacher rows: ``target = teacher_score``;
    - ``loss.margin_scale == "per_source"``: ``margin_target = target``, one group per
      (query, source); ``"teacher"``: ``margin_target`` is the teacher's score of every
      row, one group per query (human and augmentation items of a query pair up).
    """
    loss = loss or LossConfig()
    grades = grade_to_score(human["grade"].to_numpy(dtype=np.float64))
    teacher_on_human = uses_teacher_on_human_pairs(loss)
    if teacher_on_human:
        if human_teacher_scores is None:
            raise ValueError(
                "loss.human_teacher_weight > 0 or loss.margin_scale = 'teacher' needs the "
                "teacher's scores of the human training pairs"
            )
        human_scores = np.asarray(human_teacher_scores, dtype=np.float64)
        if human_scores.shape != grades.shape or np.isnan(human_scores).any():
            raise ValueError(
                f"need a teacher score for each of the {len(grades)} human training pairs, got "
                f"{int(np.isfinite(human_scores).sum())}"
            )
    else:
        human_scores = grades
    w = loss.human_teacher_weight
    parts = [
        human.assign(
            target=(1.0 - w) * grades + w * human_scores,
            teacher_target=human_scores,
            source="human",
        )
    ]
    if teacher_labeled is not None and len(teacher_labeled):
        score = teacher_labeled["teacher_score"].astype(np.float64)
        parts.append(teacher_labeled.assign(target=score, teacher_target=score, source="teacher"))
    columns = [*TRAINING_COLUMNS, "teacher_target"]
    frame = pd.concat([p.loc[:, columns] for p in parts], ignore_index=True)
    for column in ("target", "teacher_target"):
        if frame[column].isna().any() or not frame[column].between(0.0, 1.0).all():
            raise ValueError("training targets must lie in [0, 1]")
    if loss.margin_scale == "teacher":
        frame["margin_target"] = frame.pop("teacher_target")
        frame["group"] = pd.factorize(frame["query_key"])[0]
    else:
        frame = frame.drop(columns="teacher_target")
        frame["margin_target"] = frame["target"]
        frame["group"] = pd.factorize(frame["source"] + "\x1f" + frame["query_key"])[0]
    return frame


def with_assistant(frame: pd.DataFrame, scores: np.ndarray, weight: float) -> pd.DataFrame:
    """``frame`` with a teacher assistant's ``scores`` (aligned to its rows) blended in.

    Both targets become ``(1 - weight) * target + weight * score``. With MSE terms this is
    the weighted sum of a loss against the targets and one against the assistant, up to a
    constant: ``(1-w)(s-t)^2 + w(s-a)^2 = (s - ((1-w)t + wa))^2 + w(1-w)(t-a)^2``, and the
    same for margins; the gradient is that of the two-teacher loss.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(frame),) or not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError(f"need one assistant score in [0, 1] per row ({len(frame)})")
    return frame.assign(
        target=(1.0 - weight) * frame["target"] + weight * scores,
        margin_target=(1.0 - weight) * frame["margin_target"] + weight * scores,
    )


def selection_subset(validation: pd.DataFrame, max_queries: int | None, seed: int) -> pd.DataFrame:
    """Validation pairs for checkpoint selection: queries with two grades, a fixed sample."""
    graded = validation.groupby("query_key")["grade"].transform("nunique") > 1
    frame = validation[graded]
    keys = np.sort(frame["query_key"].unique())
    if max_queries is not None and len(keys) > max_queries:
        keys = np.random.default_rng(seed).choice(keys, size=max_queries, replace=False)
        frame = frame[frame["query_key"].isin(set(keys))]
    return frame.reset_index(drop=True)


# The schedule lives with the loop; under its old name here for the modules that import it.
_lr_scale = lr_scale


def train_student(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    student: StudentConfig,
    loss_config: LossConfig,
    out_dir: Path,
    record: dict[str, Any] | None = None,
    selection_seed: int | None = None,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Fit a student on ``train`` (see :func:`training_frame`) and save the best checkpoint.

    ``validation`` holds human-graded pairs (``query``, ``query_key``, ``title``,
    ``grade``); ``selection_seed`` draws its checkpoint-selection sample (default
    ``student.seed``; the stages pass the split's seed, so two seeds of one student are
    selected on the same queries). Writes ``out_dir`` (``save_pretrained`` files,
    tokenizer files and ``run.json`` = ``record`` plus the training history) atomically:
    ``run.json`` exists only for a finished run. Returns the run record.

    Every ``student.checkpoint_minutes``, and when interrupted (KeyboardInterrupt, which
    the command line raises on SIGTERM too), the run's state goes to ``checkpoint_dir``
    (default ``<out_dir>.checkpoint``); called again with the same rows and settings it
    resumes there and ends as the uninterrupted run would (same batches, same dropout).
    """
    seed_everything(student.seed)
    torch.set_num_threads(student.threads)
    model, tokenizer = build_student(student)
    loss_fn = HybridDistillationLoss(loss_config.pointwise_weight, loss_config.margin_weight)
    queries, titles = train["query"].tolist(), train["title"].tolist()

    def batch_logits(index: np.ndarray) -> torch.Tensor:
        inputs = encode_batch(tokenizer, [queries[i] for i in index], [titles[i] for i in index])
        return model(**inputs).logits

    no_decay = ("bias", "LayerNorm.weight")
    params = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": student.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(params, lr=student.learning_rate)
    selection = selection_subset(
        validation,
        student.validation_queries,
        student.seed if selection_seed is None else selection_seed,
    )
    fitted = fit(
        model, optimizer, train, student, loss_fn, batch_logits,
        selection=selection,
        score=lambda q, t: predict_scores(model, tokenizer, q, t, student.eval_batch_size),
        out_dir=out_dir, kind="student", fingerprint=(record or {}).get("fingerprint"),
        checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    result = {**(record or {}), **fitted.fields, "seed": student.seed}
    save_run(
        out_dir,
        lambda tmp: save_student(model, student.backbone, tmp, student.max_length),
        result,
        fitted.checkpoint_dir,
    )
    logger.info(
        "student saved to %s (best step %d, validation pairwise accuracy %.4f)",
        out_dir,
        result["best_step"],
        result["validation_pairwise_accuracy"],
    )
    return result
