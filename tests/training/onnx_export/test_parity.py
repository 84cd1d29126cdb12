"""Parity gates: FP32 vs PyTorch, ranking vs FP32, Kendall tau, the invariance probe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.onnx_export.parity import (
    check_fp32_parity,
    check_ranking_parity,
    invariance_pairs,
    mean_kendall_tau,
)
from training.onnx_export.scoring import onnx_scores, torch_scores

from .samples import (
    MAX_LENGTH,
    PAIRS,
    VALIDATION,
    VALIDATION_TEXT_PAIRS,
    edit_classifier,
    negate,
    shift_bias,
)


def test_fp32_parity_fails_on_corrupted_graph(
    tiny_student_dir: Path, tiny_model_package: Path, tmp_path: Path
) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    reference = torch_scores(tiny_student_dir, tokenizer, MAX_LENGTH, PAIRS)
    good = onnx_scores(tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, PAIRS)
    assert check_fp32_parity(reference, good).passed
    bad_graph = edit_classifier(
        tiny_model_package / "model.fp32.onnx", tmp_path / "bad.onnx", shift_bias
    )
    result = check_fp32_parity(reference, onnx_scores(bad_graph, tokenizer, MAX_LENGTH, PAIRS))
    assert not result.passed
    assert result.numbers["max_abs_score_diff"] > 1e-3
    assert "vs PyTorch" in result.reason
    nan = check_fp32_parity(reference, np.full_like(reference, np.nan))
    assert not nan.passed


def test_ranking_parity_fails_on_reversed_graph(tiny_model_package: Path, tmp_path: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    qids = [v[0] for v in VALIDATION]
    grades = [v[3] for v in VALIDATION]
    fp32 = onnx_scores(
        tiny_model_package / "model.fp32.onnx", tokenizer, MAX_LENGTH, VALIDATION_TEXT_PAIRS
    )
    assert check_ranking_parity(qids, grades, fp32, fp32).passed
    reversed_graph = edit_classifier(
        tiny_model_package / "model.fp32.onnx", tmp_path / "rev.onnx", negate
    )
    scores = onnx_scores(reversed_graph, tokenizer, MAX_LENGTH, VALIDATION_TEXT_PAIRS)
    result = check_ranking_parity(qids, grades, fp32, scores)
    assert not result.passed
    assert result.numbers["mean_kendall_tau_vs_fp32"] == pytest.approx(-1.0)
    assert "Kendall" in result.reason


def test_ranking_parity_tolerates_a_drop_up_to_the_threshold() -> None:
    qids = ["a"] * 3
    grades = [3.0, 2.0, 1.0]
    reference = np.array([0.9, 0.5, 0.1])
    assert check_ranking_parity(qids, grades, reference, reference * 0.5).passed  # same order
    swapped = np.array([0.5, 0.9, 0.1])  # one of three pairs wrong: a drop of 1/3
    result = check_ranking_parity(qids, grades, reference, swapped)
    assert not result.passed and "pairwise accuracy 0.6667 vs FP32 1.0000" in result.reason


def test_mean_kendall_tau() -> None:
    qids = ["a", "a", "a", "b", "b", "c"]
    ref = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.9])
    assert mean_kendall_tau(qids, ref, ref) == pytest.approx(1.0)
    swapped = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    assert mean_kendall_tau(qids, ref, swapped) == pytest.approx(0.0)  # (1 + -1) / 2
    assert np.isnan(mean_kendall_tau(["a", "b"], ref[:2], ref[:2]))  # no query with 2 items


def test_invariance_pairs_are_short_probes_and_longer_company() -> None:
    probes, company = invariance_pairs(PAIRS, n_probes=2, n_company=4)
    assert probes == [PAIRS[0], PAIRS[3]]  # the two shortest pairs
    shortest = min(len(q) + len(t) for q, t in company)
    assert shortest > max(len(q) + len(t) for q, t in probes)
    assert len(company) == 4
