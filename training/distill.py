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
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from relevance_core.teacher import resolve_precision
from training.artifacts import RUN_RECORD
from training.config import LossConfig, StudentConfig
from training.data import grade_to_score
from training.evaluation.metrics import pairwise_accuracy
from training.losses import HybridDistillationLoss
from training.seeding import seed_everything
from training.student import (
    build_student,
    encode_batch,
    predict_scores,
    query_grouped_batches,
    save_student,
)
from training.student_checkpoint import (
    checkpoint_key,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)

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


def _lr_scale(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _autocast(model: torch.nn.Module, precision: str) -> contextlib.AbstractContextManager:
    """BF16 autocast on the model's device, or nothing for FP32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


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
    rng = np.random.default_rng(student.seed)
    groups = train["group"].to_numpy()
    targets = torch.tensor(train["target"].to_numpy(), dtype=torch.float32)
    margin_column = "margin_target" if "margin_target" in train else "target"
    margin_targets = torch.tensor(train[margin_column].to_numpy(), dtype=torch.float32)
    queries, titles = train["query"].tolist(), train["title"].tolist()

    epoch_batches = query_grouped_batches(groups, student.batch_size, student.items_per_query, rng)
    total_steps = max(1, math.ceil(student.epochs * len(epoch_batches)))
    if student.max_steps is not None:
        total_steps = min(total_steps, student.max_steps)
    warmup = int(student.warmup_ratio * total_steps)

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

    def validate() -> float:
        scores = predict_scores(
            model,
            tokenizer,
            selection["query"].tolist(),
            selection["title"].tolist(),
            student.eval_batch_size,
        )
        return pairwise_accuracy(
            selection["query_key"].tolist(), selection["grade"].to_numpy(), scores
        )

    term_matching = bool(getattr(model.config, "term_matching", False))
    if selection.empty:
        logger.warning("no validation query with two grades: the final state is kept")

    def batch_stream() -> Iterator[np.ndarray]:
        yield from epoch_batches
        while True:  # fractional or multiple epochs: a fresh grouping per epoch
            yield from query_grouped_batches(
                groups, student.batch_size, student.items_per_query, rng
            )

    key = checkpoint_key((record or {}).get("fingerprint"), len(train), total_steps, student.seed)
    checkpoint_dir = checkpoint_dir or out_dir.with_name(out_dir.name + ".checkpoint")
    precision = resolve_precision(student.precision, next(model.parameters()).device)
    autocast = _autocast(model, precision)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"step": total_steps, "validation_pairwise_accuracy": None}
    best_state: dict[str, torch.Tensor] | None = None
    recent: list[tuple[float, float, float]] = []
    pairs_seen, start, spent_before = 0, 0, 0.0
    resumed = load_checkpoint(checkpoint_dir, key)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"])
        start, pairs_seen = resumed["step"], resumed["pairs_seen"]
        history, best, best_state = resumed["history"], resumed["best"], resumed["best_state"]
        recent, spent_before = resumed["recent"], resumed["train_seconds"]
        logger.info("student %s resumes at step %d/%d", out_dir.name, start, total_steps)
    started = time.monotonic()
    last_saved = started

    # Dropout draws from torch's RNG: the state saved is the one after the last finished
    # step, so an interrupt in mid-step (its forward pass already drew) resumes exactly.
    rng_after_done = torch.get_rng_state()

    def checkpoint(step: int) -> None:
        save_checkpoint(
            checkpoint_dir,
            key,
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "torch_rng": rng_after_done,
                "pairs_seen": pairs_seen,
                "history": history,
                "best": best,
                "best_state": best_state,
                "recent": recent,
                "train_seconds": spent_before + time.monotonic() - started,
            },
        )

    model.train()
    progress = tqdm(total=total_steps, initial=start, desc=f"student {out_dir.name}", unit="step")
    # The stream is a function of the seed: a resumed run replays it up to ``start``.
    stream = itertools.islice(batch_stream(), start, None)
    done = start
    try:
        for step, index in zip(range(start, total_steps), stream, strict=False):
            scale = _lr_scale(step, warmup, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = student.learning_rate * scale
            inputs = encode_batch(
                tokenizer, [queries[i] for i in index], [titles[i] for i in index], term_matching
            )
            with autocast:
                logits = model(**inputs).logits
            terms = loss_fn.terms(
                logits.float(), targets[index], torch.from_numpy(groups[index]),
                margin_targets[index],
            )  # fmt: skip
            loss = loss_fn.combine(terms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), student.max_grad_norm)
            optimizer.step()
            pairs_seen += len(index)
            recent = [
                *recent[-49:],
                (loss.item(), terms["pointwise"].item(), terms["margin"].item()),
            ]
            progress.update(1)
            done = step + 1
            rng_after_done = torch.get_rng_state()
            if done == total_steps or (
                not selection.empty and done % student.eval_every_steps == 0
            ):
                accuracy = validate() if not selection.empty else math.nan
                mean = np.mean(recent, axis=0)
                history.append(
                    {
                        "step": done,
                        "loss": float(mean[0]),
                        "pointwise": float(mean[1]),
                        "margin": float(mean[2]),
                        "validation_pairwise_accuracy": accuracy,
                        "elapsed_s": round(spent_before + time.monotonic() - started, 1),
                    }
                )
                previous = best["validation_pairwise_accuracy"]
                if not math.isnan(accuracy) and (previous is None or accuracy > previous):
                    best = {"step": done, "validation_pairwise_accuracy": accuracy}
                    # The final state needs no copy: it is what the model holds at the end.
                    best_state = None if done == total_steps else copy.deepcopy(model.state_dict())
                progress.set_postfix(loss=f"{mean[0]:.4f}", val_acc=f"{accuracy:.4f}")
            elif done % 10 == 0:
                progress.set_postfix(loss=f"{np.mean([r[0] for r in recent]):.4f}")
            if (
                done < total_steps
                and time.monotonic() - last_saved >= 60 * student.checkpoint_minutes
            ):
                checkpoint(done)
                last_saved = time.monotonic()
    except KeyboardInterrupt:
        if done > start:
            checkpoint(done)
            logger.warning(
                "student %s interrupted at step %d: checkpoint saved", out_dir.name, done
            )
        raise
    progress.close()
    elapsed = spent_before + time.monotonic() - started
    if best_state is not None:
        model.load_state_dict(best_state)

    result = {
        **(record or {}),
        "train_pairs": len(train),
        "train_pairs_by_source": train["source"].value_counts().to_dict(),
        "steps": total_steps,
        "steps_per_epoch": len(epoch_batches),
        "best_step": best["step"],
        "validation_pairwise_accuracy": best["validation_pairwise_accuracy"],
        "validation_selection": {
            "queries": int(selection["query_key"].nunique()),
            "pairs": len(selection),
        },
        "train_seconds": round(elapsed, 1),
        "pairs_seen": pairs_seen,
        # Includes the validation passes.
        "pairs_per_second": round(pairs_seen / max(1e-9, elapsed), 1),
        "history": history,
        "loss": loss_fn.get_config_dict(),
        "seed": student.seed,
        "precision": precision,
        "resumed_at_step": start if resumed is not None else None,
    }
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_student(model, student.backbone, tmp, student.max_length)
    (tmp / RUN_RECORD).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    remove_checkpoint(checkpoint_dir)
    logger.info(
        "student saved to %s (best step %d, validation pairwise accuracy %.4f)",
        out_dir,
        best["step"],
        best["validation_pairwise_accuracy"],
    )
    return result
