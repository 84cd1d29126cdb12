"""The export stage: run_export's defaults, and the stage on the tiny pipeline's runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from service.model_package import load_package
from training.artifacts import PipelineError
from training.config import TrainConfig
from training.onnx_export import ExportError
from training.onnx_export.stage import (
    DEFAULT_BACKBONE,
    choose_student,
    run_export,
    stage_export,
    validation_pairs_from_frame,
)

from .samples import MAX_LENGTH, VALIDATION


def test_run_export_stage(tiny_student_dir: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "query_key": [v[0] for v in VALIDATION],
            "query": [v[1] for v in VALIDATION],
            "title": [v[2] for v in VALIDATION],
            "grade": [v[3] for v in VALIDATION],
        }
    )
    pairs = validation_pairs_from_frame(frame)
    assert pairs[0] == VALIDATION[0]
    with pytest.raises(ExportError, match="max_length is unknown"):
        run_export(tiny_student_dir, tmp_path / "x", pairs, {}, {})

    out = run_export(
        tiny_student_dir,
        tmp_path / "minilm-test",
        pairs,
        {"student": {"pairwise_accuracy": 0.7}},
        {"train_config": {"max_length": MAX_LENGTH}, "teacher": "fake"},
        variants=("fp32",),
    )
    manifest = load_package(out).manifest
    assert manifest.name == "minilm-test"
    assert manifest.max_length == MAX_LENGTH
    assert manifest.backbone == DEFAULT_BACKBONE
    assert "+" in manifest.version  # <date>+<weights sha256 prefix>
    assert manifest.evaluation == {"student": {"pairwise_accuracy": 0.7}}
    assert manifest.provenance["teacher"] == "fake"


def test_export_stage_ships_the_best_run_with_its_evaluation(tiny_pipeline) -> None:
    package_dir = tiny_pipeline.get("export")
    config = tiny_pipeline.config
    manifest = load_package(package_dir).manifest
    records = tiny_pipeline.get("records")
    best = max(records, key=lambda r: r["validation_pairwise_accuracy"])
    chosen = manifest.provenance["student"]["run"]
    assert chosen == best["name"] == choose_student(config)
    saved = tiny_pipeline.get("evaluate")
    row = next(s for s in saved["systems"] if s["name"] == f"student: {chosen}")
    assert manifest.evaluation["student"] == row["metrics"]
    assert set(manifest.evaluation["baselines"]) >= {"BM25"}
    assert manifest.provenance["data"]["sha256"] == tiny_pipeline.dataset.sha256
    assert manifest.provenance["student"]["fingerprint"] == best["fingerprint"]
    assert manifest.max_length == config.student.max_length
    stamp = (package_dir / "manifest.json").stat().st_mtime_ns
    assert stage_export(config) == package_dir  # up to date: skipped
    assert (package_dir / "manifest.json").stat().st_mtime_ns == stamp


def test_export_stage_names_what_is_missing(tmp_path: Path, tiny_pipeline) -> None:
    config: TrainConfig = tiny_pipeline.config
    with pytest.raises(PipelineError, match="not trained"):
        stage_export(config, student="distill-n999999")
    empty = config.model_copy(
        update={"paths": config.paths.model_copy(update={"runs_dir": str(tmp_path)})}
    )
    with pytest.raises(PipelineError, match="no trained student"):
        choose_student(empty)
