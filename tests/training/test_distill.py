"""Training rows, margin groups and the learning-rate schedule."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import human_pairs, teacher_pairs
from training.artifacts import read_run
from training.config import LossConfig, StudentConfig
from training.distill import (
    _lr_scale,
    selection_subset,
    train_student,
    training_frame,
    with_assistant,
)


def test_training_frame_targets_and_groups() -> None:
    frame = training_frame(human_pairs(), teacher_pairs())
    human = frame[frame["source"] == "human"]
    assert list(human["target"]) == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.665])
    assert list(frame[frame["source"] == "teacher"]["target"]) == [0.7, 0.4, 0.9]
    # Same query, different source -> different group: no margin across the two scales.
    angle = frame[frame["query_key"] == "angle bracket"]
    assert angle.groupby("source")["group"].nunique().tolist() == [1, 1]
    assert angle["group"].nunique() == 2
    assert len(training_frame(human_pairs())) == 5


# The teacher's scores of human_pairs()'s five pairs.
HUMAN_TEACHER = np.array([0.9, 0.6, 0.2, 0.8, 0.7])


def test_human_pairs_take_the_teachers_scores_or_a_blend() -> None:
    grades = np.array([1.0, 0.5, 0.0, 1.0, 0.665])
    teacher = training_frame(
        human_pairs(), teacher_pairs(), HUMAN_TEACHER, LossConfig(human_teacher_weight=1.0)
    )
    human = teacher[teacher["source"] == "human"]
    assert list(human["target"]) == pytest.approx(list(HUMAN_TEACHER))
    blend = training_frame(
        human_pairs(), teacher_pairs(), HUMAN_TEACHER, LossConfig(human_teacher_weight=0.25)
    )
    human = blend[blend["source"] == "human"]
    assert list(human["target"]) == pytest.approx(list(0.75 * grades + 0.25 * HUMAN_TEACHER))
    # Margins stay per source (on the blended targets) unless the teacher's scale is asked.
    assert list(human["margin_target"]) == list(human["target"])
    angle = blend[blend["query_key"] == "angle bracket"]
    assert angle["group"].nunique() == 2
    assert list(blend[blend["source"] == "teacher"]["target"]) == [0.7, 0.4, 0.9]


def test_margins_on_the_teachers_scale_span_human_and_augmentation_pairs() -> None:
    frame = training_frame(
        human_pairs(), teacher_pairs(), HUMAN_TEACHER, LossConfig(margin_scale="teacher")
    )
    human = frame[frame["source"] == "human"]
    # Pointwise stays on the grades (weight 0); every margin is the teacher's.
    assert list(human["target"]) == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.665])
    assert list(human["margin_target"]) == pytest.approx(list(HUMAN_TEACHER))
    assert list(frame[frame["source"] == "teacher"]["margin_target"]) == [0.7, 0.4, 0.9]
    # One group per query: the three human and two augmentation "angle bracket" items.
    angle = frame[frame["query_key"] == "angle bracket"]
    assert len(angle) == 5 and angle["group"].nunique() == 1
    assert frame["group"].nunique() == 3


def test_teacher_targets_need_the_teachers_scores_of_every_human_pair() -> None:
    with pytest.raises(ValueError, match="teacher's scores of the human"):
        training_frame(human_pairs(), teacher_pairs(), None, LossConfig(margin_scale="teacher"))
    with pytest.raises(ValueError, match="each of the 5"):
        training_frame(
            human_pairs(),
            None,
            np.array([0.1, np.nan, 0.3, 0.4, 0.5]),
            LossConfig(human_teacher_weight=1),
        )
    # The default loss needs none and ignores any given.
    assert list(training_frame(human_pairs(), None, HUMAN_TEACHER)["target"]) == pytest.approx(
        [1.0, 0.5, 0.0, 1.0, 0.665]
    )


def test_assistant_scores_blend_into_both_targets() -> None:
    frame = training_frame(
        human_pairs(), teacher_pairs(), HUMAN_TEACHER, LossConfig(margin_scale="teacher")
    )
    assistant = np.linspace(0.1, 0.8, len(frame))
    blended = with_assistant(frame, assistant, 0.5)
    assert list(blended["target"]) == pytest.approx(list(0.5 * frame["target"] + 0.5 * assistant))
    assert list(blended["margin_target"]) == pytest.approx(
        list(0.5 * frame["margin_target"] + 0.5 * assistant)
    )
    assert list(blended["group"]) == list(frame["group"])
    with pytest.raises(ValueError, match="one assistant score"):
        with_assistant(frame, assistant[:-1], 0.5)


def test_training_frame_rejects_out_of_range_targets() -> None:
    bad = teacher_pairs().assign(teacher_score=[1.5, 0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        training_frame(human_pairs(), bad)


def test_lr_schedule_warms_up_then_decays() -> None:
    scales = [_lr_scale(step, 4, 20) for step in range(20)]
    assert scales[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert scales[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(scales[4:]))
    assert scales[-1] == pytest.approx(1 / 16)


def test_selection_subset_keeps_queries_with_two_grades() -> None:
    human = human_pairs().assign(grade=[3.0, 3.0, 3.0, 3.0, 2.0])
    subset = selection_subset(human, None, seed=0)
    assert set(subset["query_key"]) == {"hose"}


def test_train_student_saves_a_finished_run(tiny_student_dir: Path, tmp_path: Path) -> None:
    student = StudentConfig(
        backbone=str(tiny_student_dir), batch_size=4, items_per_query=3, epochs=2.0,
        eval_every_steps=2, validation_queries=None, threads=1,
    )  # fmt: skip
    out = tmp_path / "run"
    record = train_student(
        training_frame(human_pairs(), teacher_pairs()),
        human_pairs(),
        student,
        LossConfig(),
        out,
        {"name": "x"},
    )
    assert read_run(out) == record
    assert record["name"] == "x" and record["steps"] >= 4
    assert 0.0 <= record["validation_pairwise_accuracy"] <= 1.0
    assert record["history"][-1]["step"] == record["steps"]
    assert not (tmp_path / "run.tmp").exists()


def test_train_student_takes_margins_of_the_margin_targets(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill
    from training.losses import HybridDistillationLoss

    seen: list[tuple[list[float], list[float]]] = []

    class Spy(HybridDistillationLoss):
        def terms(self, logits, targets, groups, margin_targets=None):
            seen.append((targets.tolist(), margin_targets.tolist()))
            return super().terms(logits, targets, groups, margin_targets)

    monkeypatch.setattr(training.distill, "HybridDistillationLoss", Spy)
    frame = training_frame(
        human_pairs(), teacher_pairs(), HUMAN_TEACHER, LossConfig(margin_scale="teacher")
    )
    student = StudentConfig(
        backbone=str(tiny_student_dir), batch_size=4, items_per_query=3, epochs=1.0,
        eval_every_steps=100, validation_queries=None, threads=1,
    )  # fmt: skip
    train_student(frame, human_pairs(), student, LossConfig(), tmp_path / "run")
    # One epoch visits each row once: the margin targets fed are the frame's, not the
    # pointwise ones (which differ on the human rows).
    pointwise = sorted(t for batch, _ in seen for t in batch)
    margins = sorted(m for _, batch in seen for m in batch)
    assert margins == pytest.approx(sorted(frame["margin_target"]))
    assert pointwise == pytest.approx(sorted(frame["target"]))
    assert margins != pytest.approx(pointwise)


def _resumable_student(tiny_student_dir: Path) -> StudentConfig:
    return StudentConfig(
        backbone=str(tiny_student_dir), batch_size=4, items_per_query=3, epochs=3.0,
        eval_every_steps=2, validation_queries=None, threads=1, checkpoint_minutes=0,
        precision="fp32",
    )  # fmt: skip


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run / "model.safetensors")


def test_an_interrupted_student_resumes_where_it_stopped(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill
    from training.losses import HybridDistillationLoss

    frame = training_frame(human_pairs(), teacher_pairs())
    student = _resumable_student(tiny_student_dir)
    record = {"fingerprint": "f1"}
    whole = train_student(frame, human_pairs(), student, LossConfig(), tmp_path / "whole", record)

    calls = itertools.count(1)

    class StopsAtStep4(HybridDistillationLoss):
        def combine(self, terms):
            if next(calls) == 4:
                raise KeyboardInterrupt  # what SIGTERM becomes on the command line
            return super().combine(terms)

    monkeypatch.setattr(training.distill, "HybridDistillationLoss", StopsAtStep4)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_student(frame, human_pairs(), student, LossConfig(), run, record)
    assert not run.exists()
    assert (tmp_path / "run.checkpoint" / "state.pt").is_file()

    monkeypatch.undo()
    resumed = train_student(frame, human_pairs(), student, LossConfig(), run, record)
    assert resumed["resumed_at_step"] == 3 and whole["resumed_at_step"] is None
    assert resumed["history"] == [
        {**h, "elapsed_s": pytest.approx(h["elapsed_s"], abs=1e9)} for h in whole["history"]
    ]
    assert resumed["best_step"] == whole["best_step"]
    assert resumed["pairs_seen"] == whole["pairs_seen"]
    expected, got = _weights(tmp_path / "whole"), _weights(run)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
    # A finished run leaves no checkpoint behind.
    assert not (tmp_path / "run.checkpoint").exists()


def test_a_checkpoint_of_another_run_is_discarded(
    tiny_student_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill
    from training.losses import HybridDistillationLoss

    class StopsAtOnce(HybridDistillationLoss):
        calls = 0

        def combine(self, terms):
            StopsAtOnce.calls += 1
            if StopsAtOnce.calls == 3:
                raise KeyboardInterrupt
            return super().combine(terms)

    frame = training_frame(human_pairs(), teacher_pairs())
    student = _resumable_student(tiny_student_dir)
    monkeypatch.setattr(training.distill, "HybridDistillationLoss", StopsAtOnce)
    with pytest.raises(KeyboardInterrupt):
        train_student(
            frame, human_pairs(), student, LossConfig(), tmp_path / "run", {"fingerprint": "a"}
        )
    monkeypatch.undo()
    # Another fingerprint (another config or data) must start from scratch.
    other = train_student(
        frame, human_pairs(), student, LossConfig(), tmp_path / "run", {"fingerprint": "b"}
    )
    assert other["resumed_at_step"] is None


def test_bf16_autocast_trains_with_fp32_weights(tiny_student_dir: Path, tmp_path: Path) -> None:
    student = _resumable_student(tiny_student_dir).model_copy(
        update={"precision": "bf16", "epochs": 1.0}
    )
    record = train_student(
        training_frame(human_pairs(), teacher_pairs()),
        human_pairs(),
        student,
        LossConfig(),
        tmp_path / "run",
    )
    assert record["precision"] == "bf16"
    assert all(w.dtype == np.float32 for w in _weights(tmp_path / "run").values())
    assert np.isfinite(record["history"][-1]["loss"])
