"""Labeling on Ray Data writes the same labels as the local engine, into the same cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from relevance_core.teacher import TeacherConfig, load_teacher
from training.label import label_pairs, read_labels
from training.teacher import train_teacher, write_teacher_package

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def tiny_teacher_package(
    tiny_dataset: Path, tiny_teacher_base: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("teacher")
    frame = pd.read_csv(tiny_dataset)
    config = TeacherConfig(base=str(tiny_teacher_base), batch_size=8, lora_r=4, threads=1)
    checkpoint = train_teacher(
        frame["search_term"].tolist(),
        frame["product_title"].tolist(),
        frame["relevance"].to_numpy(),
        config,
        root / "run",
        root / "cache",
        max_steps=3,
    )
    return write_teacher_package(checkpoint, root / "teacher-tiny", config, {}), root / "cache"


@pytest.fixture(scope="module")
def pairs(tiny_dataset: Path) -> pd.DataFrame:
    frame = pd.read_csv(tiny_dataset, dtype={"product_uid": str})
    return pd.DataFrame(
        {
            "query": frame["search_term"],
            "query_key": frame["search_term"].str.lower(),
            "product_id": frame["product_uid"],
            "title": frame["product_title"],
        }
    )


def test_ray_labels_equal_the_local_engine_and_resume_from_the_cache(
    tiny_teacher_package: tuple[Path, Path], pairs: pd.DataFrame, tmp_path: Path
) -> None:
    from training.label_ray import label_pairs_ray

    package, cache = tiny_teacher_package
    teacher = load_teacher(package, cache, threads=1)
    local = label_pairs(teacher.predict_proba, pairs, tmp_path / "local.csv", chunk_size=16)

    ray_file = tmp_path / "ray.csv"
    # half first (as if stopped), then the rest: the second call labels only what is missing
    first = label_pairs_ray(
        pairs, ray_file, package_dir=package, cache_dir=cache, limit=40, chunk_size=16, num_cpus=2
    )
    assert len(first) == 40
    labeled = label_pairs_ray(
        pairs, ray_file, package_dir=package, cache_dir=cache, actors=2, chunk_size=16, num_cpus=2
    )
    assert len(labeled) == len(pairs) == len(read_labels(ray_file))
    merged = local.merge(labeled, on=["query_key", "product_id"], suffixes=("_local", "_ray"))
    assert len(merged) == len(pairs)
    for column in ("teacher_score", "p_irrelevant", "p_partial", "p_exact"):
        np.testing.assert_allclose(merged[f"{column}_ray"], merged[f"{column}_local"], atol=2e-6)
    # nothing left: no actor starts, the cache is returned as it is
    again = label_pairs_ray(pairs, ray_file, package_dir=package, cache_dir=cache, num_cpus=2)
    assert len(again) == len(pairs) and len(read_labels(ray_file)) == len(pairs)
    ray.shutdown()


def test_bf16_labels_rank_as_fp32_and_auto_follows_the_cpu(
    tiny_teacher_package: tuple[Path, Path], pairs: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import relevance_core.teacher as teacher_module

    package, cache = tiny_teacher_package
    fp32 = load_teacher(package, cache, threads=1)
    bf16 = load_teacher(package, cache, threads=1, precision="bf16")
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    queries, titles = pairs["query"].tolist()[:24], pairs["title"].tolist()[:24]
    a, b = fp32.score(queries, titles), bf16.score(queries, titles)
    assert b.dtype == a.dtype and np.abs(a - b).max() < 0.05

    cpu = torch.device("cpu")
    monkeypatch.setattr(teacher_module, "cpu_has_native_bf16", lambda: False)
    assert teacher_module.resolve_precision("auto", cpu) == "fp32"
    assert teacher_module.resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(teacher_module, "cpu_has_native_bf16", lambda: True)
    assert teacher_module.resolve_precision("auto", cpu) == "bf16"
    assert teacher_module.resolve_precision("fp32", cpu) == "fp32"
