"""The one training loop of every student kind (cross-encoder, representation student).

:func:`fit` runs the query-grouped batch stream (a fresh grouping per epoch), AdamW's
linear warm-up and decay, the hybrid loss, gradient clipping, validation pairwise
accuracy every ``student.eval_every_steps`` and at the end with the best state kept,
BF16 autocast (``student.precision``) and resumable checkpoints
(:mod:`training.student_checkpoint`) every ``student.checkpoint_minutes`` and on
KeyboardInterrupt. :func:`save_run` then writes the run directory atomically.

What differs between kinds comes in as arguments: the ``batch -> logits`` function, the
optimiser (its parameter groups, each one's base learning rate), the validation scorer,
extra history fields and how the model is saved. A kind's own record fields are the
caller's: :func:`fit` returns the ones every kind writes.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from relevance_core.teacher import resolve_precision
from training.artifacts import RUN_RECORD
from training.config import StudentConfig
from training.evaluation.metrics import pairwise_accuracy
from training.losses import HybridDistillationLoss
from training.student import query_grouped_batches
from training.student_checkpoint import (
    checkpoint_key,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)

logger = logging.getLogger(__name__)

# Row indices of the training frame -> one logit per row (autocast applies inside).
BatchLogits = Callable[[np.ndarray], torch.Tensor]
# Validation (queries, titles) -> scores in [0, 1]; called with the model in eval mode.
ValidationScorer = Callable[[list[str], list[str]], np.ndarray]


def lr_scale(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def autocast(model: torch.nn.Module, precision: str) -> contextlib.AbstractContextManager:
    """BF16 autocast on the model's device, or nothing for FP32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16)


def default_checkpoint_dir(out_dir: Path) -> Path:
    """Where a run's resumable state lives while it trains: beside the run, not in it."""
    return out_dir.with_name(out_dir.name + ".checkpoint")


@dataclass(frozen=True)
class FitResult:
    """A finished fit: the record fields every kind writes, and its checkpoint's place."""

    fields: dict[str, Any]
    checkpoint_dir: Path


def fit(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train: pd.DataFrame,
    student: StudentConfig,
    loss_fn: HybridDistillationLoss,
    batch_logits: BatchLogits,
    *,
    selection: pd.DataFrame,
    score: ValidationScorer,
    out_dir: Path,
    kind: str,
    fingerprint: str | None,
    checkpoint_dir: Path | None = None,
    history_fields: Callable[[], dict[str, float]] | None = None,
) -> FitResult:
    """Fit ``model`` on ``train`` (``training_frame`` rows); leave it in its best state.

    Each optimiser group's base learning rate is the ``lr`` it was built with; the
    schedule scales all of them alike. ``selection`` (human-graded validation pairs) is
    scored by ``score`` for checkpoint selection; empty, the final state is kept.
    ``history_fields()`` adds values to each history entry (e.g. a head's scale).

    The run's state goes to ``checkpoint_dir`` (default ``<out_dir>.checkpoint``) every
    ``student.checkpoint_minutes`` and when interrupted (KeyboardInterrupt, which the
    command line raises on SIGTERM too); a call with the same rows, settings,
    ``fingerprint`` and ``kind`` resumes there and ends as the uninterrupted run would
    (same batches, same dropout draws).
    """
    rng = np.random.default_rng(student.seed)
    groups = train["group"].to_numpy()
    targets = torch.tensor(train["target"].to_numpy(), dtype=torch.float32)
    margin_column = "margin_target" if "margin_target" in train else "target"
    margin_targets = torch.tensor(train[margin_column].to_numpy(), dtype=torch.float32)

    epoch_batches = query_grouped_batches(groups, student.batch_size, student.items_per_query, rng)
    total_steps = max(1, math.ceil(student.epochs * len(epoch_batches)))
    if student.max_steps is not None:
        total_steps = min(total_steps, student.max_steps)
    warmup = int(student.warmup_ratio * total_steps)
    # Read before a checkpoint's optimiser state (whose lrs are mid-schedule) loads.
    base_lrs = [group["lr"] for group in optimizer.param_groups]

    def batch_stream() -> Iterator[np.ndarray]:
        yield from epoch_batches
        while True:  # fractional or multiple epochs: a fresh grouping per epoch
            yield from query_grouped_batches(
                groups, student.batch_size, student.items_per_query, rng
            )

    if selection.empty:
        logger.warning("no validation query with two grades: the final state is kept")

    def validate() -> float:
        model.eval()
        try:
            scores = score(selection["query"].tolist(), selection["title"].tolist())
        finally:
            model.train()
        return pairwise_accuracy(
            selection["query_key"].tolist(), selection["grade"].to_numpy(), scores
        )

    # The cross-encoder's keys predate other kinds: it keeps them, so its checkpoints of
    # before still resume; another kind's never resumes a cross-encoder's state.
    key = checkpoint_key(
        fingerprint, len(train), total_steps, student.seed, None if kind == "student" else kind
    )
    checkpoint_dir = checkpoint_dir or default_checkpoint_dir(out_dir)
    precision = resolve_precision(student.precision, next(model.parameters()).device)

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
        logger.info("%s %s resumes at step %d/%d", kind, out_dir.name, start, total_steps)
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
    progress = tqdm(total=total_steps, initial=start, desc=f"{kind} {out_dir.name}", unit="step")
    # The stream is a function of the seed: a resumed run replays it up to ``start``.
    stream = itertools.islice(batch_stream(), start, None)
    done = start
    try:
        for step, index in zip(range(start, total_steps), stream, strict=False):
            scale = lr_scale(step, warmup, total_steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * scale
            with autocast(model, precision):
                logits = batch_logits(index)
            # The loss in FP32 whatever the matrix products ran in.
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
                        **(history_fields() if history_fields is not None else {}),
                        "elapsed_s": round(spent_before + time.monotonic() - started, 1),
                    }
                )
                logger.info("%s %s: %s", kind, out_dir.name, history[-1])
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
                "%s %s interrupted at step %d: checkpoint saved", kind, out_dir.name, done
            )
        raise
    finally:
        progress.close()
    elapsed = spent_before + time.monotonic() - started
    if best_state is not None:
        model.load_state_dict(best_state)

    fields = {
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
        "precision": precision,
        "resumed_at_step": start if resumed is not None else None,
    }
    return FitResult(fields, checkpoint_dir)


def save_run(
    out_dir: Path,
    save_model: Callable[[Path], Any],
    record: dict[str, Any],
    checkpoint_dir: Path,
) -> None:
    """Write ``save_model(dir)``'s files and ``run.json`` = ``record`` as ``out_dir``.

    Atomic: everything goes to ``<out_dir>.tmp`` first, so ``run.json`` exists only for
    a finished run; the checkpoint is dropped once the run is in place.
    """
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(tmp)
    (tmp / RUN_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    remove_checkpoint(checkpoint_dir)
