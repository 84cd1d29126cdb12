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
