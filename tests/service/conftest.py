"""Fixtures of the service tests: the real app built on the tiny model package."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def make_app(tiny_model_package: Path) -> Callable[..., FastAPI]:
    """Build the real app on the tiny package; keyword arguments are settings overrides."""

    def make(teacher_loader: Callable[[], Any] | None = None, **overrides: Any) -> FastAPI:
        # The score cache and the warm-up ladder have their own tests; elsewhere each
        # request is scored by the model at the configured batch size.
        overrides.setdefault("score_cache_mb", 0)
        overrides.setdefault("tune_budget_s", 0)
        settings = Settings(model_dir=tiny_model_package, **overrides)
        return create_app(settings, teacher_loader=teacher_loader)

    return make


@pytest.fixture(scope="session")
def model_zoo(tiny_model_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory (RELEVANCE_MODELS_DIR) for version tests: ``tiny`` (the tiny
    package, 0.0.test), ``tiny-v2`` (another random student: other scores, 0.0.test2) and
    ``tiny-corrupt`` (the tiny package with a graph that fails its checksum)."""
    from loadtest.tiny_model import MAX_LENGTH, build_tiny_student
    from training.onnx_export.build import export_package

    zoo = tmp_path_factory.mktemp("zoo")
    shutil.copytree(tiny_model_package, zoo / "tiny")
    student = tmp_path_factory.mktemp("tiny-student-v2") / "student"
    build_tiny_student(student, 1)
    export_package(
        student,
        zoo / "tiny-v2",
        name="tiny",
        version="0.0.test2",
        max_length=MAX_LENGTH,
        variants=("fp32", "int8"),
        extra_manifest={"backbone": "tiny-random-bert"},
    )
    corrupt = shutil.copytree(tiny_model_package, zoo / "tiny-corrupt")
    graph = corrupt / "model.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return zoo
