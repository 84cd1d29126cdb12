"""Reference scoring: the ONNX graph reproduces the PyTorch student."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.onnx_export.scoring import onnx_scores, torch_scores

from .samples import MAX_LENGTH, PAIRS


def test_fp32_scores_match_torch(tiny_student_dir: Path, tiny_model_package: Path) -> None:
    tokenizer = tiny_model_package / "tokenizer.json"
    expected = torch_scores(tiny_student_dir, tokenizer, MAX_LENGTH, PAIRS)
    graph = tiny_model_package / "model.fp32.onnx"
    np.testing.assert_allclose(
        onnx_scores(graph, tokenizer, MAX_LENGTH, PAIRS), expected, atol=1e-4
    )
    # Batch of one and a shorter batch: the axes really are dynamic.
    single = onnx_scores(graph, tokenizer, MAX_LENGTH, PAIRS[:1])
    np.testing.assert_allclose(single, expected[:1], atol=1e-4)
    assert expected.std() > 1e-3  # the scores are not all the same, so the check means something
    assert expected.dtype == np.float64 and np.all((expected > 0) & (expected < 1))
