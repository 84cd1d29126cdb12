"""Baselines: BM25 over the catalogue; a model package scored as the service scores it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.evaluation.baselines import BM25Scorer, PackageScorer, latency_ms_per_pair
from training.onnx_export.scoring import onnx_scores


def test_bm25_prefers_matching_titles() -> None:
    products = pd.DataFrame(
        {
            "product_id": ["1", "2", "3"],
            "title": ["Simpson angle bracket", "Deck screw box", "Garden hose reel"],
        }
    )
    scores = BM25Scorer(products).score(["angle bracket", "angle bracket", "zzz"], ["1", "2", "1"])
    assert scores[0] > scores[1] == 0.0
    assert scores[2] == 0.0


def test_package_scorer_matches_the_graph_in_any_input_order(fp32_package: Path) -> None:
    pairs = [
        ("angle bracket", "Simpson Strong-Tie 12-Gauge Angle"),
        ("deck over", "BEHR Premium Textured DeckOver 1-gal. Wood and Concrete Coating"),
        ("x", "a " * 200),
        ("mdf", "House of Fara 3/4 in. MDF Fluted Casing"),
    ]
    scorer = PackageScorer(fp32_package, threads=1, batch_size=2)
    queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    scores = scorer.score(queries, texts)
    assert scores.dtype == np.float64
    expected = onnx_scores(
        fp32_package / "model.fp32.onnx", fp32_package / "tokenizer.json", 64, pairs
    )
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # Sorted into length batches internally, returned in input order.
    np.testing.assert_allclose(scorer.score(queries[::-1], texts[::-1]), scores[::-1], atol=1e-6)
    assert "ONNX fp32" in scorer.name


def test_latency_warms_up_then_times_every_batch() -> None:
    calls: list[slice] = []
    assert latency_ms_per_pair(calls.append, 5, 2) >= 0.0
    assert calls == [slice(0, 2), slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(TypeError):
        latency_ms_per_pair(None, 1, 1)  # type: ignore[arg-type]
