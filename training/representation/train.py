"""Fit a representation student with the cross-encoder's loss, batches and schedule.

The same rows as :func:`training.distill.train_student` (``training_frame``: human pairs
with ``grade_to_score`` targets plus teacher-labeled pairs, grouped by (query, source)),
the same query-grouped batches, the same hybrid loss on ``scale * similarity + bias``,
AdamW with linear warm-up and decay, validation pairwise accuracy every
``eval_every_steps`` with the best state kept, BF16 autocast and resumable checkpoints:
the one loop of :func:`training.fit_loop.fit`. Per batch each distinct query and each
distinct item is encoded once. The head's ``scale`` and ``bias`` get their own, larger
step (``representation.head_learning_rate``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from training.config import LossConfig, RepresentationConfig, StudentConfig
from training.distill import selection_subset
from training.fit_loop import fit, save_run
from training.losses import HybridDistillationLoss
from training.representation.model import (
    RepresentationStudent,
    build_representation,
    encode_texts,
    save_representation,
)
from training.representation.scoring import PairScorer, torch_encoder
from training.seeding import seed_everything

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
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Fit on ``train`` (see :func:`training.distill.training_frame`), save the best state.

    Writes ``out_dir`` (encoder, tokenizer files, head, ``run.json``) atomically, and
    checkpoints and resumes (``checkpoint_dir``, default ``<out_dir>.checkpoint``), as
    :func:`training.distill.train_student` does. Returns the run record.
    """
    seed_everything(student.seed)
    torch.set_num_threads(student.threads)
    model, query_tokenizer, item_tokenizer = build_representation(student, settings)
    loss_fn = HybridDistillationLoss(loss_config.pointwise_weight, loss_config.margin_weight)
    queries, titles = train["query"].tolist(), train["title"].tolist()

    def logits(index: np.ndarray) -> torch.Tensor:
        return batch_logits(
            model,
            query_tokenizer,
            item_tokenizer,
            [queries[i] for i in index],
            [titles[i] for i in index],
        )

    no_decay = ("bias", "LayerNorm.weight")
    head = {id(p) for p in model.head_parameters()}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in head]
    # Each group's lr is its base rate; the loop's schedule scales them alike.
    params = [
        {
            "params": [p for n, p in named if not n.endswith(no_decay)],
            "weight_decay": student.weight_decay,
            "lr": student.learning_rate,
        },
        {
            "params": [p for n, p in named if n.endswith(no_decay)],
            "weight_decay": 0.0,
            "lr": student.learning_rate,
        },
        {
            "params": model.head_parameters(),
            "weight_decay": 0.0,
            "lr": settings.head_learning_rate,
        },
    ]
    optimizer = torch.optim.AdamW(params, lr=student.learning_rate)
    selection = selection_subset(validation, student.validation_queries, student.seed)

    def validation_scores(queries: list[str], items: list[str]) -> np.ndarray:
        # A fresh scorer each time: it holds the head's scale and bias as they are now.
        return scorer(model, query_tokenizer, item_tokenizer, student.eval_batch_size).score(
            queries, items
        )

    def head_now() -> dict[str, float]:
        return {"scale": float(model.scale.detach()), "bias": float(model.bias.detach())}

    fitted = fit(
        model, optimizer, train, student, loss_fn, logits,
        selection=selection, score=validation_scores, history_fields=head_now,
        out_dir=out_dir, kind="representation", fingerprint=(record or {}).get("fingerprint"),
        checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    model.eval()

    result = {
        **(record or {}),
        "architecture": settings.architecture,
        "head": model.head_spec().to_dict(),
        **fitted.fields,
    }
    save_run(
        out_dir,
        lambda tmp: save_representation(model, student.backbone, tmp),
        result,
        fitted.checkpoint_dir,
    )
    logger.info(
        "representation student saved to %s (best step %d, validation pairwise accuracy %s)",
        out_dir,
        result["best_step"],
        result["validation_pairwise_accuracy"],
    )
    return result
