"""A student run's resumable state: weights, optimiser, progress and torch's RNG.

A first-round student on the full augmentation set is a multi-hour CPU job, longer than
one session may run, so :func:`training.fit_loop.fit` (the loop of both student kinds)
saves this state every ``student.checkpoint_minutes`` (and when interrupted) and a rerun
of the same stage continues from it. The batch order needs no saved state: it is a
function of the seed, so a resumed run replays the stream's index lists up to its step
(cheap) and carries on with exactly the batches the uninterrupted run would have seen.

A checkpoint belongs to one run identity (``key``: the run's fingerprint, its row count,
its step budget, its seed and its student kind); a checkpoint of another identity is
discarded, never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from training.atomic import atomic_path

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"


def checkpoint_key(
    fingerprint: str | None, rows: int, total_steps: int, seed: int, kind: str | None = None
) -> str:
    """Identity of the run a checkpoint may resume; ``kind`` names a student kind other
    than the cross-encoder (whose keys, from before there were others, have none)."""
    parts: list[object] = [fingerprint, rows, total_steps, seed]
    blob = json.dumps(parts if kind is None else [*parts, kind])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(directory: Path, key: str, state: dict[str, Any]) -> Path:
    """Write ``state`` (torch-serialisable) under ``directory`` atomically."""
    path = directory / STATE_FILE
    with atomic_path(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        torch.save({"key": key, **state}, tmp)
    return path


def load_checkpoint(directory: Path, key: str) -> dict[str, Any] | None:
    """The saved state of the run ``key``, or None (none saved, or another run's)."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("key") != key:
        logger.warning("discarding %s: it belongs to another run (key %s)", path, state.get("key"))
        remove_checkpoint(directory)
        return None
    return state


def remove_checkpoint(directory: Path) -> None:
    """Delete a finished (or stale) run's checkpoint directory."""
    if directory.exists():
        shutil.rmtree(directory)
