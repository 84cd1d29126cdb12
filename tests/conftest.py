"""Shared fixtures: a tiny random student exported through the real export code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_MAX_LENGTH = 64


@pytest.fixture(autouse=True)
def _no_relevance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RELEVANCE_* variable in the shell must not leak into the tests' settings."""
    for name in list(os.environ):
        if name.startswith("RELEVANCE_"):
            monkeypatch.delenv(name)


def build_tiny_student(model_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random student (MiniLM's tokenizer, 2 layers of width 32); see loadtest.tiny_model."""
    from loadtest.tiny_model import build_tiny_student as build

    build(model_dir, seed)
    return model_dir


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a saved tiny random student (PyTorch), the input of the export."""
    return build_tiny_student(tmp_path_factory.mktemp("tiny-student") / "student")


@pytest.fixture(scope="session")
def tiny_model_package(tiny_student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package (all three variants) exported from the tiny student; returns its dir.

    No validation pairs: FP32 is checked against PyTorch on built-in pairs, the FP16/INT8
    ranking checks are recorded as skipped (a random model has no ranking to keep).
    """
    from training.onnx_export.build import export_package

    return export_package(
        tiny_student_dir,
        tmp_path_factory.mktemp("models") / "tiny",
        name="tiny",
        version="0.0.test",
        max_length=TINY_MAX_LENGTH,
        extra_manifest={"backbone": "tiny-random-bert"},
    )


def build_tiny_representation_package(
    student_dir: Path, out_dir: Path, *, architecture: str = "bi-encoder", dim: int | None = None
) -> Path:
    """A representation package from the tiny student's encoder, through the real export.

    The head is set so that the random encoder's similarities spread over the sigmoid's
    slope (else every score is ~1.0 and no test of order or scale means anything).
    """
    import numpy as np
    import torch

    from training.config import RepresentationConfig, StudentConfig
    from training.onnx_export.representation import export_representation_package
    from training.representation.model import build_representation, save_representation
    from training.representation.scoring import PairScorer, torch_encoder

    model, query_tok, item_tok = build_representation(
        StudentConfig(backbone=str(student_dir), seed=3),
        RepresentationConfig(architecture=architecture, dim=dim),  # type: ignore[arg-type]
    )
    model.eval()
    queries = ["angle bracket", "shower head", "door hinge", "deck screw"]
    items = ["Simpson Strong-Tie 12-Gauge Angle", "Delta shower head chrome", "brass door hinge"]
    sims = PairScorer(model.head_spec(), torch_encoder(model), query_tok, item_tok).score(
        [q for q in queries for _ in items], items * len(queries)
    )
    sims = (np.log(sims / (1 - sims)) - model.bias.item()) / model.scale.item()
    with torch.no_grad():
        model.scale.fill_(2.0 / max(float(np.std(sims)), 1e-6))
        model.bias.fill_(-model.scale.item() * float(np.median(sims)))
    run = save_representation(model, str(student_dir), out_dir.parent / f"{out_dir.name}-run")
    return export_representation_package(
        run,
        out_dir,
        name=out_dir.name,
        version="0.0.test",
        backbone="tiny-random-bert",
        variants=("fp32",),
        catalogue_texts=items,
    )


@pytest.fixture(scope="session")
def tiny_representation_package(
    tiny_student_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A bi-encoder representation package (FP32 query and item graphs) of the tiny student."""
    return build_tiny_representation_package(
        tiny_student_dir, tmp_path_factory.mktemp("models") / "tiny-representation"
    )
