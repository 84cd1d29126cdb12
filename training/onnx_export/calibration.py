"""Calibration pairs of static INT8: chosen, tokenized into ``calibration.npz``, read back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.features import encode_pairs, load_tokenizer
from training.onnx_export import ExportError

# Static INT8 calibration: enough pairs for stable activation ranges, quick to run.
MAX_CALIBRATION_PAIRS = 512
CALIBRATION_FILE = "calibration.npz"


def write_calibration(
    export_dir: Path, tokenizer_path: str | Path, max_length: int, pairs: Sequence[tuple]
) -> int:
    """Tokenize calibration ``(query, text)`` pairs into ``export_dir/calibration.npz``.

    Each pair is encoded alone (no padding): padded positions would widen the activation
    ranges with values the attention mask throws away anyway. Returns the pair count.
    """
    if not pairs:
        raise ExportError("static INT8 calibration needs at least one pair")
    tokenizer = load_tokenizer(tokenizer_path, max_length)
    rows = [encode_pairs(tokenizer, [p[0]], [p[1]]) for p in pairs]
    arrays = {name: np.concatenate([r[name][0] for r in rows]) for name in rows[0]}
    lengths = np.array([r["input_ids"].shape[1] for r in rows], dtype=np.int64)
    np.savez(export_dir / CALIBRATION_FILE, lengths=lengths, **arrays)
    return len(rows)


def read_calibration(export_dir: Path) -> list[dict[str, np.ndarray]]:
    """The feeds :func:`write_calibration` stored: one dict of 1-D int64 arrays per pair."""
    path = export_dir / CALIBRATION_FILE
    if not path.is_file():
        raise ExportError(f"{path}: no calibration pairs (write_calibration was not run)")
    with np.load(path) as stored:
        lengths = stored["lengths"]
        arrays = {k: stored[k] for k in stored.files if k != "lengths"}
    ends = np.cumsum(lengths)
    return [
        {k: v[end - length : end] for k, v in arrays.items()}
        for end, length in zip(ends, lengths, strict=True)
    ]


def spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` items evenly spaced over ``items`` (all of them when fewer)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def calibration_pairs_from_frame(
    frame: Any, limit: int = MAX_CALIBRATION_PAIRS, seed: int = 0
) -> list[tuple[str, str]]:
    """``limit`` (query, title) pairs drawn at random (fixed seed) from a split frame.

    Pass the training split: calibrating on the validation pairs that also gate the
    variant would flatter its parity numbers.
    """
    rows = frame.sample(n=min(limit, len(frame)), random_state=seed)
    return list(zip(rows["query"], rows["title"], strict=True))
