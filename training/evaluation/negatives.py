"""Do scores mean what the manifest says? Random catalogue items for a query must score irrelevant.

Human-judged pairs are all retrieved candidates, so a model can rank them well and still
call an unrelated product "partial". This check pairs each query of a split with random
catalogue products that were never judged for it (all but certainly irrelevant among
tens of thousands) and reports the share scored below the manifest's "partial"
threshold. The product's target: at least 90% below it, on validation queries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Where "partial" starts on the [0, 1] score scale: grade 1.5 of 1..3 (the manifest's classes).
IRRELEVANT_BELOW = 0.25


def random_negative_pairs(
    split: pd.DataFrame, catalogue: pd.DataFrame, per_query: int, seed: int
) -> pd.DataFrame:
    """``per_query`` random catalogue products for each query of ``split``, none judged for it.

    Columns ``query``, ``query_key``, ``product_id``, ``title``; deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    judged = set(zip(split["query_key"], split["product_id"], strict=True))
    queries = split.drop_duplicates("query_key").sort_values("query_key")
    ids = catalogue["product_id"].to_numpy()
    titles = catalogue["title"].to_numpy()
    rows = []
    for query, key in zip(queries["query"], queries["query_key"], strict=True):
        taken = 0
        while taken < per_query:
            j = int(rng.integers(len(ids)))
            if (key, ids[j]) in judged:
                continue
            rows.append((query, key, ids[j], titles[j]))
            taken += 1
    return pd.DataFrame(rows, columns=["query", "query_key", "product_id", "title"])


def irrelevant_share(scores: np.ndarray, threshold: float = IRRELEVANT_BELOW) -> float:
    """Share of scores below ``threshold`` (what the manifest labels irrelevant)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float((scores < threshold).mean()) if len(scores) else float("nan")
