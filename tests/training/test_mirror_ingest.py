"""ingest-mirror: validation, dedup against labels and evaluation splits, keying, hold-out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from training.__main__ import main
from training.artifacts import load_dataset
from training.config import TrainConfig, load_config
from training.data import query_key
from training.mirror_ingest import (
    heldback_pairs,
    ingest_mirror,
    is_heldback,
    mirror_files,
    mirror_training_pairs,
    read_mirror,
    teacher_key,
    text_key,
)


def fake_teacher_package(models_dir: Path, name: str = "teacher-fake") -> str:
    """A teacher package manifest without weights: enough for its id (the label key)."""
    from relevance_core.teacher import teacher_id

    package = models_dir / name
    package.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "base": "fake-base", "files": {}, "config": {}}
    (package / "manifest.json").write_text(json.dumps(manifest))
    return teacher_id(package)


def mirror_config(root: Path, data: Path, **sections: Any) -> TrainConfig:
    overrides: dict[str, Any] = {
        "paths": {
            "data": str(data),
            "labels_dir": str(root / "labels"),
            "runs_dir": str(root / "runs"),
            "models_dir": str(root / "models"),
            "teacher_package": "teacher-fake",
        },
        "split": {"seed": 3, "train": 0.5, "validation": 0.25, "test": 0.25},
    }
    overrides.update(sections)
    return load_config(overrides=overrides, environ={})


def record(query: str, text: str, score: float, teacher: str, **extra: Any) -> dict[str, Any]:
    return {
        "query": query,
        "text": text,
        "item_id": extra.pop("item_id", "x"),
        "teacher_score": score,
        "student_score": extra.pop("student_score", 0.5),
        "teacher": teacher,
        **extra,
    }


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "w") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


@pytest.fixture
def setup(tmp_path: Path, tiny_dataset: Path):
    config = mirror_config(tmp_path, tiny_dataset)
    teacher = fake_teacher_package(tmp_path / "models")
    return config, load_dataset(config), teacher


def test_teacher_key_is_identity_plus_version() -> None:
    assert teacher_key("teacher-q-5150f2c099", "5150f2c099") == "teacher-q-5150f2c099"
    assert teacher_key("fake-teacher", "1") == "fake-teacher-1"
    assert teacher_key("old-teacher", None) == "old-teacher"  # records before the field
    assert teacher_key("t", "unknown") == "t"


def test_ingest_counts_every_drop_and_keeps_the_rest(tmp_path: Path, setup) -> None:
    config, dataset, teacher = setup
    splits = dataset.splits
    train_q = splits["train"].drop_duplicates("query_key")["query"].tolist()
    val_q = splits["validation"]["query"].iloc[0]
    test_q = splits["test"]["query"].iloc[0]
    human_title = splits["train"]["title"].iloc[0]
    human_query = splits["train"]["query"].iloc[0]
    new = [f"Unseen Product {n}" for n in range(3)]
    rows: list[Any] = [
        record(human_query, human_title.upper(), 0.9, teacher),  # human label, other case
        record(f"  {val_q.upper()} ", "Anything", 0.2, teacher),  # a validation query
        record(test_q, "Something Else", 0.3, teacher),  # a test query
        *(record(train_q[1], text, 0.1 * (n + 1), teacher) for n, text in enumerate(new)),
        record(train_q[1], new[0] + "  ", 0.3, teacher),  # repeat of new[0]: mean score
        record(train_q[2], "Other Teacher Item", 0.4, "fake-teacher", teacher_version="2"),
        "{not json",
        json.dumps([1, 2]),
        record(train_q[1], "x", 1.5, teacher),
        record(train_q[1], "x", 0.5, teacher, student_score=-0.1),
        {"query": train_q[1], "text": "y", "teacher": teacher},
        record(train_q[1], "   ", 0.5, teacher),
        record(train_q[1], "z", 0.5, "../escape"),
        "",  # blank lines are not records
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with open(path, "a") as handle:  # NaN, as Python's json writes it
        handle.write('{"query": "q", "text": "t", "teacher_score": NaN, "teacher": "t"}\n')

    report = ingest_mirror(config, [path], dataset)

    assert report["lines"] == 16
    assert report["invalid"] == {
        "malformed": 2,
        "missing_field": 1,
        "bad_score": 3,
        "blank_text": 1,
        "bad_teacher": 1,
    }
    assert report["valid"] == 8 and report["configured_teacher"] == teacher
    assert report["dropped"] == {
        "eval_query": 2,
        "human_labeled": 1,
        "teacher_labeled": 0,
        "duplicate": 1,
    }
    mine = report["teachers"][teacher]
    assert mine["configured"] and mine["pairs"] == 3
    frame = read_mirror(Path(mine["file"]))
    assert sorted(frame["title"]) == new
    assert frame.loc[frame["text_key"] == text_key(new[0]), "teacher_score"].item() == (
        pytest.approx(0.2)
    )
    assert frame.loc[frame["text_key"] == text_key(new[0]), "count"].item() == 2
    expected_role = (
        "holdout" if is_heldback(query_key(train_q[1]), 0.2, config.mirror.seed) else "train"
    )
    assert set(frame["role"]) == {expected_role}
    # Another teacher's pairs are kept apart, under their own key.
    other = report["teachers"]["fake-teacher-2"]
    assert not other["configured"] and other["pairs"] == 1
    assert Path(other["file"]).parent.name == "fake-teacher-2"
    assert mirror_files(config, teacher) == [Path(mine["file"])]
    # Compressed, and the report beside it names its inputs.
    with gzip.open(mine["file"], "rt") as handle:
        assert handle.readline().startswith("query,query_key,product_id,title")
    sidecar = json.loads(Path(mine["file"]).with_suffix("").with_suffix(".json").read_text())
    assert sidecar["pairs"] == 3 and sidecar["sources"][0]["file"] == str(path)


def test_reingesting_adds_nothing_and_known_labels_are_dropped(tmp_path: Path, setup) -> None:
    config, dataset, teacher = setup
    query = dataset.splits["train"]["query"].iloc[0]
    # A pair the teacher labeled already (an augmentation label file: ids, no text).
    judged = set(dataset.labeled.loc[dataset.labeled["query"] == query, "product_id"])
    product = dataset.products[~dataset.products["product_id"].isin(judged)].iloc[0]
    labels = config.path("labels_dir") / teacher
    labels.mkdir(parents=True)
    pd.DataFrame(
        [[query.lower(), product["product_id"], 0.5, 0.2, 0.6, 0.2]],
        columns=[
            "query_key",
            "product_id",
            "teacher_score",
            "p_irrelevant",
            "p_partial",
            "p_exact",
        ],
    ).to_csv(labels / "augment.csv", index=False)
    rows = [record(query, product["title"], 0.5, teacher), record(query, "Brand New", 0.7, teacher)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)

    first = ingest_mirror(config, [path], dataset)
    assert first["dropped"]["teacher_labeled"] == 1 and first["teachers"][teacher]["pairs"] == 1
    second = ingest_mirror(config, [path], dataset)
    assert second["dropped"]["teacher_labeled"] == 2
    assert second["teachers"][teacher]["pairs"] == 0 and second["teachers"][teacher]["file"] is None
    assert len(mirror_files(config, teacher)) == 1


def test_distill_pairs_exclude_heldback_and_evaluation_queries(tmp_path: Path, setup) -> None:
    config, dataset, teacher = setup
    config = config.model_copy(update={"mirror": config.mirror.model_copy(update={"holdout": 0.5})})
    # Training queries are in the data; live queries need not be: invent some.
    queries = [f"live query {n}" for n in range(40)]
    rows = [record(q, f"Item {i} of {q}", 0.1 * i, teacher) for q in queries for i in range(3)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = ingest_mirror(config, [path], dataset)
    entry = report["teachers"][teacher]
    assert entry["train_pairs"] > 0 and entry["holdout_pairs"] > 0
    assert entry["train_pairs"] + entry["holdout_pairs"] == 120

    pairs, provenance = mirror_training_pairs(config, dataset)
    held = heldback_pairs(config)
    assert len(pairs) == entry["train_pairs"] and len(held) == entry["holdout_pairs"]
    assert not set(pairs["query_key"]) & set(held["query_key"])  # by query, not by pair
    assert provenance["teacher_id"] == teacher and provenance["pairs"] == len(pairs)
    assert provenance["files"][0]["file"] == f"{teacher}/{Path(entry['file']).name}"
    assert set(pairs["source"]) == {"mirror"}
    # The switch: off, distill sees nothing.
    off = config.model_copy(update={"mirror": config.mirror.model_copy(update={"use": False})})
    assert mirror_training_pairs(off, dataset) is None


def test_cli_prints_the_report(tmp_path: Path, setup, capsys: pytest.CaptureFixture[str]) -> None:
    config, dataset, teacher = setup
    query = dataset.splits["train"]["query"].iloc[0]
    path = write_jsonl(tmp_path / "pairs.jsonl", [record(query, "Fresh Item", 0.6, teacher), "]"])
    config_file = config.save(tmp_path / "config.json")
    assert main(["ingest-mirror", str(path), "--config", str(config_file)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["invalid"]["malformed"] == 1 and report["teachers"][teacher]["pairs"] == 1
    # A missing file is a pipeline error (exit 2) naming it.
    assert main(["ingest-mirror", str(tmp_path / "nope.jsonl"), "--config", str(config_file)]) == 2
