"""A committee teacher: first-round students, averaged, label a larger augmentation set.

On a CPU the LLM teacher labels about two pairs a second, so its augmentation set stays
small. The students distilled from it (and the one trained on human labels only) score
about a hundred pairs a second; their average is an ensemble teacher in the sense of
Hofstätter et al. (2020, margin-MSE with an ensemble of cross-encoder teachers) that can
label tens of thousands of pairs, and a fresh student distilled from it is the second
round. The committee's scores are cached with every member's own score, keyed by the
members' training fingerprints, so a changed member never reuses stale labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from training.artifacts import read_run
from training.atomic import atomic_path

COMMITTEE_KEY_COLUMNS = ("query_key", "product_id")


def committee_id(member_dirs: Sequence[Path]) -> str:
    """``committee-<hash>`` of the members' names and training fingerprints, in order."""
    identity = []
    for run_dir in member_dirs:
        record = read_run(run_dir)
        if record is None:
            raise FileNotFoundError(f"committee member {run_dir} is not a finished student run")
        identity.append([record["name"], record.get("fingerprint")])
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:10]
    return f"committee-{digest}"


def committee_scores(
    member_dirs: Sequence[Path],
    pairs: pd.DataFrame,
    max_length: int,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Score ``pairs`` (``query``, ``title``) with each member; ``teacher_score`` is their mean.

    Returns ``query_key``, ``product_id``, ``teacher_score`` and one ``member:<name>``
    column per member (scores in [0, 1]).
    """
    from training.student import load_student, predict_scores

    if not member_dirs:
        raise ValueError("a committee needs at least one member")
    out = pairs.loc[:, list(COMMITTEE_KEY_COLUMNS)].reset_index(drop=True).copy()
    queries, titles = pairs["query"].tolist(), pairs["title"].tolist()
    members = []
    for run_dir in member_dirs:
        model, tokenizer = load_student(run_dir, max_length)
        column = f"member:{run_dir.name}"
        out[column] = predict_scores(model, tokenizer, queries, titles, batch_size)
        members.append(column)
    out["teacher_score"] = out[members].mean(axis=1)
    return out


def read_committee_labels(path: Path) -> pd.DataFrame | None:
    """A cached committee label file, or None when there is none."""
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"query_key": str, "product_id": str})


def write_committee_labels(labels: pd.DataFrame, path: Path) -> Path:
    """Write atomically: a file exists only when every pair was scored."""
    with atomic_path(path) as tmp:
        labels.to_csv(tmp, index=False, float_format="%.6f")
    return path
