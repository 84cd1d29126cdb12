"""The training stages on the tiny pipeline: teacher, label, distill (committee: test_committee)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from training.__main__ import main
from training.artifacts import (
    PipelineError,
    augmentation_labels_path,
    curve_sizes,
    load_augmentation,
    load_dataset,
    read_run,
    split_labels_path,
    students_dir,
    teacher_labeled_augmentation,
)
from training.label import packed_path, read_labels
from training.stages import stage_distill, stage_label, stage_teacher


def test_distill_needs_a_teacher_package_first(tmp_path: Path, make_tiny_config) -> None:
    config = make_tiny_config(tmp_path)
    with pytest.raises(PipelineError, match="teacher package"):
        stage_distill(config, sizes=[10])


def test_teacher_stage_writes_a_package_and_then_skips(tiny_pipeline) -> None:
    package = tiny_pipeline.get("teacher")
    config = tiny_pipeline.config
    assert package is not None and (package / "manifest.json").is_file()
    manifest_time = (package / "manifest.json").stat().st_mtime_ns
    assert stage_teacher(config) == package
    assert (package / "manifest.json").stat().st_mtime_ns == manifest_time
    # Thread count is not part of the teacher's identity; the LoRA rank is.
    threads = replace(config.teacher, threads=2, checkpoint_minutes=7.0)
    assert stage_teacher(config.model_copy(update={"teacher": threads})) == package
    assert (package / "manifest.json").stat().st_mtime_ns == manifest_time
    rank = replace(config.teacher, lora_r=8)
    with pytest.raises(PipelineError, match="lora_r: checkpoint 4, config 8"):
        stage_teacher(config.model_copy(update={"teacher": rank}))


def test_label_stage_labels_a_test_sample_then_the_augmentation_prefix(tiny_pipeline) -> None:
    counts = tiny_pipeline.get("label")
    config, dataset = tiny_pipeline.config, tiny_pipeline.dataset
    (size,) = curve_sizes(config, dataset)
    test_labels = split_labels_path(config, dataset, "test")
    assert test_labels.name.startswith("test-3q-")
    assert counts["test"] == len(read_labels(test_labels)) > 0
    assert counts["augmentation"] == size
    augmentation = load_augmentation(config, dataset)
    held_out = set(dataset.splits["validation"]["query_key"]) | set(
        dataset.splits["test"]["query_key"]
    )
    assert not held_out & set(augmentation["query_key"])
    # What is committed: the sealed (gzip) label file, not the plain one labeling appends to.
    path = augmentation_labels_path(config, dataset)
    assert not path.exists() and packed_path(path).is_file()
    before = packed_path(path).read_bytes()
    stage_label(config)  # resumes: nothing left to label
    assert packed_path(path).read_bytes() == before
    labeled = teacher_labeled_augmentation(config, dataset, size)
    assert list(labeled["product_id"]) == list(augmentation["product_id"][:size])
    assert labeled["teacher_score"].between(0, 1).all()
    with pytest.raises(PipelineError, match="label --limit"):
        teacher_labeled_augmentation(config, dataset, len(augmentation) + 1)


def test_label_stage_hands_the_ray_engine_the_same_pairs_and_cache(
    tiny_pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.label_ray

    config, dataset = tiny_pipeline.config, tiny_pipeline.dataset
    calls = []

    def fake_ray(pairs, path, **kwargs):
        calls.append((len(pairs), path, kwargs))
        return read_labels(path)

    monkeypatch.setattr(training.label_ray, "label_pairs_ray", fake_ray)
    ray_config = config.model_copy(
        update={"label": config.label.model_copy(update={"engine": "ray", "ray_actors": 3})}
    )
    stage_label(ray_config)
    (test_call, augmentation_call) = calls
    assert test_call[1] == split_labels_path(config, dataset, "test")
    assert augmentation_call[1] == augmentation_labels_path(config, dataset)
    assert augmentation_call[2]["limit"] == max(curve_sizes(config, dataset))
    assert augmentation_call[2]["actors"] == 3
    assert augmentation_call[2]["package_dir"] == config.teacher_package_dir


def test_distill_stage_trains_one_student_per_size_and_then_skips(
    tiny_pipeline, tmp_path: Path
) -> None:
    out_dirs = tiny_pipeline.get("distill")
    config, dataset = tiny_pipeline.config, tiny_pipeline.dataset
    (size,) = curve_sizes(config, dataset)
    assert [d.name for d in out_dirs] == ["human-only", f"distill-n{size}"]
    human, distilled = (read_run(d) for d in out_dirs)
    assert human["train_pairs_by_source"] == {"human": len(dataset.splits["train"])}
    assert human["teacher_id"] is None and human["augment_sources"] == {}
    assert distilled["train_pairs_by_source"]["teacher"] == size
    assert distilled["teacher_id"].startswith("teacher-") and distilled["augment_version"]
    assert sum(distilled["augment_sources"].values()) == size
    assert human["fingerprint"] != distilled["fingerprint"]
    for d in out_dirs:
        assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
        assert (d / "train_config.json").is_file()
    stamp = (out_dirs[1] / "run.json").stat().st_mtime_ns
    config_file = config.save(tmp_path / "config.json")
    assert main(["distill", "--config", str(config_file)]) == 0
    assert (out_dirs[1] / "run.json").stat().st_mtime_ns == stamp
    # A size with too few labels is named with the fix, through the CLI too.
    assert main(["distill", "--config", str(config_file), "--size", str(10**6)]) == 2


def test_distilled_students_learn_the_teachers_scores_of_the_human_pairs(
    pipeline_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill

    label = pipeline_copy.label.model_copy(update={"eval_queries": 0, "splits": ("test", "train")})
    loss = pipeline_copy.loss.model_copy(
        update={"human_teacher_weight": 1.0, "margin_scale": "teacher"}
    )
    config = pipeline_copy.model_copy(update={"label": label, "loss": loss})
    dataset = load_dataset(config)
    (size,) = curve_sizes(config, dataset)
    with pytest.raises(PipelineError, match="lacks teacher scores"):
        stage_distill(config, sizes=[size])
    counts = stage_label(config, splits=["train"])
    assert counts["train"] == len(dataset.splits["train"])
    frames = []
    real_train = training.distill.train_student

    def spy(frame, *args, **kwargs):
        frames.append(frame)
        return real_train(frame, *args, **kwargs)

    monkeypatch.setattr(training.distill, "train_student", spy)
    human_only = students_dir(config) / "human-only"
    stamp = (human_only / "run.json").stat().st_mtime_ns
    stage_distill(config, sizes=[0, size])
    # The human-only baseline is current (it never learns from the teacher): not retrained.
    assert (human_only / "run.json").stat().st_mtime_ns == stamp
    (frame,) = frames
    labels = read_labels(split_labels_path(config, dataset, "train")).set_index(
        ["query_key", "product_id"]
    )["teacher_score"]
    human = frame[frame["source"] == "human"]
    expected = labels.loc[list(zip(human["query_key"], human["product_id"], strict=True))]
    assert len(human) == len(dataset.splits["train"])
    assert human["target"].tolist() == pytest.approx(expected.tolist())
    assert human["margin_target"].tolist() == pytest.approx(expected.tolist())
    grades = (dataset.splits["train"]["grade"] - 1) / 2
    assert human["target"].tolist() != pytest.approx(grades.tolist())
    # One margin group per query, human and augmentation items together.
    assert (frame.groupby("query_key")["group"].nunique() == 1).all()
    record = read_run(students_dir(config) / f"distill-n{size}")
    assert record["targets"] == {"human_teacher_weight": 1.0, "margin_scale": "teacher"}


def test_distill_trains_a_second_seed_at_both_ends(pipeline_copy) -> None:
    from safetensors.torch import load_file

    curve = pipeline_copy.curve.model_copy(update={"end_seeds": (5,)})
    config = pipeline_copy.model_copy(update={"curve": curve})
    (size,) = curve_sizes(config, load_dataset(config))
    out = stage_distill(config)
    assert [d.name for d in out] == [
        "human-only",
        f"distill-n{size}",
        "human-only-seed5",
        f"distill-n{size}-seed5",
    ]
    for base_dir, seeded_dir in ((out[0], out[2]), (out[1], out[3])):
        base, seeded = read_run(base_dir), read_run(seeded_dir)
        assert base["seed"] == config.student.seed != 5
        assert seeded["seed"] == 5 and seeded["config"]["student"]["seed"] == 5
        assert seeded["variant_of"] == base["name"]
        # Same rows and the same validation queries; only the seed differs, and so do the
        # trained weights.
        assert seeded["train_pairs_by_source"] == base["train_pairs_by_source"]
        assert seeded["validation_selection"] == base["validation_selection"]
        assert seeded["fingerprint"] != base["fingerprint"]
        a = load_file(base_dir / "model.safetensors")
        b = load_file(seeded_dir / "model.safetensors")
        assert not all(a[k].equal(b[k]) for k in a)


def test_two_builders_of_one_augmentation_set_do_not_collide(
    tmp_path: Path, make_tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two distill workers started side by side both build the set: the one that finishes
    second must not find its temporary file renamed away by the first."""
    import pandas as pd

    config = make_tiny_config(tmp_path)
    dataset = load_dataset(config)
    write = pd.DataFrame.to_csv
    nested: list[int] = []

    def write_while_another_finishes(frame, path, *args, **kwargs):
        write(frame, path, *args, **kwargs)
        if not nested:  # the other worker writes and renames before this one renames
            nested.append(0)
            nested[0] = len(load_augmentation(config, dataset))

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_while_another_finishes)
    first = load_augmentation(config, dataset)
    assert nested == [len(first)] and len(first) > 0
    augment_dir = config.path("runs_dir") / "augment"
    assert [p.suffix for p in augment_dir.iterdir()] == [".csv"]
