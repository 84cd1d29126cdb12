"""Score (query, item) pairs with a representation student: encode each side apart, interact.

One :class:`PairScorer` serves the PyTorch student (training's validation, the
evaluation) and the exported ONNX graphs (parity, the evaluation of a package): the
backend is an ``encode(side, batch) -> vectors`` callable; the interaction is the numpy
head of :mod:`training.representation.model`. Each distinct text is encoded once, so a
catalogue item's vectors can be kept (:meth:`PairScorer.encode_items`) and a request
then costs its query encoding plus the interaction (:meth:`PairScorer.score_encoded`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from relevance_core import representation as head
from relevance_core.activation import Calibration, activate
from training.representation import BI_ENCODER
from training.representation.model import (
    HeadSpec,
    encode_texts,
    logits_from_similarity,
    pool,
)

QUERY, ITEM = "query", "item"
# (side, encode_texts batch) -> stored vectors: (n, dim) or (n, L, dim) with padding zero.
EncodeSide = Callable[[str, dict[str, np.ndarray]], np.ndarray]
# Stored vectors of one text: (dim,) for a bi-encoder, (tokens, dim) for late interaction.
Vectors = np.ndarray


def torch_encoder(model: Any) -> EncodeSide:
    """``encode`` for a :class:`~training.representation.model.RepresentationStudent`."""
    import torch

    def encode(side: str, batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v) for k, v in batch.items()}
            return model.encode(**inputs).float().numpy()

    return encode


def session_encoder(
    sessions: dict[str, Any], spec: HeadSpec, projection: np.ndarray | None
) -> EncodeSide:
    """``encode`` for ONNX graphs (``{"query": session, "item": session}``) whose output is
    ``last_hidden_state``; the head (pooling, projection, normalisation) runs in numpy."""
    names = {side: {i.name for i in s.get_inputs()} for side, s in sessions.items()}

    def encode(side: str, batch: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: v for k, v in batch.items() if k in names[side]}
        (hidden,) = sessions[side].run(["last_hidden_state"], feed)
        return pool(hidden, batch["attention_mask"], spec, projection)

    return encode


class PairScorer:
    """Scores pairs through separately encoded sides; ``storage`` casts item vectors to
    the stored dtype (e.g. ``"float16"``, the package's) and back to float32 before use;
    ``calibration`` (a package's) maps the head's logit before the sigmoid, as served."""

    def __init__(
        self,
        spec: HeadSpec,
        encode: EncodeSide,
        query_tokenizer: Tokenizer,
        item_tokenizer: Tokenizer,
        batch_size: int = 64,
        storage: str | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.spec = spec
        self.calibration = calibration
        self.encode = encode
        self.tokenizers = {QUERY: query_tokenizer, ITEM: item_tokenizer}
        self.batch_size = batch_size
        self.storage = storage

    def encode_side(self, side: str, texts: Sequence[str]) -> list[Vectors]:
        """Vectors of each text, in order; late interaction keeps only real tokens.

        Texts are batched in length order so that a batch pads little.
        """
        out: list[Vectors] = [np.empty(0)] * len(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = encode_texts(self.tokenizers[side], [texts[i] for i in rows])
            vectors = np.asarray(self.encode(side, batch), dtype=np.float32)
            lengths = batch["attention_mask"].sum(axis=1)
            for k, row in enumerate(rows):
                v = vectors[k] if self.spec.architecture == BI_ENCODER else vectors[k, : lengths[k]]
                if self.storage is not None and side == ITEM:
                    v = v.astype(self.storage).astype(np.float32)
                out[row] = v
        return out

    def encode_items(self, texts: Sequence[str]) -> dict[str, Vectors]:
        """Stored vectors of each distinct item text: what a catalogue cache holds."""
        unique = list(dict.fromkeys(texts))
        return dict(zip(unique, self.encode_side(ITEM, unique), strict=True))

    def encode_queries(self, texts: Sequence[str]) -> dict[str, Vectors]:
        unique = list(dict.fromkeys(texts))
        return dict(zip(unique, self.encode_side(QUERY, unique), strict=True))

    def logits_encoded(
        self,
        queries: Sequence[str],
        items: Sequence[str],
        query_vectors: dict[str, Vectors],
        item_vectors: dict[str, Vectors],
    ) -> np.ndarray:
        """The head's logits (float64, before calibration) of pairs whose sides are encoded."""
        sims = pair_similarities(
            self.spec,
            [query_vectors[q] for q in queries],
            [item_vectors[t] for t in items],
        )
        return np.asarray(logits_from_similarity(self.spec, sims), dtype=np.float64)

    def score_encoded(
        self,
        queries: Sequence[str],
        items: Sequence[str],
        query_vectors: dict[str, Vectors],
        item_vectors: dict[str, Vectors],
    ) -> np.ndarray:
        """Scores (float64, [0, 1]) of pairs whose sides are already encoded."""
        logits = self.logits_encoded(queries, items, query_vectors, item_vectors)
        return activate("sigmoid", logits, self.calibration, np.float64)

    def logits(self, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """The head's logits of pairs (before calibration), each distinct text encoded once."""
        if len(queries) != len(items):
            raise ValueError(f"got {len(queries)} queries for {len(items)} items")
        return self.logits_encoded(
            queries, items, self.encode_queries(queries), self.encode_items(items)
        )

    def score(self, queries: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Scores of pairs, each distinct query and item encoded once."""
        return activate("sigmoid", self.logits(queries, items), self.calibration, np.float64)


def pair_similarities(
    spec: HeadSpec, queries: Sequence[Vectors], items: Sequence[Vectors]
) -> np.ndarray:
    """Similarity of each (query vectors, item vectors) pair, float64 (see
    :func:`relevance_core.representation.pair_similarities`)."""
    return head.pair_similarities(spec.architecture, queries, items)
