"""Training rows, margin groups and the learning-rate schedule."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest

from training.artifacts import read_run
from training.config import LossConfig, StudentConfig
from training.distill import _lr_scale, selection_subset, train_student, training_frame


def _human() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query": ["angle bracket"] * 3 + ["hose"] * 2,
            "query_key": ["angle bracket"] * 3 + ["hose"] * 2,
            "product_id": ["1", "2", "3", "4", "5"],
            "title": ["Angle bracket", "Angle iron", "Deck screw", "Garden hose", "Hose reel"],
            "grade": [3.0, 2.0, 1.0, 3.0, 2.33],
        }
    )


def _teacher() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query": ["angle bracket", "angle bracket", "tile saw"],
            "query_key": ["angle bracket", "angle bracket", "tile saw"],
            "product_id": ["9", "8", "7"],
            "title": ["Corner brace", "Shelf bracket", "Wet tile saw"],
            "teacher_score": [0.7, 0.4, 0.9],
        }
    )


def test_training_frame_targets_and_groups() -> None:
    frame = training_frame(_human(), _teacher())
    human = frame[frame["source"] == "human"]
    assert list(human["target"]) == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.665])
    assert list(frame[frame["source"] == "teacher"]["target"]) == [0.7, 0.4, 0.9]
    # Same query, different source -> different group: no margin across the two scales.
    angle = frame[frame["query_key"] == "angle bracket"]
    assert angle.groupby("source")["group"].nunique().tolist() == [1, 1]
    assert angle["group"].nunique() == 2
    assert len(training_frame(_human())) == 5


def test_training_frame_rejects_out_of_range_targets() -> None:
    bad = _teacher().assign(teacher_score=[1.5, 0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        training_frame(_human(), bad)


def test_lr_schedule_warms_up_then_decays() -> None:
    scales = [_lr_scale(step, 4, 20) for step in range(20)]
    assert scales[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert scales[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(scales[4:]))
    assert scales[-1] == pytest.approx(1 / 16)


def test_selection_subset_keeps_queries_with_two_grades() -> None:
    human = _human().assign(grade=[3.0, 3.0, 3.0, 3.0, 2.0])
    subset = selection_subset(human, None, seed=0)
    assert set(subset["query_key"]) == {"hose"}


def test_train_student_saves_a_finished_run(tiny_student_dir: Path, tmp_path: Path) -> None:
    student = StudentConfig(
        backbone=str(tiny_student_dir), batch_size=4, items_per_query=3, epochs=2.0,
        eval_every_steps=2, validation_queries=None, threads=1,
    )  # fmt: skip
    out = tmp_path / "run"
    record = train_student(
        training_frame(_human(), _teacher()), _human(), student, LossConfig(), out, {"name": "x"}
    )
    assert read_run(out) == record
    assert record["name"] == "x" and record["steps"] >= 4
    assert 0.0 <= record["validation_pairwise_accuracy"] <= 1.0
    assert record["history"][-1]["step"] == record["steps"]
    assert not (tmp_path / "run.tmp").exists()
