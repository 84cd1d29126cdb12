"""Teacher label cache: keyed by teacher and data version, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from training.label import (
    data_version,
    label_pairs,
    label_path,
    packed_path,
    read_labels,
    seal,
    unseal,
)


class CountingTeacher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, queries: list[str], titles: list[str]) -> np.ndarray:
        self.seen.extend(zip(queries, titles, strict=True))
        probs = np.tile(np.array([0.2, 0.3, 0.5], dtype=np.float32), (len(queries), 1))
        return probs


def _pairs(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query": [f"q{i // 3}" for i in range(n)],
            "query_key": [f"q{i // 3}" for i in range(n)],
            "product_id": [str(1000 + i) for i in range(n)],
            "title": [f"title {i}" for i in range(n)],
        }
    )


def test_label_file_changes_with_teacher_and_data_version(tmp_path: Path) -> None:
    version = data_version("sha-a", "aug-1")
    assert data_version("sha-b", "aug-1") != version
    assert data_version("sha-a", "aug-2") != version
    assert data_version("sha-a", "aug-1") == version
    assert label_path(tmp_path, "teacher-1", version) != label_path(tmp_path, "teacher-2", version)
    assert label_path(tmp_path, "teacher-1", version) != label_path(
        tmp_path, "teacher-1", data_version("sha-b", "aug-1")
    )


def test_resume_labels_only_new_pairs(tmp_path: Path) -> None:
    path = tmp_path / "t" / "v.csv"
    pairs = _pairs(20)
    teacher = CountingTeacher()
    first = label_pairs(teacher, pairs, path, limit=8, chunk_size=3)
    assert len(first) == 8 and len(teacher.seen) == 8
    second = label_pairs(teacher, pairs, path, limit=15, chunk_size=3)
    assert len(second) == 15 and len(teacher.seen) == 15  # 7 new pairs only
    assert teacher.seen[8][1] == "title 8"
    again = label_pairs(teacher, pairs, path, limit=15)
    assert len(again) == 15 and len(teacher.seen) == 15  # a re-run costs nothing
    labels = read_labels(path)
    assert np.allclose(labels["teacher_score"], 0.3 * 0.5 + 0.5)


def test_torn_last_line_is_relabeled(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    pairs = _pairs(6)
    label_pairs(CountingTeacher(), pairs, path, limit=4)
    # A run killed mid-write leaves the plain file, with half a row without a newline.
    unseal(path)
    text = path.read_text()
    path.write_text(text.rstrip("\r\n").rsplit("\n", 1)[0] + "\nq1,1003,0.6")
    assert len(read_labels(path)) == 3
    teacher = CountingTeacher()
    labels = label_pairs(teacher, pairs, path, limit=6)
    assert len(labels) == 6
    assert sorted(labels["product_id"]) == sorted(pairs["product_id"])
    assert not labels.isna().any().any()


def test_max_seconds_stops_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    pairs = _pairs(12)
    partial = label_pairs(CountingTeacher(), pairs, path, chunk_size=2, max_seconds=0.0)
    assert len(partial) == 2
    assert len(label_pairs(CountingTeacher(), pairs, path, chunk_size=2)) == 12


def test_a_finished_pass_leaves_only_the_gzip_and_the_next_appends_to_it(tmp_path: Path) -> None:
    path = tmp_path / "t" / "v.csv"
    pairs = _pairs(9)
    label_pairs(CountingTeacher(), pairs, path, limit=5, chunk_size=2)
    assert not path.exists() and packed_path(path).is_file()  # what gets committed
    sealed = packed_path(path).read_bytes()
    assert len(read_labels(path)) == 5
    teacher = CountingTeacher()
    labels = label_pairs(teacher, pairs, path, chunk_size=2)
    assert len(teacher.seen) == 4 and len(labels) == 9  # only the 4 new pairs
    assert not path.exists() and len(read_labels(path)) == 9
    # Sealing is reproducible: the same rows give the same bytes (nothing new to commit).
    unseal(path)
    plain = path.read_bytes()
    seal(path)
    unseal(path)
    assert path.read_bytes() == plain
    seal(path)
    first = packed_path(path).read_bytes()
    unseal(path)
    seal(path)
    assert packed_path(path).read_bytes() == first != sealed


def test_the_plain_file_of_a_killed_pass_is_read_before_the_gzip(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    pairs = _pairs(6)
    label_pairs(CountingTeacher(), pairs, path, limit=3)
    unseal(path)  # a pass that was then killed: it appended to the plain file
    with open(path, "a") as handle:
        handle.write("q1,1003,0.6,0.1,0.6,0.3\r\n")
    assert len(read_labels(path)) == 4
    teacher = CountingTeacher()
    assert len(label_pairs(teacher, pairs, path)) == 6 and len(teacher.seen) == 2
