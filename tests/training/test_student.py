"""Student: one tokenization path, term marks, query-grouped batches, clean ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.features import load_tokenizer
from training.config import StudentConfig
from training.student import (
    StudentError,
    build_student,
    load_student,
    predict_scores,
    query_grouped_batches,
    save_student,
)


def test_query_grouped_batches_cover_each_row_once_and_keep_queries_together() -> None:
    groups = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    batches = query_grouped_batches(
        groups, batch_size=8, items_per_query=4, rng=np.random.default_rng(0)
    )
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(groups)))
    assert all(len(b) <= 8 for b in batches)
    # Each batch holds at least one same-group pair whenever a chunk of >= 2 items is in it.
    with_pairs = sum(len(set(groups[b])) < len(b) for b in batches)
    assert with_pairs >= len(batches) - 1
    # Items of one group sit contiguously in their batch (chunks are never split).
    for b in batches:
        g = groups[b]
        assert len(np.flatnonzero(np.diff(g) != 0)) + 1 >= len(set(g))


def test_query_grouped_batches_reject_bad_sizes() -> None:
    with pytest.raises(ValueError):
        query_grouped_batches(np.zeros(3, dtype=int), 2, 4, np.random.default_rng(0))


@pytest.mark.slow
def test_default_student_exports_with_three_inputs(
    tiny_student_dir: Path, saved_student_dir: Path, fp32_package: Path
) -> None:
    import onnx

    from service.model_package import load_package

    # The saved tokenizer truncates pairs like the service and does not pad.
    saved_tokenizer = load_tokenizer(saved_student_dir / "tokenizer.json", 64)
    assert (
        saved_tokenizer.to_str() == load_tokenizer(tiny_student_dir / "tokenizer.json", 64).to_str()
    )
    graph = onnx.load(str(fp32_package / "model.fp32.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert load_package(fp32_package).manifest.inputs == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    model, tokenizer = build_student(StudentConfig(backbone=str(tiny_student_dir), seed=1))
    loaded, _ = load_student(saved_student_dir, 64)
    queries, titles = ["angle bracket"], ["Simpson angle bracket"]
    with torch.inference_mode():
        assert np.allclose(
            predict_scores(model, tokenizer, queries, titles),
            predict_scores(loaded, tokenizer, queries, titles),
        )


def test_smaller_student_keeps_the_chosen_layers_of_its_backbone(
    tiny_student_dir: Path, tmp_path: Path
) -> None:
    full, tokenizer = build_student(StudentConfig(backbone=str(tiny_student_dir), seed=4))
    small, _ = build_student(StudentConfig(backbone=str(tiny_student_dir), seed=4, layers=(1,)))
    assert len(small.bert.encoder.layer) == 1 and small.config.num_hidden_layers == 1
    kept, source = small.bert.encoder.layer[0].state_dict(), full.bert.encoder.layer[1]
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(kept[name], tensor)
    # it runs, differs from the full model, and saves/loads with its one layer
    queries, titles = ["angle bracket"], ["Simpson angle bracket"]
    assert not np.allclose(
        predict_scores(full, tokenizer, queries, titles),
        predict_scores(small, tokenizer, queries, titles),
    )
    save_student(small, str(tiny_student_dir), tmp_path / "small", 64)
    loaded, _ = load_student(tmp_path / "small", 64)
    assert loaded.config.num_hidden_layers == 1
    with pytest.raises(StudentError, match="encoder layers"):
        build_student(StudentConfig(backbone=str(tiny_student_dir), layers=(5,)))


def test_layers_at_none_keep_old_fingerprints() -> None:
    from training.config import load_config

    base = load_config(environ={})
    assert base.fingerprint("student") == load_config(
        overrides={"student": {"layers": None}}, environ={}
    ).fingerprint("student")
    assert base.fingerprint("student") != load_config(
        overrides={"student": {"layers": [0, 2]}}, environ={}
    ).fingerprint("student")
