"""Calibration pairs: tokenized one pair at a time, read back as the same feeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.features import encode_pairs, load_tokenizer
from training.onnx_export import ExportError
from training.onnx_export.calibration import (
    calibration_pairs_from_frame,
    read_calibration,
    spread,
    write_calibration,
)

from .samples import MAX_LENGTH, PAIRS


def test_calibration_pairs_roundtrip(tiny_student_dir: Path, tmp_path: Path) -> None:
    tokenizer = tiny_student_dir / "tokenizer.json"
    assert write_calibration(tmp_path, tokenizer, MAX_LENGTH, PAIRS) == len(PAIRS)
    feeds = read_calibration(tmp_path)
    assert len(feeds) == len(PAIRS)
    for feed, pair in zip(feeds, PAIRS, strict=True):
        expected = encode_pairs(load_tokenizer(tokenizer, MAX_LENGTH), [pair[0]], [pair[1]])
        for name, array in expected.items():
            np.testing.assert_array_equal(feed[name], array[0])
    assert len(feeds[-1]["input_ids"]) == MAX_LENGTH  # the long pair is truncated, not padded
    with pytest.raises(ExportError, match="calibration"):
        read_calibration(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="at least one pair"):
        write_calibration(tmp_path, tokenizer, MAX_LENGTH, [])


def test_spread_and_frame_sampling() -> None:
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 4) == [1, 2]
    frame = pd.DataFrame(
        {"query": [f"q{i}" for i in range(20)], "title": [f"t{i}" for i in range(20)]}
    )
    pairs = calibration_pairs_from_frame(frame, limit=5, seed=0)
    assert len(pairs) == 5 and all(q[1:] == t[1:] for q, t in pairs)  # rows stay together
    assert pairs == calibration_pairs_from_frame(frame, limit=5, seed=0)  # fixed seed
    assert len(calibration_pairs_from_frame(frame, limit=50)) == 20
