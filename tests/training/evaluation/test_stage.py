"""The evaluate stage on the tiny pipeline: every system, the teacher sample, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.artifacts import students_dir
from training.evaluation.systems import score_package


def test_evaluate_scores_every_system_in_order(tiny_pipeline) -> None:
    results = tiny_pipeline.get("evaluate")
    config = tiny_pipeline.config
    wanted = config.committee.augment_pairs
    distilled = f"student: {config.committee.members[1]}"  # distill-n<curve size>
    names = [s["name"] for s in results["systems"]]
    assert names[:3] == ["BM25", "MiniLM embedding cosine (zero-shot)", "student: human-only"]
    assert names[3:5] == [distilled, f"student: committee-n{wanted}"]
    by_name = {s["name"]: s for s in results["systems"]}
    assert by_name[f"student: committee-n{wanted}"]["labels_from"] == "committee"
    assert by_name[distilled]["labels_from"] == "teacher"
    assert by_name["student: human-only"]["labels_from"] is None
    committee_row = by_name[f"committee teacher of committee-n{wanted}"]
    assert committee_row["kind"] == "committee"
    assert not [s for s in results["systems"] if s["kind"] == "package"]  # none shipped yet
    for system in results["systems"]:
        assert 0.0 <= system["metrics"]["pairwise_accuracy"] <= 1.0
        assert set(system["slices"]) == {"long", "rare_term", "long_tail", "rest"}
    assert results["latency"]["pairs"] == 16 and results["latency"]["threads"] == 1
    assert list(results)[:7] == [
        "split", "pairs", "queries", "data", "command", "teacher_labels", "latency"
    ]  # fmt: skip


def test_evaluate_compares_the_teacher_on_its_sample(tiny_pipeline) -> None:
    results = tiny_pipeline.get("evaluate")
    subset = results["teacher_subset"]
    assert subset is not None and subset["queries"] == 3
    teacher = [s for s in subset["systems"] if s["kind"] == "teacher"]
    assert len(teacher) == 1 and teacher[0]["latency_ms_per_pair"] > 0
    # The teacher labeled a sample only: it has no row on the whole split.
    assert not [s for s in results["systems"] if s["kind"] == "teacher"]
    assert len(subset["systems"]) == len(results["systems"]) + 1


def test_evaluate_writes_report_plot_and_results(tiny_pipeline) -> None:
    results = tiny_pipeline.get("evaluate-with-package")  # the files of the last run
    root = tiny_pipeline.root
    report = (root / "docs" / "evaluation.md").read_text()
    assert "python -m training evaluate --config tiny.json" in report
    assert "Teacher-labeled sample" in report and "Long-tail slices" in report
    assert (root / "docs" / "evaluation_curve.png").stat().st_size > 1000
    saved = json.loads((root / "runs" / "evaluation" / "test.json").read_text())
    assert saved["findings"] and saved["findings"] == results["findings"]
    by_name = {s["name"]: s["metrics"]["pairwise_accuracy"] for s in results["systems"]}
    assert {s["name"]: s["metrics"]["pairwise_accuracy"] for s in saved["systems"]} == by_name


def test_evaluate_scores_the_shipped_package_like_its_source_run(tiny_pipeline) -> None:
    results = tiny_pipeline.get("evaluate-with-package")
    served = [s for s in results["systems"] if s["kind"] == "package"]
    assert len(served) == 1 and "ONNX fp32" in served[0]["name"]
    chosen = json.loads((tiny_pipeline.get("export") / "manifest.json").read_text())["provenance"][
        "student"
    ]["run"]
    exported = next(s for s in results["systems"] if s["name"] == f"student: {chosen}")
    assert served[0]["metrics"]["pairwise_accuracy"] == pytest.approx(
        exported["metrics"]["pairwise_accuracy"], abs=0.02
    )
    assert f"exported from the student run {chosen}" in served[0]["notes"]
    assert "another training" not in served[0]["notes"]


def test_package_row_says_when_its_run_was_retrained(pipeline_copy) -> None:
    config = pipeline_copy
    from training.artifacts import load_dataset

    manifest = json.loads((config.default_package_dir / "manifest.json").read_text())
    chosen = manifest["provenance"]["student"]["run"]
    record_path: Path = students_dir(config) / chosen / "run.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "fingerprint": "retrained000"}))
    frame = load_dataset(config).splits[config.evaluate.split]
    (package_row,) = score_package(config, frame, frame.head(8))
    assert "another training (fingerprint retrained000)" in package_row.notes
    assert package_row.kind == "package" and len(package_row.scores) == len(frame)


def test_the_negatives_row_counts_the_validation_queries_random_pairs(
    pipeline_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import pandas as pd

    from training.artifacts import load_dataset, validation_negatives
    from training.evaluation import stage
    from training.evaluation.systems import Scored

    config = pipeline_copy
    dataset = load_dataset(config)
    test = dataset.splits["test"]
    negatives = validation_negatives(config, dataset)
    first = negatives["query_key"].iloc[0]
    seen: list[pd.DataFrame] = []

    def fake_systems(config, dataset, frame, sample) -> list[Scored]:
        seen.append(frame)
        judged = frame["grade"].notna().to_numpy()
        # Judged test pairs 0.6; negatives 0.1, but those of the first query 0.6.
        low = np.where(frame["query_key"].to_numpy() == first, 0.6, 0.1)
        scores = np.where(judged, 0.6, low)
        return [
            Scored("calibrated", "student", scores, calibrated=True),
            Scored("raw", "baseline", scores, calibrated=False),
        ]

    monkeypatch.setattr(stage, "score_systems", fake_systems)
    results = stage.stage_evaluate(config, command="python -m training evaluate")
    (frame,) = seen
    # Scored in one pass: the test split, then exactly the validation queries' negatives.
    assert len(frame) == len(test) + len(negatives)
    pd.testing.assert_frame_equal(
        frame.iloc[len(test) :][list(negatives.columns)].reset_index(drop=True), negatives
    )
    per_query = config.evaluate.negatives_per_query
    queries = dataset.splits["validation"]["query_key"].nunique()
    summary = results["negatives"]
    assert summary["pairs"] == len(negatives) == per_query * queries
    assert (summary["queries"], summary["split"]) == (queries, "validation")
    rows = {s["name"]: s for s in results["systems"]}
    assert rows["calibrated"]["negatives_irrelevant_share"] == pytest.approx(1 - 1 / queries)
    assert rows["raw"]["negatives_irrelevant_share"] is None  # not on the [0, 1] scale
    # The split's own metrics saw only the split's pairs (all 0.6: every pair a tie).
    assert rows["calibrated"]["metrics"]["pairwise_accuracy"] == 0.5
