"""Unlabeled query-product pairs for the teacher to label (the augmentation set).

Three sources, none of them covered by a human label:

- ``bm25``: lexical candidates for each training query from the whole catalogue (bm25s);
  these are the hard cases a ranking stack actually sees.
- ``random``: random catalogue products for the same query (easy negatives).
- ``generated``: new queries made from product titles (the product-type phrase of a
  title, e.g. "faucet trim kit"), each with its BM25 candidates; they reach products and
  phrasings that no human query touched, the long tail.

Pairs come grouped by query (margin-MSE needs several items of one query) and the groups
are shuffled once with a fixed seed, so any prefix of the set is a fair sample: the
augmentation-size curve labels and trains on growing prefixes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from training.data import query_key

_SPLIT_WORDS = re.compile(r"\s(?:in|with|for|and|by|-|–|,)\s|\(|,", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z][a-z\-']+")
_STOP = {
    "the",
    "a",
    "an",
    "of",
    "to",
    "on",
    "per",
    "pack",
    "pk",
    "ft",
    "in",
    "x",
    "lb",
    "oz",
    "gal",
    "qt",
}


@dataclass(frozen=True)
class AugmentConfig:
    bm25_per_query: int = 5
    random_per_query: int = 2
    generated_queries: int = 4000
    bm25_per_generated: int = 5
    seed: int = 13

    def version(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def generate_query(title: str, rng: np.random.Generator) -> str | None:
    """A short product-type query from a title: 2-3 content words before the first qualifier."""
    head = _SPLIT_WORDS.split(title, maxsplit=1)[0].lower()
    words = [w for w in _TOKEN.findall(head) if w not in _STOP and len(w) > 1]
    if len(words) < 2:
        return None
    size = int(rng.integers(2, 4))
    return " ".join(words[-size:])


def _bm25_index(titles: list[str]):
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(titles, stopwords="en", show_progress=False), show_progress=False
    )
    return retriever


def _retrieve(retriever, queries: list[str], k: int) -> np.ndarray:
    import bm25s

    tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
    results, _ = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return np.asarray(results)


def build_augmentation(
    train: pd.DataFrame,
    labeled_all: pd.DataFrame,
    products: pd.DataFrame,
    config: AugmentConfig = AugmentConfig(),
    held_out_queries: Iterable[str] = (),
) -> pd.DataFrame:
    """Unlabeled pairs: query, query_key, product_id, title, source and group columns.

    ``labeled_all`` (every split) is excluded so that augmentation never duplicates a human
    judgement; generated queries equal to a held-out (validation/test) query are dropped so
    no test query leaks into training.
    """
    rng = np.random.default_rng(config.seed)
    titles = products["title"].tolist()
    ids = products["product_id"].to_numpy()
    labeled = set(zip(labeled_all["query_key"], labeled_all["product_id"], strict=True))
    held_out = {query_key(q) for q in held_out_queries}
    retriever = _bm25_index(titles)
    depth = config.bm25_per_query + 10  # room for candidates that are already labeled

    rows: list[tuple[str, str, str, str, str]] = []

    def add_group(query: str, candidates: Iterable[int], source: str, limit: int) -> None:
        key = query_key(query)
        taken = 0
        for index in candidates:
            if taken >= limit:
                break
            pid = ids[index]
            if (key, pid) in labeled or (key, pid) in seen:
                continue
            seen.add((key, pid))
            rows.append((query, key, pid, titles[index], source))
            taken += 1

    seen: set[tuple[str, str]] = set()
    train_queries = train.drop_duplicates("query_key")["query"].tolist()
    hits = _retrieve(retriever, train_queries, depth)
    for query, candidates in zip(train_queries, hits, strict=True):
        add_group(query, candidates, "bm25", config.bm25_per_query)
        add_group(
            query,
            rng.integers(0, len(ids), size=config.random_per_query * 3),
            "random",
            config.random_per_query,
        )

    generated: list[str] = []
    known = set(train["query_key"]) | held_out
    for index in rng.permutation(len(titles)):
        if len(generated) >= config.generated_queries:
            break
        query = generate_query(titles[index], rng)
        if query and query_key(query) not in known:
            known.add(query_key(query))
            generated.append(query)
    if generated:
        hits = _retrieve(retriever, generated, config.bm25_per_generated + 10)
        for query, candidates in zip(generated, hits, strict=True):
            add_group(query, candidates, "generated", config.bm25_per_generated)

    frame = pd.DataFrame(rows, columns=["query", "query_key", "product_id", "title", "source"])
    # Shuffle whole query groups so any prefix keeps each query's items together.
    keys = frame["query_key"].unique()
    order = {key: rank for rank, key in enumerate(rng.permutation(keys))}
    frame["group"] = frame["query_key"].map(order)
    return frame.sort_values(["group", "source", "product_id"], kind="stable").reset_index(
        drop=True
    )
