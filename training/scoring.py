"""The one loop that scores (query, text) pairs: tokenize, batch, run, put back in order.

Student inference, committee labeling, the export's reference and candidate scoring and
the evaluation of a model package all go through :func:`score_pairs`, with the backend
as a ``run`` callable that maps one ``encode_pairs`` batch to one logit per pair; the
backend benchmark takes the same batches from :func:`encoded_batches` and times only
``run``. Torch-free: a torch backend wraps its model in ``run`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import Tokenizer

from service.features import encode_pairs

# One encode_pairs batch (numpy arrays by input name) -> one logit per pair.
RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]


def length_order(queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """Pair indices sorted by character length (stable): batches of similar length pad little."""
    return np.argsort([len(q) + len(t) for q, t in zip(queries, texts, strict=True)], kind="stable")


def encoded_batches(
    tokenizer: Tokenizer,
    queries: Sequence[str],
    texts: Sequence[str],
    batch_size: int,
    order: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``(rows, batch)``: the pairs in ``order`` (default: input order), ``batch_size`` at a
    time, each batch padded to its longest pair by ``encode_pairs`` as the service pads."""
    if len(queries) != len(texts):
        raise ValueError(f"got {len(queries)} queries for {len(texts)} texts")
    rows_in_order = np.arange(len(texts)) if order is None else np.asarray(order)
    for start in range(0, len(rows_in_order), batch_size):
        rows = rows_in_order[start : start + batch_size]
        yield rows, encode_pairs(tokenizer, [queries[i] for i in rows], [texts[i] for i in rows])


def score_pairs(
    run: RunBatch,
    tokenizer: Tokenizer,
    queries: Sequence[str],
    texts: Sequence[str],
    batch_size: int,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Logits (float32) of every pair, in input order, batched by :func:`encoded_batches`."""
    out = np.zeros(len(texts), dtype=np.float32)
    for rows, batch in encoded_batches(tokenizer, queries, texts, batch_size, order):
        out[rows] = np.asarray(run(batch), dtype=np.float32).reshape(-1)
    return out


def session_runner(session) -> RunBatch:
    """``run`` for an ``onnxruntime.InferenceSession``: the inputs it declares, its ``logits``."""
    names = {i.name for i in session.get_inputs()}

    def run(batch: Mapping[str, np.ndarray]) -> np.ndarray:
        (logits,) = session.run(["logits"], {k: v for k, v in batch.items() if k in names})
        return np.asarray(logits, dtype=np.float32)[:, 0]

    return run
