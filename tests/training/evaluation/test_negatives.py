"""Random-negative check: pairs never judged for their query, and the share scored irrelevant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.evaluation.negatives import irrelevant_share, random_negative_pairs


def _split() -> tuple[pd.DataFrame, pd.DataFrame]:
    split = pd.DataFrame(
        {
            "query": ["Drill", "Drill", "hose"],
            "query_key": ["drill", "drill", "hose"],
            "product_id": ["1", "2", "3"],
            "title": ["Drill A", "Drill B", "Hose A"],
        }
    )
    catalogue = pd.DataFrame(
        {"product_id": [str(i) for i in range(1, 9)], "title": [f"T{i}" for i in range(1, 9)]}
    )
    return split, catalogue


def test_random_negatives_are_never_judged_for_their_query_and_deterministic():
    split, catalogue = _split()
    pairs = random_negative_pairs(split, catalogue, per_query=5, seed=3)
    assert len(pairs) == 10
    assert pairs["query_key"].value_counts().to_dict() == {"drill": 5, "hose": 5}
    judged = set(zip(split["query_key"], split["product_id"], strict=True))
    assert not judged & set(zip(pairs["query_key"], pairs["product_id"], strict=True))
    titles = dict(zip(catalogue["product_id"], catalogue["title"], strict=True))
    assert all(titles[p] == t for p, t in zip(pairs["product_id"], pairs["title"], strict=True))
    pd.testing.assert_frame_equal(pairs, random_negative_pairs(split, catalogue, 5, seed=3))


def test_irrelevant_share_counts_scores_below_the_partial_threshold():
    assert irrelevant_share(np.array([0.1, 0.2, 0.25, 0.9])) == 0.5
    assert irrelevant_share(np.array([0.1, 0.3, 0.6]), threshold=0.5) == 2 / 3
    assert np.isnan(irrelevant_share(np.array([])))
