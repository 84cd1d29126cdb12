"""Artifact names and fingerprints: what makes a stage's output current or stale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training.artifacts import (
    best_on_validation,
    committee_run_name,
    committee_student_fingerprint,
    curve_sizes,
    load_dataset,
    read_run,
    reproduce_command,
    run_name,
    student_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]


def test_run_names() -> None:
    assert run_name(0) == "human-only"
    assert run_name(5888) == "distill-n5888"
    assert committee_run_name(24000) == "committee-n24000"


def test_fingerprints_follow_their_inputs(tmp_path: Path, make_tiny_config) -> None:
    config = make_tiny_config(tmp_path)
    dataset = load_dataset(config)
    human = student_fingerprint(config, dataset, 0)
    assert human == student_fingerprint(config, dataset, 0)
    other = config.model_copy(
        update={"student": config.student.model_copy(update={"learning_rate": 0.5})}
    )
    assert student_fingerprint(other, dataset, 0) != human
    # Threads change how a run goes, and so do they change the student section: keep
    # the fingerprint of what the run learns from (config sections split/student/loss).
    paths = config.model_copy(
        update={"paths": config.paths.model_copy(update={"docs_dir": str(tmp_path / "d")})}
    )
    assert student_fingerprint(paths, dataset, 0) == human
    one = committee_student_fingerprint(config, dataset, "committee-a", 10)
    assert one != committee_student_fingerprint(config, dataset, "committee-b", 10)
    assert one != committee_student_fingerprint(config, dataset, "committee-a", 11)
    assert curve_sizes(config, dataset) == [round(0.5 * len(dataset.splits["train"]))]


def test_runs_and_the_best_on_validation(tmp_path: Path) -> None:
    assert read_run(tmp_path) is None
    (tmp_path / "run.json").write_text(json.dumps({"name": "a"}))
    assert read_run(tmp_path) == {"name": "a"}
    records = [
        {"name": "a", "validation_pairwise_accuracy": 0.5},
        {"name": "b", "validation_pairwise_accuracy": None},
        {"name": "c", "validation_pairwise_accuracy": 0.6},
        {"name": "d", "validation_pairwise_accuracy": 0.6},
    ]
    assert best_on_validation(records)["name"] == "c"


def test_reproduce_command() -> None:
    assert reproduce_command(["evaluate", "--set", "a=b c"]) == (
        ".venv/bin/python -m training evaluate --set 'a=b c'"
    )


def test_artifacts_and_config_import_no_torch() -> None:
    code = "import sys, training.artifacts, training.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
