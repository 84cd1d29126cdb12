"""Teacher labels for unlabeled pairs, cached on disk and resumable.

A label file lives at ``<labels_dir>/<teacher_id>/<data_version>.csv``: the teacher id
changes with the adapter or base weights, the data version with the data file and the
augmentation config, so a changed teacher or data set never reuses stale labels while an
unchanged re-run costs nothing. Rows are appended and flushed in small chunks, so a run
killed at any point resumes where it stopped.

What is committed is the gzip of that file (``<data_version>.csv.gz``, about a third of
its size: 100k+ labels in a few MB): a labeling pass that returns seals the plain file into
it (:func:`seal`), and a later pass that needs to append unpacks it first. Readers take
whichever exists (:func:`stored_labels`), the plain file first (it is the newer one).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from training.atomic import atomic_path

LABEL_COLUMNS = ("query_key", "product_id", "teacher_score", "p_irrelevant", "p_partial", "p_exact")


def data_version(data_sha256: str, augment_version: str) -> str:
    """Identity of an augmentation set: the source data file and the augmentation config."""
    return hashlib.sha256(f"{data_sha256}:{augment_version}".encode()).hexdigest()[:12]


def split_version(data_sha256: str, split: str, n_queries: int) -> str:
    """Identity of a held-out sample labeled for evaluation (e.g. ``test-250q-<sha>``)."""
    return f"{split}-{n_queries}q-{data_sha256[:12]}"


def label_path(labels_dir: Path, teacher_id: str, version: str) -> Path:
    return labels_dir / teacher_id / f"{version}.csv"


def packed_path(path: Path) -> Path:
    """The committed, gzipped form of the label file ``path``."""
    return path.with_name(path.name + ".gz")


def stored_labels(path: Path) -> Path | None:
    """The file that holds ``path``'s labels: the plain file (being written), else its gzip."""
    if path.is_file():
        return path
    packed = packed_path(path)
    return packed if packed.is_file() else None


def seal(path: Path) -> Path | None:
    """Gzip the plain label file into :func:`packed_path` and remove it; returns the gzip.

    The archive is byte-for-byte reproducible (no name or time in its header), so
    re-sealing unchanged labels leaves git with nothing to commit.
    """
    if not path.is_file():
        return stored_labels(path)
    packed = packed_path(path)
    with (
        atomic_path(packed) as tmp,
        open(path, "rb") as source,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out,
    ):
        shutil.copyfileobj(source, out)
    path.unlink()
    return packed


def unseal(path: Path) -> None:
    """Unpack a sealed label file so that labeling can append to it."""
    packed = packed_path(path)
    if path.is_file() or not packed.is_file():
        return
    with atomic_path(path) as tmp, gzip.open(packed, "rb") as source, open(tmp, "wb") as out:
        shutil.copyfileobj(source, out)
    packed.unlink()  # the plain file is now the one copy; sealing writes the gzip again


def read_labels(path: Path) -> pd.DataFrame:
    """Labels written so far (empty frame when none); a torn last line is ignored."""
    source = stored_labels(path)
    if source is None:
        return pd.DataFrame(columns=list(LABEL_COLUMNS))
    frame = pd.read_csv(source, dtype={"query_key": str, "product_id": str}, on_bad_lines="skip")
    # A row torn by a kill mid-write lacks its last fields: drop it (it gets relabeled).
    frame = frame.dropna(subset=list(LABEL_COLUMNS))
    return frame.drop_duplicates(["query_key", "product_id"], keep="last").reset_index(drop=True)


def pending(
    pairs: pd.DataFrame, path: Path, limit: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first ``limit`` pairs (in the set's order) and those of them with no cached label."""
    wanted = pairs if limit is None else pairs.iloc[:limit]
    done = read_labels(path)
    done_keys = set(zip(done["query_key"], done["product_id"], strict=True))
    todo = wanted[
        [
            (k, p) not in done_keys
            for k, p in zip(wanted["query_key"], wanted["product_id"], strict=True)
        ]
    ]
    return wanted, todo


class LabelWriter:
    """Appends labels to a cache file, flushed after every chunk: a kill loses one chunk at most."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        unseal(path)
        new_file = not path.is_file() or path.stat().st_size == 0
        if not new_file:
            with open(path, "rb") as existing:
                existing.seek(-1, 2)
                torn = existing.read(1) not in (b"\n", b"\r")
            if torn:  # end a torn last row so the next row does not get glued onto it
                with open(path, "a", newline="") as handle:
                    handle.write("\r\n")
        self._handle = open(path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.writer(self._handle)
        if new_file:
            self._writer.writerow(LABEL_COLUMNS)

    def write(self, query_keys, product_ids, probabilities: np.ndarray) -> None:
        scores = probabilities @ np.array([0.0, 0.5, 1.0])
        for key, pid, score, probs in zip(
            query_keys, product_ids, scores, probabilities, strict=True
        ):
            self._writer.writerow([key, pid, f"{score:.6f}", *(f"{p:.6f}" for p in probs)])
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> LabelWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cached_labels(wanted: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Every cached label of the pairs in ``wanted``."""
    labels = read_labels(path)
    keys = set(zip(wanted["query_key"], wanted["product_id"], strict=True))
    mask = [(k, p) in keys for k, p in zip(labels["query_key"], labels["product_id"], strict=True)]
    return labels[mask].reset_index(drop=True)


def label_pairs(
    predict_proba: Callable[[list[str], list[str]], np.ndarray],
    pairs: pd.DataFrame,
    path: Path,
    limit: int | None = None,
    chunk_size: int = 64,
    max_seconds: float | None = None,
) -> pd.DataFrame:
    """Label the first ``limit`` pairs (in the set's order) that have no cached label yet.

    ``predict_proba(queries, titles)`` returns class probabilities of shape (n, 3).
    Returns every cached label for the first ``limit`` pairs. The file is sealed (gzip)
    when the pass returns, stopped by ``max_seconds`` or not; a killed pass leaves the plain
    file, which the next one continues.
    """
    wanted, todo = pending(pairs, path, limit)
    if todo.empty:
        return cached_labels(wanted, path)
    started = time.monotonic()
    with (
        LabelWriter(path) as writer,
        tqdm(total=len(todo), desc="teacher labeling", unit="pair") as bar,
    ):
        for start in range(0, len(todo), chunk_size):
            chunk = todo.iloc[start : start + chunk_size]
            probabilities = predict_proba(chunk["query"].tolist(), chunk["title"].tolist())
            writer.write(chunk["query_key"], chunk["product_id"], probabilities)
            bar.update(len(chunk))
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
    seal(path)
    return cached_labels(wanted, path)
