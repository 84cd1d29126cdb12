"""Smaller students: the L6 run's layers and rows, its scores as an assistant; export, cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.artifacts import PipelineError, curve_sizes, load_dataset, read_run, students_dir
from training.small import ASSISTANT_SCORES, packages_dir, read_cost, source_run, stage_small


def _small_config(config, **small):
    settings = {"layers": ((1,),), "cost_variant": "fp32", "cost_threads": 1, "cost_pairs": 16}
    return config.model_copy(update={"small": config.small.model_copy(update=settings | small)})


def test_small_student_starts_from_the_sources_layers_and_learns_its_rows(
    pipeline_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.distill
    from training.recipe import distill_frame
    from training.student import build_student, load_student, predict_scores

    config = _small_config(pipeline_copy, assistant_weight=0.5)
    dataset = load_dataset(config)
    (size,) = curve_sizes(config, dataset)
    source = source_run(config, dataset)
    assert source == f"distill-n{size}"
    source_dir = students_dir(config) / source
    calls = []
    real_train = training.distill.train_student

    def spy(frame, validation, student, loss, out_dir, record, **kwargs):
        calls.append((frame, student, record, kwargs))
        return real_train(frame, validation, student, loss, out_dir, record, **kwargs)

    monkeypatch.setattr(training.distill, "train_student", spy)
    (out,) = stage_small(config)
    ((frame, student, _record, kwargs),) = calls
    assert out.name == f"{source}-l1"
    # The student is built from the source run: its layer 1 is the small one's layer 0,
    # the embeddings and the head are the source's too.
    assert student.backbone == str(source_dir) and student.layers == (1,)
    small, _ = build_student(student)
    trained, _ = load_student(source_dir, config.student.max_length)
    assert len(small.bert.encoder.layer) == 1
    for name, tensor in trained.bert.encoder.layer[1].state_dict().items():
        torch.testing.assert_close(small.bert.encoder.layer[0].state_dict()[name], tensor)
    torch.testing.assert_close(small.classifier.weight, trained.classifier.weight)
    torch.testing.assert_close(
        small.bert.embeddings.word_embeddings.weight, trained.bert.embeddings.word_embeddings.weight
    )
    # Its rows are the source's (human pairs + the same augmentation), half-way to the
    # source student's own scores (the teacher assistant).
    base = distill_frame(config, dataset, None if not size else _labeled(config, dataset, size))
    assert len(frame) == len(base) == read_run(source_dir)["train_pairs"]
    assistant = predict_scores(
        trained, _tokenizer(source_dir), base["query"].tolist(), base["title"].tolist()
    )
    np.testing.assert_allclose(frame["target"], 0.5 * base["target"] + 0.5 * assistant, atol=1e-5)
    assert (source_dir / ASSISTANT_SCORES).is_file()
    assert kwargs == {"selection_seed": config.student.seed}
    saved = read_run(out)
    assert saved["layers"] == [1] and saved["source_run"] == source
    assert saved["assistant_weight"] == 0.5 and saved["augment_pairs"] == size
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    # Exported by the export code and timed next to its source, on the same pairs.
    from service.model_package import load_package

    for run in (source, out.name):
        package = load_package(packages_dir(config) / run)
        assert package.manifest.provenance["student"]["run"] == run
        cost = read_cost(config, run)
        assert cost["ms_per_pair"] > 0 and cost["pairs"] == 16 and cost["variant"] == "fp32"
        assert cost["relative_to"] == source
    assert read_cost(config, source)["speedup"] == pytest.approx(1.0)
    # A second run finds everything current.
    stamp = (out / "run.json").stat().st_mtime_ns
    calls.clear()
    stage_small(config)
    assert not calls and (out / "run.json").stat().st_mtime_ns == stamp


def _labeled(config, dataset, size):
    from training.artifacts import teacher_labeled_augmentation

    return teacher_labeled_augmentation(config, dataset, size)


def _tokenizer(run_dir: Path):
    from service.features import load_tokenizer

    return load_tokenizer(run_dir / "tokenizer.json", 64)


def test_small_stage_names_what_is_missing(pipeline_copy) -> None:
    assert stage_small(pipeline_copy) == []  # no small.layers: nothing to do
    with pytest.raises(PipelineError, match="not a finished student run"):
        stage_small(_small_config(pipeline_copy, source="distill-n999"))
    with pytest.raises(PipelineError, match="cost_variant 'int8'"):
        stage_small(_small_config(pipeline_copy, cost_variant="int8"))
