"""Pair encoding shared by training and serving.

Training, export parity checks and the service all call :func:`encode_pairs`, so a
(query, item) pair is tokenized, truncated and padded one way everywhere. The
parameters that matter (``max_length``, truncation side) are recorded in the model
manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """Load a ``tokenizer.json`` set to truncate the item (second) text to ``max_length``."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    # Queries are short; when a pair is too long it is the item text that gets cut.
    tokenizer.enable_truncation(max_length=max_length, strategy="only_second")
    return tokenizer


def encode_pairs(
    tokenizer: Tokenizer, queries: Sequence[str], texts: Sequence[str]
) -> dict[str, np.ndarray]:
    """Tokenize (query, text) pairs and pad to the longest pair in the batch.

    Returns int64 arrays of shape ``(len(texts), longest)`` for each of
    :data:`MODEL_INPUT_NAMES`. Padding only to the longest pair, not to a fixed length,
    is what keeps CPU batches cheap.
    """
    return collate(tokenize_pairs(tokenizer, queries, texts))


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """One tokenized (query, text) pair, unpadded: what the service's batcher packs."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_pairs(
    tokenizer: Tokenizer, queries: Sequence[str], texts: Sequence[str]
) -> list[EncodedPair]:
    """Tokenize (query, text) pairs without padding; :func:`collate` pads them.

    The service tokenizes a request on its way in and pads later, once the batcher
    knows which pairs share a batch; ``encode_pairs`` is exactly ``collate`` of this.
    """
    if len(queries) != len(texts):
        raise ValueError(f"got {len(queries)} queries for {len(texts)} texts")
    if not texts:
        raise ValueError("encode_pairs needs at least one pair")
    encodings = tokenizer.encode_batch(list(zip(queries, texts, strict=True)))
    return [
        EncodedPair(
            input_ids=np.asarray(e.ids, dtype=np.int64),
            attention_mask=np.asarray(e.attention_mask, dtype=np.int64),
            token_type_ids=np.asarray(e.type_ids, dtype=np.int64),
            truncated=bool(e.overflowing),
        )
        for e in encodings
    ]


def collate(pairs: Sequence[EncodedPair]) -> dict[str, np.ndarray]:
    """Pad tokenized pairs to the longest one: int64 arrays keyed by input name."""
    if not pairs:
        raise ValueError("collate needs at least one pair")
    longest = max(len(p) for p in pairs)
    batch = {name: np.zeros((len(pairs), longest), dtype=np.int64) for name in MODEL_INPUT_NAMES}
    for row, pair in enumerate(pairs):
        n = len(pair)
        batch["input_ids"][row, :n] = pair.input_ids
        batch["attention_mask"][row, :n] = pair.attention_mask
        batch["token_type_ids"][row, :n] = pair.token_type_ids
    return batch


def pair_lengths(tokenizer: Tokenizer, queries: Sequence[str], texts: Sequence[str]) -> list[int]:
    """Token count of each pair after truncation (what the batcher packs by)."""
    return [len(e.ids) for e in tokenizer.encode_batch(list(zip(queries, texts, strict=True)))]
