"""Atomic writes: a file appears whole or not at all, and writers never share a temporary."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from training.atomic import atomic_path


def test_the_file_appears_only_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "labels.csv"
    with atomic_path(target) as tmp:
        tmp.write_text("a,b\n")
        assert not target.exists()
        assert tmp.parent == target.parent
    assert target.read_text() == "a,b\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["labels.csv"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "labels.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of a new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


def test_two_writers_of_one_file_have_their_own_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "augment.csv"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        first.write_text("first\n")
        second.write_text("second\n")
    # The inner block ends first; the outer one's rename still finds its own file.
    assert target.read_text() == "first\n"
