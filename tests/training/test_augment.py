"""The augmentation set never repeats a human label nor touches a held-out query."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.augment import AugmentConfig, build_augmentation, generate_query
from training.data import catalogue, load_labeled, split_by_query
from training.data import query_key as make_key


def test_augmentation_excludes_labeled_pairs_and_held_out_queries(tiny_dataset: Path) -> None:
    labeled = load_labeled(tiny_dataset)
    splits = split_by_query(labeled, seed=3)
    held_out = set(splits["validation"]["query_key"]) | set(splits["test"]["query_key"])
    config = AugmentConfig(bm25_per_query=3, random_per_query=2, generated_queries=30, seed=1)
    aug = build_augmentation(
        splits["train"],
        labeled,
        catalogue(labeled),
        config,
        held_out_queries=list(splits["validation"]["query"]) + list(splits["test"]["query"]),
    )
    assert len(aug) > 0
    assert set(aug["source"]) <= {"bm25", "random", "generated"}
    labeled_pairs = set(zip(labeled["query_key"], labeled["product_id"], strict=True))
    assert not labeled_pairs & set(zip(aug["query_key"], aug["product_id"], strict=True))
    assert not held_out & set(aug["query_key"])
    assert not aug.duplicated(["query_key", "product_id"]).any()
    # Query groups are contiguous, so any prefix keeps a query's items together.
    group_changes = (aug["group"].diff().fillna(0) != 0).sum()
    assert group_changes == aug["query_key"].nunique() - 1
    assert (aug["query_key"] == aug["query"].map(make_key)).all()


def test_augmentation_is_deterministic(tiny_dataset: Path) -> None:
    labeled = load_labeled(tiny_dataset)
    splits = split_by_query(labeled, seed=3)
    config = AugmentConfig(bm25_per_query=2, random_per_query=1, generated_queries=10, seed=2)
    first = build_augmentation(splits["train"], labeled, catalogue(labeled), config)
    again = build_augmentation(splits["train"], labeled, catalogue(labeled), config)
    assert first.equals(again)
    assert config.version() == AugmentConfig(**vars(config)).version()
    assert config.version() != AugmentConfig(bm25_per_query=3).version()


def test_generated_query_is_a_short_phrase() -> None:
    rng = np.random.default_rng(0)
    query = generate_query("Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome", rng)
    assert query is not None and 2 <= len(query.split()) <= 3
    assert generate_query("X", rng) is None
