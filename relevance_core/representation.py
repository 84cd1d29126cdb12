"""The representation student's head in numpy: what turns encoder states into stored vectors
and two sides' vectors into a logit. Training (export parity, evaluation) and serving
both compute it here, so a stored item vector means the same thing in both.

With ``h`` the encoder's last hidden states, ``m`` the attention mask and ``W`` an
optional projection ``(hidden, dim)``:

- bi-encoder: ``v = normalize((sum_t m_t h_t / sum_t m_t) W)``; similarity
  ``s(q, d) = v_q . v_d`` (cosine).
- late interaction: ``v_t = normalize(h_t W)`` per token (padding zeroed);
  ``s(q, d) = (1 / |q|) sum_{i in q} max_{j in d} v_i . v_j`` (mean MaxSim).

``logit = scale * s + bias``; ``score = sigmoid(logit)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BI_ENCODER = "bi-encoder"
LATE_INTERACTION = "late-interaction"
# Keeps a zero vector (an all-padding row) at zero instead of NaN; F.normalize's default.
NORM_EPS = 1e-12


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, NORM_EPS)


def pool(
    hidden: np.ndarray, mask: np.ndarray, architecture: str, projection: np.ndarray | None
) -> np.ndarray:
    """Stored vectors from ``last_hidden_state`` ``(n, L, hidden)`` and the mask ``(n, L)``.

    Bi-encoder: ``(n, dim)``. Late interaction: ``(n, L, dim)``, padded tokens zero.
    """
    hidden = np.asarray(hidden, dtype=np.float32)
    weights = np.asarray(mask, dtype=np.float32)[..., None]
    if architecture == BI_ENCODER:
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if projection is not None:
            pooled = pooled @ projection
        return normalize(pooled)
    tokens = hidden @ projection if projection is not None else hidden
    return normalize(tokens) * weights


def similarity(
    query: np.ndarray, query_mask: np.ndarray | None, item: np.ndarray, item_mask: np.ndarray | None
) -> np.ndarray:
    """Similarity of row-aligned pairs: ``query[i]`` with ``item[i]``; float64 ``(n,)``.

    Bi-encoder vectors are ``(n, dim)`` (masks unused, pass None). Late-interaction
    vectors are ``(n, Lq, dim)`` / ``(n, Ld, dim)`` with their masks ``(n, Lq)`` /
    ``(n, Ld)``: the mean over real query tokens of the max over real item tokens.
    """
    query, item = np.asarray(query, np.float64), np.asarray(item, np.float64)
    if query.ndim == 2:
        return np.einsum("nd,nd->n", query, item)
    sims = np.einsum("nqd,nkd->nqk", query, item)
    sims = np.where(np.asarray(item_mask, bool)[:, None, :], sims, -np.inf)
    best = sims.max(axis=2)
    q_mask = np.asarray(query_mask, bool)
    return np.where(q_mask, best, 0.0).sum(axis=1) / np.maximum(q_mask.sum(axis=1), 1)


def pair_similarities(
    architecture: str, queries: Sequence[np.ndarray], items: Sequence[np.ndarray]
) -> np.ndarray:
    """Similarity of each (query vectors, item vectors) pair, float64.

    Each side's vectors are one text's: ``(dim,)`` for a bi-encoder, ``(tokens, dim)``
    (real tokens only) for late interaction, so each pair is padded to its own two
    lengths (masks from the lengths) and the maths is :func:`similarity`'s.
    """
    if architecture == BI_ENCODER:
        return similarity(np.stack(queries), None, np.stack(items), None)
    out = np.empty(len(queries), dtype=np.float64)
    for row, (q, d) in enumerate(zip(queries, items, strict=True)):
        out[row] = similarity(q[None], np.ones((1, len(q))), d[None], np.ones((1, len(d))))[0]
    return out


def one_query_similarities(
    architecture: str, query: np.ndarray, items: Sequence[np.ndarray]
) -> np.ndarray:
    """Similarity of one query's vectors with each item's, float64 ``(len(items),)``.

    What a server computes per request: the same numbers as :func:`pair_similarities`
    with the query repeated, in one matrix product for a bi-encoder.
    """
    if architecture == BI_ENCODER:
        return np.asarray(items, np.float64).reshape(len(items), -1) @ np.asarray(query, np.float64)
    return pair_similarities(architecture, [query] * len(items), items)


def logits_from_similarity(scale: float, bias: float, sims: np.ndarray) -> np.ndarray:
    """``scale * similarity + bias`` in float64."""
    return scale * np.asarray(sims, np.float64) + bias
