"""The report: findings, row names and what a manifest records of an evaluation."""

from __future__ import annotations

from training.evaluation.report import (
    committee_row_name,
    findings,
    manifest_evaluation,
    render_markdown,
    student_row_name,
)


def _system(name: str, kind: str, accuracy: float, **extra: object) -> dict[str, object]:
    return {
        "name": name,
        "kind": kind,
        "metrics": {"pairwise_accuracy": accuracy},
        "augment_pairs": extra.pop("augment_pairs", 0),
        "validation_pairwise_accuracy": extra.pop("validation", None),
        **extra,
    }


def test_findings_state_each_target_with_its_numbers() -> None:
    systems = [
        _system("BM25", "baseline", 0.556),
        _system("student: human-only", "student", 0.596, validation=0.571),
        _system("student: distill-n5888", "student", 0.587, augment_pairs=5888, validation=0.575),
        _system(
            "student: committee-n24000",
            "student",
            0.602,
            augment_pairs=24000,
            validation=0.584,
            labels_from="committee",
        ),
        _system("committee teacher of committee-n24000", "committee", 0.603),
        _system("committee teacher of committee-n9", "committee", 0.500),
    ]
    lines = findings({"systems": systems})
    assert "committee-n24000" in lines[0] and "a committee of students" in lines[0]
    assert "vs the human-labels-only student (0.5960): +0.0060, beats it." in lines
    assert "vs BM25 (0.5560): +0.0460, misses the +0.05 target." in lines
    # Compared with its own committee teacher, not another committee's.
    assert "vs its committee teacher (0.6030): -0.0010." in lines


def test_manifest_evaluation_takes_the_exported_runs_row_and_the_baselines() -> None:
    results = {
        "split": "test",
        "pairs": 10,
        "queries": 3,
        "systems": [
            _system("BM25", "baseline", 0.55),
            _system(student_row_name("human-only"), "student", 0.59, latency_ms_per_pair=2.0),
            _system(student_row_name("distill-n9"), "student", 0.60, latency_ms_per_pair=3.0),
            _system(committee_row_name("distill-n9"), "committee", 0.61),
            _system("teacher (t)", "teacher", 0.52),
        ],
    }
    evaluation = manifest_evaluation(results, "distill-n9")
    assert evaluation["student"] == {"pairwise_accuracy": 0.60}
    assert evaluation["student_latency_ms_per_pair"] == 3.0
    assert evaluation["baselines"] == {
        "BM25": {"pairwise_accuracy": 0.55},
        "teacher (t)": {"pairwise_accuracy": 0.52},
    }
    assert (evaluation["split"], evaluation["pairs"], evaluation["queries"]) == ("test", 10, 3)
    # A run the evaluation never scored gets no numbers (not another run's).
    assert manifest_evaluation(results, "committee-n5")["student"] is None


def test_render_markdown_names_the_command_and_every_row() -> None:
    systems = [
        {
            **_system("BM25", "baseline", 0.5561, augment_pairs=None),
            "latency_ms_per_pair": 0.1,
            "notes": "bm25s",
        },
        {
            **_system("student: human-only", "student", 0.5960),
            "latency_ms_per_pair": 10.0,
            "notes": "",
            "slices": {},
        },
    ]
    for system in systems:
        system.setdefault("slices", {})
    results = {
        "split": "test",
        "pairs": 4,
        "queries": 2,
        "data": {"file": "train.csv", "sha256": "c7c8be5991de" + "0" * 52},
        "command": "python -m training evaluate --x",
        "latency": {"description": "wall time."},
        "systems": systems,
        "teacher_subset": None,
        "slices": {},
        "slice_sizes": {},
        "findings": ["a finding"],
    }
    text = render_markdown(results, None)
    assert "python -m training evaluate --x" in text
    assert "| BM25 |  | 0.5561 |" in text and "| student: human-only | 0 | 0.5960 |" in text
    assert "- **BM25**: bm25s" in text and "- a finding" in text
