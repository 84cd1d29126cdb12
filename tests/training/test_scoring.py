"""The one pair-scoring loop: batches in the order asked, results back in input order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.features import encode_pairs, load_tokenizer
from training.scoring import length_order, score_pairs

# By length the pairs run 2, 1, 3, 0: not their input order.
QUERIES = ["dddd dddd dddd", "bb bb", "a", "c"]
TEXTS = ["four four", "two two", "one", "three three three"]


def test_score_pairs_batches_in_order_and_returns_input_order(tiny_student_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_student_dir / "tokenizer.json", 64)
    seen: list[int] = []

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(batch["input_ids"].shape[0])
        # A logit that identifies the pair: its number of real tokens.
        return batch["attention_mask"].sum(axis=1).astype(np.float32)

    order = length_order(QUERIES, TEXTS)
    assert order.tolist() == [2, 1, 3, 0]
    logits = score_pairs(run, tokenizer, QUERIES, TEXTS, batch_size=3, order=order)
    expected = [
        encode_pairs(tokenizer, [q], [t])["attention_mask"].sum()
        for q, t in zip(QUERIES, TEXTS, strict=True)
    ]
    np.testing.assert_array_equal(logits, expected)
    assert seen == [3, 1] and logits.dtype == np.float32
    # Input order by default; the same logits either way.
    np.testing.assert_array_equal(score_pairs(run, tokenizer, QUERIES, TEXTS, 2), logits)
    with pytest.raises(ValueError, match="got 4 queries for 3 texts"):
        score_pairs(run, tokenizer, QUERIES, TEXTS[:3], 2)


def test_length_order_is_stable() -> None:
    assert length_order(["a", "b", "ccc"], ["xx", "yy", "z"]).tolist() == [0, 1, 2]
    assert length_order(["aaaa", "b"], ["x", "y"]).tolist() == [1, 0]
