"""The committee: identity, scores (mean of members), label cache, and its stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.artifacts import PipelineError, load_augmentation, read_run
from training.committee import (
    committee_id,
    committee_scores,
    read_committee_labels,
    write_committee_labels,
)
from training.stages import stage_committee
from training.student import load_student, predict_scores

PAIRS = pd.DataFrame(
    {
        "query_key": ["a", "a", "b"],
        "product_id": ["1", "2", "3"],
        "query": ["angle bracket", "angle bracket", "deck screw"],
        "title": ["Simpson Angle", "Garden Hose", "Deck Screw Box"],
    }
)


def _run(tmp_path: Path, saved_student_dir: Path, name: str, fingerprint: str) -> Path:
    run = tmp_path / name
    shutil.copytree(saved_student_dir, run)
    (run / "run.json").write_text(json.dumps({"name": name, "fingerprint": fingerprint}))
    return run


def test_committee_id_follows_members_and_their_training(
    tmp_path: Path, saved_student_dir: Path
) -> None:
    a = _run(tmp_path, saved_student_dir, "a", "f1")
    b = _run(tmp_path, saved_student_dir, "b", "f2")
    first = committee_id([a, b])
    assert first.startswith("committee-") and first == committee_id([a, b])
    assert committee_id([b, a]) != first  # order is part of the identity
    (b / "run.json").write_text(json.dumps({"name": "b", "fingerprint": "retrained"}))
    assert committee_id([a, b]) != first
    with pytest.raises(FileNotFoundError, match="not a finished student run"):
        committee_id([tmp_path / "missing"])


def test_committee_scores_are_the_members_mean(tmp_path: Path, saved_student_dir: Path) -> None:
    a = _run(tmp_path, saved_student_dir, "a", "f1")
    labels = committee_scores([a, a], PAIRS, max_length=64, batch_size=2)
    model, tokenizer = load_student(a, 64)
    expected = predict_scores(model, tokenizer, PAIRS["query"].tolist(), PAIRS["title"].tolist())
    np.testing.assert_allclose(labels["member:a"], expected, atol=1e-6)
    np.testing.assert_allclose(labels["teacher_score"], expected, atol=1e-6)
    assert list(labels["product_id"]) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="at least one member"):
        committee_scores([], PAIRS, max_length=64)
    path = write_committee_labels(labels, tmp_path / "labels" / "c.csv")
    again = read_committee_labels(path)
    np.testing.assert_allclose(again["teacher_score"], labels["teacher_score"], atol=1e-6)
    assert again["product_id"].tolist() == ["1", "2", "3"]  # ids stay strings
    assert read_committee_labels(tmp_path / "none.csv") is None


def test_committee_stage_labels_with_the_mean_and_distills_a_student(tiny_pipeline) -> None:
    committee_dir = tiny_pipeline.get("committee")
    config, dataset = tiny_pipeline.config, tiny_pipeline.dataset
    wanted = config.committee.augment_pairs
    members = list(config.committee.members)
    assert committee_dir.name == f"committee-n{wanted}"
    record = read_run(committee_dir)
    assert record["labels_from"] == "committee" and record["committee"] == members
    assert record["train_pairs_by_source"]["teacher"] == wanted
    labels_file = Path(config.paths.labels_dir) / record["committee_labels"]
    labels = pd.read_csv(labels_file, dtype={"query_key": str, "product_id": str})
    augmentation = load_augmentation(config, dataset)
    assert list(labels["product_id"]) == list(augmentation["product_id"][:wanted])
    columns = [f"member:{name}" for name in members]
    assert labels["teacher_score"].to_numpy() == pytest.approx(
        labels[columns].mean(axis=1).to_numpy(), abs=1e-5
    )
    human_dir = committee_dir.parent / "human-only"
    model, tokenizer = load_student(human_dir, config.student.max_length)
    first = augmentation.head(3)
    assert labels["member:human-only"][:3].to_numpy() == pytest.approx(
        predict_scores(model, tokenizer, first["query"].tolist(), first["title"].tolist()),
        abs=1e-5,
    )
    stamp = (committee_dir / "run.json").stat().st_mtime_ns
    labels_stamp = labels_file.stat().st_mtime_ns
    assert stage_committee(config) == committee_dir  # labels cached, student current
    assert (committee_dir / "run.json").stat().st_mtime_ns == stamp
    assert labels_file.stat().st_mtime_ns == labels_stamp


def test_committee_stage_names_missing_members(tiny_pipeline) -> None:
    config = tiny_pipeline.config
    from training.config import CommitteeConfig

    with pytest.raises(PipelineError, match=r"committee\.members is empty"):
        stage_committee(config.model_copy(update={"committee": CommitteeConfig()}))
    ghost = CommitteeConfig(members=("human-only", "distill-n0"), augment_pairs=4)
    with pytest.raises(PipelineError, match="distill-n0 is not a finished student run"):
        stage_committee(config.model_copy(update={"committee": ghost}))
