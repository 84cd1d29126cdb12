"""Teacher fine-tuning: bucketed batches, truncation, and resume equal to an uninterrupted run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from relevance_core.teacher import TeacherConfig, load_base, teacher_id
from training.teacher import (
    CHECKPOINT_FILES,
    bucketed_batches,
    soft_targets,
    train_teacher,
    with_random_negatives,
    write_teacher_package,
)


def test_soft_targets_spread_mean_grades_over_neighbouring_classes():
    targets = soft_targets(np.array([1.0, 2.33, 3.0, 1.5]))
    np.testing.assert_allclose(targets[0], [1, 0, 0])
    np.testing.assert_allclose(targets[1], [0, 0.67, 0.33], atol=1e-6)
    np.testing.assert_allclose(targets[2], [0, 0, 1])
    np.testing.assert_allclose(targets[3], [0.5, 0.5, 0])


def test_bucketed_batches_cover_every_pair_once_per_epoch_and_pad_little():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=1000)
    batches = bucketed_batches(lengths, batch_size=16, window=8, seed=3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_order = [np.arange(1000)[i : i + 16] for i in range(0, 1000, 16)]
    padded_random = sum(len(b) * lengths[b].max() for b in random_order)
    assert padded < 0.8 * padded_random
    # deterministic for a seed, different for another
    again = bucketed_batches(lengths, batch_size=16, window=8, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = bucketed_batches(lengths, batch_size=16, window=8, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=True))


def test_bucketed_batches_fractional_and_multiple_epochs():
    lengths = np.arange(100)
    assert len(bucketed_batches(lengths, 10, 2, seed=0, epochs=0.5)) == 5
    two = bucketed_batches(lengths, 10, 2, seed=0, epochs=2.0)
    assert len(two) == 20
    counts = np.bincount(np.concatenate(two), minlength=100)
    assert (counts == 2).all()


def test_random_negatives_pair_queries_with_other_queries_items_graded_irrelevant():
    queries = ["drill", "drill", "hose", "hose", "bulb"]
    titles = ["Drill A", "Drill B", "Hose A", "Hose B", "Bulb A"]
    grades = [3.0, 2.0, 3.0, 2.33, 3.0]
    q, t, g = with_random_negatives(queries, titles, grades, rate=2.0, seed=1)
    assert q[:5] == queries and t[:5] == titles and list(g[:5]) == grades
    assert len(q) == 5 + 6  # 2 per distinct query
    owner = dict(zip(titles, queries, strict=True))
    for query, title, grade in zip(q[5:], t[5:], g[5:], strict=True):
        assert owner[title] != query and grade == 1.0
    again = with_random_negatives(queries, titles, grades, rate=2.0, seed=1)
    assert again[1] == t
    assert with_random_negatives(queries, titles, grades, rate=0.0, seed=1)[0] == queries
    one_query = with_random_negatives(["drill"] * 2, ["A", "B"], [3.0, 2.0], rate=1.0, seed=1)
    assert one_query[0] == ["drill", "drill"]


def test_truncated_teacher_keeps_only_lower_layers(tiny_teacher_base: Path, tmp_path: Path):
    config = TeacherConfig(base=str(tiny_teacher_base), keep_layers=1)
    model, _ = load_base(config, tmp_path)
    assert len(model.model.layers) == 1
    assert model.config.num_hidden_layers == 1
    full, _ = load_base(replace(config, keep_layers=0), tmp_path)
    assert len(full.model.layers) == 2


def _pairs(tiny_dataset: Path) -> pd.DataFrame:
    frame = pd.read_csv(tiny_dataset)
    return frame.rename(columns={"search_term": "query", "product_title": "title"})


def _adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "adapter_model.safetensors")


def test_resumed_training_reproduces_the_uninterrupted_run(
    tiny_dataset: Path, tiny_teacher_base: Path, tmp_path: Path
):
    frame = _pairs(tiny_dataset)
    config = TeacherConfig(
        base=str(tiny_teacher_base),
        batch_size=8,
        lora_r=4,
        lora_layers=0,
        warmup_steps=2,
        bucket_window=2,
        threads=1,
        random_negatives=0.0,
    )
    args = (frame["query"].tolist(), frame["title"].tolist(), frame["relevance"].to_numpy())
    whole = train_teacher(*args, config, tmp_path / "whole", tmp_path / "cache")
    state = json.loads((whole / "state.json").read_text())
    assert state["step"] == state["total_steps"] == 12  # 96 pairs / 8

    stopped = train_teacher(*args, config, tmp_path / "split", tmp_path / "cache", max_steps=5)
    assert json.loads((stopped / "state.json").read_text())["step"] == 5
    resumed = train_teacher(*args, config, tmp_path / "split", tmp_path / "cache")
    resumed_state = json.loads((resumed / "state.json").read_text())
    assert resumed_state["step"] == 12
    assert resumed_state["losses"] == pytest.approx(state["losses"], abs=1e-6)
    whole_weights, resumed_weights = _adapter(whole), _adapter(resumed)
    assert whole_weights.keys() == resumed_weights.keys()
    for name, tensor in whole_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6)
    # training moved the adapter away from its initialisation
    assert state["losses"][-1] != state["losses"][0]

    adapter_config = json.loads((resumed / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == config.base
    assert sorted(p.name for p in resumed.iterdir()) == sorted(CHECKPOINT_FILES)

    package = write_teacher_package(resumed, tmp_path / "pkg" / "teacher-tiny", config, {})
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 12
    assert teacher_id(package).startswith("teacher-tiny-")


def test_device_auto_is_the_cpu_here_and_a_missing_gpu_is_an_error():
    from relevance_core.teacher import TeacherError, resolve_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(TeacherError, match="no CUDA device"):
        resolve_device("cuda")


def test_rng_state_round_trips_and_old_checkpoints_still_restore():
    from training.teacher import _restore_rng, _rng_state

    state = _rng_state()
    first = torch.rand(3)
    _restore_rng(state)
    torch.testing.assert_close(torch.rand(3), first)
    _restore_rng(state["cpu"])  # the format of checkpoints written before GPU support
    torch.testing.assert_close(torch.rand(3), first)
