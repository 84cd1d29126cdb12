"""Tiny end-to-end run: tiny teacher -> labels -> tiny students -> evaluation report."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from service.model_package import load_package
from training import pipeline
from training.__main__ import main
from training.config import CommitteeConfig, TrainConfig, load_config
from training.distill import read_run
from training.label import read_labels
from training.pipeline import (
    PipelineError,
    augmentation_labels_path,
    curve_sizes,
    ensure_default,
    load_augmentation,
    load_dataset,
    split_labels_path,
    stage_committee,
    stage_distill,
    stage_evaluate,
    stage_export,
    stage_label,
    stage_teacher,
    students_dir,
    teacher_labeled_augmentation,
)
from training.student import load_student, predict_scores


def tiny_config(root: Path, data: Path, teacher_base: Path, student_dir: Path) -> TrainConfig:
    return load_config(
        overrides={
            "paths": {
                "data": str(data),
                "labels_dir": str(root / "labels"),
                "runs_dir": str(root / "runs"),
                "models_dir": str(root / "models"),
                "docs_dir": str(root / "docs"),
                "teacher_cache_dir": str(root / "cache"),
                "teacher_checkpoints": str(root / "checkpoints" / "teacher"),
            },
            "split": {"seed": 3, "train": 0.5, "validation": 0.25, "test": 0.25},
            "teacher": {
                "base": str(teacher_base),
                "lora_layers": 1,
                "lora_r": 4,
                "batch_size": 8,
                "train_pairs": 32,
                "warmup_steps": 1,
                "threads": 1,
                "max_length": 48,
            },
            "augment": {
                "bm25_per_query": 3,
                "random_per_query": 1,
                "generated_queries": 8,
                "bm25_per_generated": 2,
                "seed": 1,
            },
            "label": {"eval_queries": 3, "threads": 1, "chunk_size": 16, "batch_size": 8},
            "student": {
                "backbone": str(student_dir),
                "batch_size": 8,
                "items_per_query": 4,
                "epochs": 1.0,
                "eval_every_steps": 3,
                "validation_queries": None,
                "threads": 1,
                "learning_rate": 1e-3,
            },
            "curve": {"augment_multiples": [0.5]},
            "export": {"variants": ["fp32"]},
            "evaluate": {
                "embedding_backbone": str(student_dir),
                "latency_pairs": 16,
                "teacher_latency_pairs": 4,
                "batch_size": 8,
                "threads": 1,
            },
        },
        environ={},
    )


@pytest.mark.slow
def test_tiny_end_to_end(
    tmp_path: Path,
    tiny_dataset: Path,
    tiny_teacher_base: Path,
    tiny_student_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tiny_config(tmp_path, tiny_dataset, tiny_teacher_base, tiny_student_dir)
    dataset = load_dataset(config)
    assert all(len(part) for part in dataset.splits.values())

    with pytest.raises(PipelineError, match="teacher package"):
        stage_distill(config, sizes=[10])

    # teacher: trains, writes a package, then skips when nothing changed
    package = stage_teacher(config)
    assert package is not None and (package / "manifest.json").is_file()
    manifest_time = (package / "manifest.json").stat().st_mtime_ns
    assert stage_teacher(config) == package
    assert (package / "manifest.json").stat().st_mtime_ns == manifest_time
    # Thread count is not part of the teacher's identity; the LoRA rank is.
    threads = replace(config.teacher, threads=2, checkpoint_minutes=7.0)
    assert stage_teacher(config.model_copy(update={"teacher": threads})) == package
    rank = replace(config.teacher, lora_r=8)
    with pytest.raises(PipelineError, match="lora_r: checkpoint 4, config 8"):
        stage_teacher(config.model_copy(update={"teacher": rank}))

    # label: a fixed sample of test queries, then the augmentation prefix of the curve
    (size,) = curve_sizes(config, dataset)
    counts = stage_label(config)
    test_labels = split_labels_path(config, dataset, "test")
    assert test_labels.name.startswith("test-3q-")
    assert counts["test"] == len(read_labels(test_labels)) > 0
    assert counts["augmentation"] == size
    augmentation = load_augmentation(config, dataset)
    held_out = set(dataset.splits["validation"]["query_key"]) | set(
        dataset.splits["test"]["query_key"]
    )
    assert not held_out & set(augmentation["query_key"])
    before = augmentation_labels_path(config, dataset).read_text()
    stage_label(config)  # resumes: nothing left to label
    assert augmentation_labels_path(config, dataset).read_text() == before
    labeled = teacher_labeled_augmentation(config, dataset, size)
    assert list(labeled["product_id"]) == list(augmentation["product_id"][:size])
    assert labeled["teacher_score"].between(0, 1).all()

    # distill: human-only and distilled students; a re-run skips both
    out_dirs = stage_distill(config)
    assert [d.name for d in out_dirs] == ["human-only", f"distill-n{size}"]
    records = [read_run(d) for d in out_dirs]
    assert records[0]["train_pairs_by_source"] == {"human": len(dataset.splits["train"])}
    assert records[1]["train_pairs_by_source"]["teacher"] == size
    for d in out_dirs:
        assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
        assert (d / "train_config.json").is_file()
    stamp = (out_dirs[1] / "run.json").stat().st_mtime_ns
    config_file = config.save(tmp_path / "config.json")
    assert main(["distill", "--config", str(config_file)]) == 0
    assert (out_dirs[1] / "run.json").stat().st_mtime_ns == stamp
    with pytest.raises(PipelineError, match="label --limit"):
        stage_distill(config, sizes=[size + 1])

    # committee: the two first-round students label a larger augmentation prefix with
    # their mean score (cached), and a fresh student is distilled from it.
    with pytest.raises(PipelineError, match=r"committee\.members is empty"):
        stage_committee(config)
    wanted = min(2 * size, len(augmentation))
    committee = CommitteeConfig(members=("human-only", f"distill-n{size}"), augment_pairs=wanted)
    config = config.model_copy(update={"committee": committee})
    committee_dir = stage_committee(config)
    assert committee_dir.name == f"committee-n{wanted}"
    committee_record = read_run(committee_dir)
    assert committee_record["labels_from"] == "committee"
    assert committee_record["train_pairs_by_source"]["teacher"] == wanted
    labels_file = tmp_path / "labels" / committee_record["committee_labels"]
    committee_labels = pd.read_csv(labels_file, dtype={"query_key": str, "product_id": str})
    assert list(committee_labels["product_id"]) == list(augmentation["product_id"][:wanted])
    member_columns = ["member:human-only", f"member:distill-n{size}"]
    assert committee_labels["teacher_score"].to_numpy() == pytest.approx(
        committee_labels[member_columns].mean(axis=1).to_numpy(), abs=1e-5
    )
    model, tokenizer = load_student(out_dirs[0], config.student.max_length)
    first = augmentation.head(3)
    assert committee_labels["member:human-only"][:3].to_numpy() == pytest.approx(
        predict_scores(model, tokenizer, first["query"].tolist(), first["title"].tolist()),
        abs=1e-5,
    )
    stamp = (committee_dir / "run.json").stat().st_mtime_ns
    assert stage_committee(config) == committee_dir  # labels cached, student current
    assert (committee_dir / "run.json").stat().st_mtime_ns == stamp
    records.append(committee_record)

    # evaluate: every system, a teacher-sample table, slices, plot and report
    results = stage_evaluate(config, command="python -m training evaluate --config tiny.json")
    names = [s["name"] for s in results["systems"]]
    assert names[:3] == ["BM25", "MiniLM embedding cosine (zero-shot)", "student: human-only"]
    assert names[3:5] == [f"student: distill-n{size}", f"student: committee-n{wanted}"]
    by_name = {s["name"]: s for s in results["systems"]}
    assert by_name[f"student: committee-n{wanted}"]["labels_from"] == "committee"
    assert by_name[f"student: distill-n{size}"]["labels_from"] == "teacher"
    assert by_name["student: human-only"]["labels_from"] is None
    committee_row = by_name[f"committee teacher of committee-n{wanted}"]
    assert committee_row["kind"] == "committee"
    subset = results["teacher_subset"]
    assert subset is not None and subset["queries"] == 3
    teacher = [s for s in subset["systems"] if s["kind"] == "teacher"]
    assert len(teacher) == 1 and teacher[0]["latency_ms_per_pair"] > 0
    for system in results["systems"]:
        assert 0.0 <= system["metrics"]["pairwise_accuracy"] <= 1.0
        assert set(system["slices"]) == {"long", "rare_term", "long_tail", "rest"}
    report = (tmp_path / "docs" / "evaluation.md").read_text()
    assert "python -m training evaluate --config tiny.json" in report
    assert "Teacher-labeled sample" in report and "Long-tail slices" in report
    assert (tmp_path / "docs" / "evaluation_curve.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "runs" / "evaluation" / "test.json").read_text())
    assert saved["findings"]
    assert isinstance(pd.DataFrame(saved["systems"]), pd.DataFrame)
    assert students_dir(config).is_dir()

    # export: the student best on validation becomes the default package
    package_dir = stage_export(config)
    manifest = load_package(package_dir).manifest
    chosen = manifest.provenance["student"]["run"]
    best = max(records, key=lambda r: r["validation_pairwise_accuracy"])
    assert chosen == best["name"]
    assert manifest.evaluation["student"] == next(
        s["metrics"] for s in saved["systems"] if s["name"] == f"student: {chosen}"
    )
    assert manifest.provenance["data"]["sha256"] == dataset.sha256
    assert manifest.max_length == config.student.max_length
    stamp = (package_dir / "manifest.json").stat().st_mtime_ns
    assert stage_export(config) == package_dir  # up to date: skipped
    assert (package_dir / "manifest.json").stat().st_mtime_ns == stamp
    # Once a package is shipped, the report also scores it the way the service does.
    served = [s for s in stage_evaluate(config)["systems"] if s["kind"] == "package"]
    assert len(served) == 1 and "ONNX fp32" in served[0]["name"]
    exported = next(s for s in saved["systems"] if s["name"] == f"student: {chosen}")
    assert served[0]["metrics"]["pairwise_accuracy"] == pytest.approx(
        exported["metrics"]["pairwise_accuracy"], abs=0.02
    )
    assert "another training" not in served[0]["notes"]
    # The run retrained under other settings keeps its name: the report must say the
    # package is not that run's export.
    record_path = students_dir(config) / chosen / "run.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "fingerprint": "retrained000"}))
    frame = dataset.splits[config.evaluate.split]
    (package_row,) = pipeline._score_package(config, frame, frame.head(8))
    assert "another training (fingerprint retrained000)" in package_row.notes
    record_path.write_text(json.dumps(record))

    # ensure-default with the package gone: rebuilt from the students and cached labels,
    # the teacher never runs.
    def no_teacher(*_: object, **__: object) -> None:
        raise AssertionError("ensure-default must not run the teacher")

    monkeypatch.setattr(pipeline, "LazyTeacher", no_teacher)
    monkeypatch.setattr(pipeline, "stage_teacher", no_teacher)
    shutil.rmtree(package_dir)
    assert ensure_default(config) == package_dir
    assert load_package(package_dir).manifest.provenance["student"]["run"] == chosen


def test_ensure_default_keeps_a_verified_package(
    tmp_path: Path, fp32_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(overrides={"paths": {"models_dir": str(tmp_path)}}, environ={})
    shutil.copytree(fp32_package, config.default_package_dir)
    built: list[TrainConfig] = []
    monkeypatch.setattr(pipeline, "rebuild_default", lambda c: built.append(c))
    assert main(["ensure-default", "--set", f"paths.models_dir={json.dumps(str(tmp_path))}"]) == 0
    assert ensure_default(config) == config.default_package_dir and not built
    # A corrupt file fails verification: the package is rebuilt from cached inputs.
    (config.default_package_dir / "tokenizer.json").write_text("{}")
    ensure_default(config)
    assert built == [config]
