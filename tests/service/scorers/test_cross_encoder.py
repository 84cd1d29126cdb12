"""Execution-provider choice, CUDA fallback, graph choice, warm-up and batch invariance."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from apitools import make_texts

from service.features import collate, load_tokenizer, tokenize_pairs
from service.model_package import MANIFEST_NAME, load_package
from service.scorers.cross_encoder import CPU, OnnxScorer, is_batch_invariant


def pairs_for(package_dir: Path, n: int = 24):
    package = load_package(package_dir)
    tokenizer = load_tokenizer(package.tokenizer_path, package.manifest.max_length)
    return tokenize_pairs(tokenizer, ["angle bracket"] * n, make_texts(n, seed=7))


@pytest.fixture
def dynamic_int8_package(tiny_model_package: Path, tmp_path: Path) -> Path:
    """A copy of the tiny package whose INT8 entry says what a dynamic export records."""
    package = Path(shutil.copytree(tiny_model_package, tmp_path / "pkg"))
    manifest = json.loads((package / MANIFEST_NAME).read_text())
    manifest["variants"]["int8"]["batch_invariant"] = False
    manifest["variants"]["int8"]["build"]["mode"] = "dynamic"
    (package / MANIFEST_NAME).write_text(json.dumps(manifest))
    return package


def test_cpu_default_is_a_batch_invariant_graph(tiny_model_package: Path) -> None:
    package = load_package(tiny_model_package)
    scorer = OnnxScorer.load(package)
    assert scorer.provider == CPU
    # The tiny package's INT8 graph is statically quantized and measured batch-invariant.
    assert package.manifest.variants["int8"].build["mode"] == "static"
    assert is_batch_invariant(package, "int8")
    assert scorer.variant == "int8" and scorer.batch_invariant


def test_cpu_default_skips_an_int8_graph_that_is_not_batch_invariant(
    dynamic_int8_package: Path,
) -> None:
    package = load_package(dynamic_int8_package)
    assert not is_batch_invariant(package, "int8")
    scorer = OnnxScorer.load(package)
    assert scorer.variant == "fp32" and scorer.batch_invariant


def test_cuda_request_without_cuda_falls_back_with_one_log_line(
    tiny_model_package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    package = load_package(tiny_model_package)
    with caplog.at_level(logging.WARNING, logger="service.scorers.cross_encoder"):
        scorer = OnnxScorer.load(package, provider="cuda")
    assert scorer.provider == CPU and scorer.variant == "int8"
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "provider=cuda" in lines[0] and "falling back to CPUExecutionProvider" in lines[0]


def test_explicit_int8_runs_and_is_flagged(
    dynamic_int8_package: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="service.scorers.cross_encoder"):
        scorer = OnnxScorer.load(load_package(dynamic_int8_package), variant="int8")
    assert scorer.variant == "int8" and not scorer.batch_invariant
    assert any("not batch-invariant" in r.getMessage() for r in caplog.records)
    logits = scorer.run(collate(pairs_for(dynamic_int8_package, 3)))
    assert logits.shape == (3,) and logits.dtype == np.float32


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_scores_do_not_depend_on_batch_company(tiny_model_package: Path, variant: str) -> None:
    scorer = OnnxScorer.load(load_package(tiny_model_package), variant=variant, intra_op_threads=1)  # type: ignore[arg-type]
    pairs = pairs_for(tiny_model_package)
    batched = scorer.run(collate(pairs))
    alone = np.array([scorer.run(collate([p]))[0] for p in pairs])
    reversed_batch = scorer.run(collate(pairs[::-1]))[::-1]
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched, reversed_batch, atol=1e-5, rtol=0)


def test_warmup_runs_each_shape(tiny_model_package: Path) -> None:
    scorer = OnnxScorer.load(load_package(tiny_model_package))
    batch = collate(pairs_for(tiny_model_package, 4))
    assert scorer.warmup([batch, batch]) == 2
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.run(batch)
