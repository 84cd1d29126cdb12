"""Fit a representation student with the cross-encoder's loss, batches and schedule.

The same rows as :func:`training.distill.train_student` (``training_frame``: human pairs
with ``grade_to_score`` targets plus teacher-labeled pairs, grouped by (query, source)),
the same query-grouped batches, the same hybrid loss on ``scale * similarity + bias``,
AdamW with linear warm-up and decay, validation pairwise accuracy every
``eval_every_steps`` with the best state kept. Per batch each distinct query and each
distinct item is encoded once. The head's ``scale`` and ``bias`` get their own, larger
step (``representation.head_learning_rate``).
"""

from __future__ import annotations

import copy
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

from training.artifacts import RUN_RECORD
from training.config import LossConfig, RepresentationConfig, StudentConfig
from training.distill import _lr_scale, selection_subset
from training.evaluation.metrics import pairwise_accuracy
from training.losses import HybridDistillationLoss
from training.representation.model import (
    RepresentationStudent,
    build_representation,
    encode_texts,
    save_representation,
)
from training.representation.scoring import PairScorer, torch_encoder
from training.seeding import seed_everything
from training.student import query_grouped_batches

logger = logging.getLogger(__name__)


def _tensors(tokenizer: Any, texts: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in encode_texts(tokenizer, texts).items()}


def batch_logits(
    model: RepresentationStudent,
    query_tokenizer: Any,
    item_tokenizer: Any,
    queries: list[str],
    items: list[str],
) -> torch.Tensor:
    """Logits of row-aligned pairs, each distinct query and item encoded once."""
    q_index, q_texts = pd.factorize(pd.Series(queries))
    d_index, d_texts = pd.factorize(pd.Series(items))
    q_inputs = _tensors(query_tokenizer, list(q_texts))
    d_inputs = _tensors(item_tokenizer, list(d_texts))
    q_vectors = model.encode(**q_inputs)
    d_vectors = model.encode(**d_inputs)
    qi, di = torch.from_numpy(q_index), torch.from_numpy(d_index)
    return model.logits(
        q_vectors[qi], q_inputs["attention_mask"][qi], d_vectors[di], d_inputs["attention_mask"][di]
    )


def scorer(
    model: RepresentationStudent, query_tokenizer: Any, item_tokenizer: Any, batch_size: int
) -> PairScorer:
    """The PyTorch student as a :class:`PairScorer` (FP32 vectors, no storage cast)."""
    return PairScorer(
        model.head_spec(), torch_encoder(model), query_tokenizer, item_tokenizer, batch_size
    )


def train_representation(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    student: StudentConfig,
    loss_config: LossConfig,
    out_dir: Path,
    record: dict[str, Any] | None = None,
    *,
    settings: RepresentationConfig,
) -> dict[str, Any]:
    """Fit on ``train`` (see :func:`training.distill.training_frame`), save the best state.

    Writes ``out_dir`` (encoder, tokenizer files, head, ``run.json``) atomically, as
    :func:`training.distill.train_student` does. Returns the run record.
    """
    seed_everything(student.seed)
    torch.set_num_threads(student.threads)
    model, query_tokenizer, item_tokenizer = build_representation(student, settings)
    loss_fn = HybridDistillationLoss(loss_config.pointwise_weight, loss_config.margin_weight)
    rng = np.random.default_rng(student.seed)
    groups = train["group"].to_numpy()
    targets = torch.tensor(train["target"].to_numpy(), dtype=torch.float32)
    queries, titles = train["query"].tolist(), train["title"].tolist()

    epoch_batches = query_grouped_batches(groups, student.batch_size, student.items_per_query, rng)
    total_steps = max(1, math.ceil(student.epochs * len(epoch_batches)))
    if student.max_steps is not None:
        total_steps = min(total_steps, student.max_steps)
    warmup = int(student.warmup_ratio * total_steps)

    no_decay = ("bias", "LayerNorm.weight")
    head = {id(p) for p in model.head_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in head]
    params = [
        {
            "params": [p for n, p in named if not n.endswith(no_decay)],
            "weight_decay": student.weight_decay,
            "base_lr": student.learning_rate,
        },
        {
            "params": [p for n, p in named if n.endswith(no_decay)],
            "weight_decay": 0.0,
            "base_lr": student.learning_rate,
        },
        {
            "params": model.head_parameters(),
            "weight_decay": 0.0,
            "base_lr": settings.head_learning_rate,
        },
    ]
    optimizer = torch.optim.AdamW(params, lr=student.learning_rate)
    selection = selection_subset(validation, student.validation_queries, student.seed)

    def validate() -> float:
        model.eval()
        scores = scorer(model, query_tokenizer, item_tokenizer, student.eval_batch_size).score(
            selection["query"].tolist(), selection["title"].tolist()
        )
        model.train()
        return pairwise_accuracy(
            selection["query_key"].tolist(), selection["grade"].to_numpy(), scores
        )

    if selection.empty:
        logger.warning("no validation query with two grades: the final state is kept")

    def batch_stream() -> Iterator[np.ndarray]:
        yield from epoch_batches
        while True:
            yield from query_grouped_batches(
                groups, student.batch_size, student.items_per_query, rng
            )

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"step": total_steps, "validation_pairwise_accuracy": None}
    best_state: dict[str, torch.Tensor] | None = None
    recent: list[tuple[float, float, float]] = []
    started = time.monotonic()
    pairs_seen = 0
    model.train()
    progress = tqdm(total=total_steps, desc=f"representation {out_dir.name}", unit="step")
    for step, index in zip(range(total_steps), batch_stream(), strict=False):
        pairs_seen += len(index)
        scale = _lr_scale(step, warmup, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        logits = batch_logits(
            model,
            query_tokenizer,
            item_tokenizer,
            [queries[i] for i in index],
            [titles[i] for i in index],
        )
        terms = loss_fn.terms(logits, targets[index], torch.from_numpy(groups[index]))
        loss = loss_fn.combine(terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), student.max_grad_norm)
        optimizer.step()
        recent = [*recent[-49:], (loss.item(), terms["pointwise"].item(), terms["margin"].item())]
        progress.update(1)
        done = step + 1
        if done == total_steps or (not selection.empty and done % student.eval_every_steps == 0):
            accuracy = validate() if not selection.empty else math.nan
            mean = np.mean(recent, axis=0)
            history.append(
                {
                    "step": done,
                    "loss": float(mean[0]),
                    "pointwise": float(mean[1]),
                    "margin": float(mean[2]),
                    "validation_pairwise_accuracy": accuracy,
                    "scale": float(model.scale.detach()),
                    "bias": float(model.bias.detach()),
                    "elapsed_s": round(time.monotonic() - started, 1),
                }
            )
            logger.info("representation %s: %s", out_dir.name, history[-1])
            previous = best["validation_pairwise_accuracy"]
            if not math.isnan(accuracy) and (previous is None or accuracy > previous):
                best = {"step": done, "validation_pairwise_accuracy": accuracy}
                best_state = None if done == total_steps else copy.deepcopy(model.state_dict())
            progress.set_postfix(loss=f"{mean[0]:.4f}", val_acc=f"{accuracy:.4f}")
        elif done % 10 == 0:
            progress.set_postfix(loss=f"{np.mean([r[0] for r in recent]):.4f}")
    progress.close()
    elapsed = time.monotonic() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()

    result = {
        **(record or {}),
        "architecture": settings.architecture,
        "head": model.head_spec().to_dict(),
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
        "pairs_per_second": round(pairs_seen / max(1e-9, elapsed), 1),
        "history": history,
        "loss": loss_fn.get_config_dict(),
    }
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_representation(model, student.backbone, tmp)
    (tmp / RUN_RECORD).write_text(json.dumps(result, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    logger.info(
        "representation student saved to %s (best step %d, validation pairwise accuracy %s)",
        out_dir,
        best["step"],
        best["validation_pairwise_accuracy"],
    )
    return result
