"""Pair encoding shared by training and serving, and the service's truncation rules.

Training, export parity checks and the service all call :func:`encode_pairs` (or
:func:`tokenize_pairs` + :func:`collate`), so a (query, item) pair is tokenized, truncated
and padded one way everywhere. The parameters that matter (``max_length``, truncation
side) are recorded in the model manifest.

Every truncation decision the service makes is taken by :class:`PairEncoder`, in this
order: characters (:class:`TextLimits`, which bounds tokenizer work), the query's share
of the model's length, then the tokenizer's own cut of the text (``only_second``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.errors import InputTooLong
from service.model_package import ModelPackage

MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def load_tokenizer(path: str | Path, max_length: int, truncation: str = "only_second") -> Tokenizer:
    """Load a ``tokenizer.json`` set to truncate the item (second) text to ``max_length``."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    # Queries are short; when a pair is too long it is the item text that gets cut.
    tokenizer.enable_truncation(max_length=max_length, strategy=truncation)
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


@dataclass(frozen=True)
class TextLimits:
    """Character limits, applied before any tokenization (every backend's inputs)."""

    max_query_chars: int = 512
    max_text_chars: int = 8192

    def apply(
        self, query: str, texts: Sequence[str], truncate: bool
    ) -> tuple[str, list[str], np.ndarray]:
        """The query and texts cut to the limits, and which texts were cut.

        With ``truncate`` off, raises :class:`~service.errors.InputTooLong` instead.
        """
        if len(query) > self.max_query_chars:
            if not truncate:
                raise InputTooLong(
                    f"{len(query)} characters exceed the limit of {self.max_query_chars} "
                    "and truncate is false"
                )
            query = query[: self.max_query_chars]
        limit = self.max_text_chars
        out = list(texts)
        cut = np.zeros(len(out), dtype=bool)
        for i, text in enumerate(out):
            if len(text) > limit:
                if not truncate:
                    raise InputTooLong(
                        f"{len(text)} characters exceed the limit of {limit} and truncate is false",
                        index=i,
                    )
                out[i] = text[:limit]
                cut[i] = True
        return query, out, cut


class PairEncoder:
    """The service's tokenization path: limits, query fit, pair tokenization.

    Thread-safe for use from the tokenizer thread (``tokenizers`` encodes without shared
    mutable state once configured).
    """

    def __init__(
        self, tokenizer: Tokenizer, max_length: int, limits: TextLimits | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.limits = limits or TextLimits()
        # Queries are measured and cut untruncated; pairs are truncated on the text side.
        self._query_tokenizer = copy.deepcopy(tokenizer)
        self._query_tokenizer.no_truncation()
        # Half the model's length less [CLS] and [SEP]: every text keeps room.
        self.max_query_tokens = max(1, max_length // 2 - 2)

    @classmethod
    def for_package(cls, package: ModelPackage, limits: TextLimits | None = None) -> PairEncoder:
        """The encoder a package's manifest describes (tokenizer, length, truncation side)."""
        m = package.manifest
        tokenizer = load_tokenizer(package.tokenizer_path, m.max_length, m.truncation)
        return cls(tokenizer, m.max_length, limits)

    def fit_query(self, query: str, truncate: bool) -> str:
        """Keep the query within half the model's length so every text keeps room."""
        encoding = self._query_tokenizer.encode(query, add_special_tokens=False)
        if len(encoding.ids) <= self.max_query_tokens:
            return query
        if not truncate:
            raise InputTooLong(
                f"{len(encoding.ids)} tokens exceed the limit of {self.max_query_tokens} "
                "and truncate is false"
            )
        return query[: encoding.offsets[self.max_query_tokens - 1][1]]

    def encode(
        self, query: str, texts: Sequence[str], truncate: bool, offset: int = 0
    ) -> list[EncodedPair]:
        """Tokenize (fitted query, text) pairs; texts are ``offset ..`` of their request.

        With ``truncate`` off, a pair over ``max_length`` raises
        :class:`~service.errors.InputTooLong` naming its text's index in the request.
        """
        try:
            pairs = tokenize_pairs(self.tokenizer, [query] * len(texts), texts)
        except Exception as exc:  # tokenizers refuses when the text cannot absorb the cut
            raise InputTooLong(
                f"too long for the model's {self.max_length} tokens ({exc})"
            ) from exc
        if not truncate:
            for i, pair in enumerate(pairs):
                if pair.truncated:
                    raise InputTooLong(
                        f"query and text exceed the model's {self.max_length} tokens "
                        "and truncate is false",
                        index=offset + i,
                    )
        return pairs
