"""Student results that outlive the weights: what evaluate measured of each run, committed.

A student's weights (``runs/students/<run>/``, ~90 MB) are not committed, and the curve's
runs take more CPU-hours than a session, so a fresh machine would report only the runs
trained on it. What the evaluate stage measures of a run is small, so it is stored under
``paths.student_results`` (``results/students/``, committed), one file per run and
fingerprint, ``<run>-<fingerprint[:12]>.npz`` (``np.savez_compressed``, tens of KB):

- ``scores``: the run's scores of the table's frame (the evaluate split, then the
  validation random negatives), float32;
- ``meta``: a JSON string: ``run`` (the run record, its ``run.json``), ``table`` (the
  latency figures) and ``frontier`` (the served variant's cost, its validation and test
  pairwise accuracy, the encoder's layers); each part carries ``set``, the hash of what
  it measured (:func:`table_set`, :func:`frontier_set`), and is used only when that
  matches the current evaluation.

:func:`evaluated_runs` says which runs evaluate reports (the table, the curve and the
frontier alike): every finished run on disk, and each run whose weights are gone but
whose stored fingerprint is the one the current config trains it under (the distill
stage's curve runs, the small stage's runs: :func:`current_fingerprints`). An entry of
another fingerprint is stale: ignored, with a log line. A run on disk whose entry
matches is read back, not scored again; one without is scored and stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.artifacts import (
    Dataset,
    PipelineError,
    finished_runs,
    read_run,
    small_run_name,
    small_student_fingerprint,
    students_dir,
)
from training.atomic import atomic_path
from training.config import TrainConfig

logger = logging.getLogger(__name__)

SUFFIX = ".npz"


@dataclass
class StoredRun:
    """One stored entry: a run record and what evaluate measured of it."""

    record: dict[str, Any]
    table: dict[str, Any] | None = None
    scores: np.ndarray | None = None
    frontier: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def fingerprint(self) -> str:
        return self.record["fingerprint"]


def entry_path(config: TrainConfig, name: str, fingerprint: str) -> Path:
    return config.path("student_results") / f"{name}-{fingerprint[:12]}{SUFFIX}"


def read_entry(path: Path) -> StoredRun:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        scores = data["scores"].astype(np.float64) if "scores" in data.files else None
    return StoredRun(meta["run"], meta.get("table"), scores, meta.get("frontier"), path)


def write_entry(config: TrainConfig, entry: StoredRun) -> Path:
    """Write ``entry`` (through a temporary file, so a killed run leaves no half file)."""
    path = entry_path(config, entry.name, entry.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"run": entry.record, "table": entry.table, "frontier": entry.frontier}
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, default=float))}
    if entry.scores is not None:
        arrays["scores"] = np.asarray(entry.scores, dtype=np.float32)
    with atomic_path(path) as part, open(part, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    entry.path = path
    return path


def stored_entry(config: TrainConfig, record: dict[str, Any]) -> StoredRun | None:
    """The entry of ``record``'s run and fingerprint, or None."""
    path = entry_path(config, record["name"], record["fingerprint"])
    if not path.is_file():
        return None
    entry = read_entry(path)
    return entry if entry.fingerprint == record["fingerprint"] else None


def stored_runs(config: TrainConfig) -> dict[str, list[StoredRun]]:
    """Every readable entry under ``paths.student_results``, by run name."""
    out: dict[str, list[StoredRun]] = {}
    for path in sorted(config.path("student_results").glob(f"*{SUFFIX}")):
        try:
            entry = read_entry(path)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("stored result %s is unreadable (%s); ignored", path, exc)
            continue
        out.setdefault(entry.name, []).append(entry)
    return out


def weights_present(config: TrainConfig, record: dict[str, Any]) -> bool:
    """Whether ``record``'s run (that training, same fingerprint) is on disk to score."""
    on_disk = read_run(students_dir(config) / record["name"])
    return on_disk is not None and on_disk.get("fingerprint") == record["fingerprint"]


# --------------------------------------------------------------------------- which runs


def current_fingerprints(
    config: TrainConfig, dataset: Dataset, on_disk: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Run name -> the fingerprint the config trains it under now.

    The distill stage's curve runs (named and fingerprinted as
    :func:`training.stages.stage_distill` does, ingested live pairs included), the
    representation stage's runs (its main architecture and each of ``representation.also``),
    and the small stage's runs of their source (the run on disk, else the one the curve
    trains).
    A run whose identity needs what is not here (its labels' teacher) is left out.
    """
    from training.mirror_ingest import mirror_training_pairs
    from training.recipe import curve_runs
    from training.representation.runs import representation_runs
    from training.small import source_run
    from training.stages import distill_fingerprint, distill_run_name

    mirror = mirror_training_pairs(config, dataset)
    expected: dict[str, str] = {}
    named = functools.partial(distill_run_name, mirror=mirror)
    for run in curve_runs(config, dataset, name=named):
        try:
            expected[run.name] = distill_fingerprint(run, dataset, mirror, config)
        except PipelineError as exc:
            logger.info("the fingerprint of %s cannot be worked out here: %s", run.name, exc)
    try:
        expected.update(representation_runs(config, dataset))
    except (PipelineError, OSError) as exc:
        logger.info("the representation runs' fingerprints cannot be worked out here: %s", exc)
    if config.small.layers:
        source = source_run(config, dataset)
        fingerprint = on_disk[source]["fingerprint"] if source in on_disk else expected.get(source)
        if fingerprint is not None:
            for layers in config.small.layers:
                expected[small_run_name(source, layers)] = small_student_fingerprint(
                    config, {"fingerprint": fingerprint}, layers
                )
    return expected


def evaluated_runs(config: TrainConfig, dataset: Dataset) -> list[dict[str, Any]]:
    """The run records evaluate reports, by name: every finished run on disk (but one
    trained on ingested live pairs under a name this config does not train: a closed-loop
    candidate of another config's labels, left out with a log line), and the stored record
    of each run whose weights are gone when the config still trains that fingerprint
    (stale entries are logged and ignored)."""
    found = {r["name"]: r for r in finished_runs(config)}

    @functools.cache
    def expected() -> dict[str, str]:
        # Worked out only when needed (it reads the labels): a run trained on live pairs
        # is on disk, or some run's weights are gone.
        return current_fingerprints(config, dataset, found)

    on_disk = {}
    for name, record in found.items():
        # A run trained on ingested live traffic that this config's labels do not hold
        # (the closed loop's candidate, trained under its own config) is another recipe's.
        if record.get("mirror") and name not in expected():
            logger.info(
                "run %s on disk was trained on live pairs this config lacks; left out", name
            )
        else:
            on_disk[name] = record
    records = dict(on_disk)
    for name, entries in stored_runs(config).items():
        if name in on_disk:
            current = on_disk[name]["fingerprint"]
            for entry in entries:
                if entry.fingerprint != current:
                    logger.info(
                        "stored result %s is stale (the run on disk is fingerprint %s); ignored",
                        entry.path.name if entry.path else name,
                        current,
                    )
            continue
        wanted = expected().get(name)
        for entry in entries:
            if entry.fingerprint == wanted:
                records[name] = entry.record
            else:
                logger.info(
                    "stored result %s is stale (fingerprint %s; the config trains %s); ignored",
                    entry.path.name if entry.path else name,
                    entry.fingerprint,
                    wanted or "no such run",
                )
    return [records[name] for name in sorted(records)]


# --------------------------------------------------------------------------- sets


def _keys_hash(frame: pd.DataFrame) -> str:
    keys = frame["query_key"].astype(str) + "\t" + frame["product_id"].astype(str)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def table_set(config: TrainConfig, frame: pd.DataFrame, sample: pd.DataFrame) -> str:
    """What a table entry measured: the frame's and timing sample's pairs, in order, and
    the settings that change a score or a timing."""
    settings = config.evaluate
    return _digest(
        {
            "frame": _keys_hash(frame),
            "sample": _keys_hash(sample),
            "batch_size": settings.batch_size,
            "threads": settings.threads,
            # Students are loaded with the current config's truncation (systems.py).
            "max_length": config.student.max_length,
        }
    )


def frontier_set(config: TrainConfig, dataset: Dataset, sample: pd.DataFrame) -> str:
    """What a frontier entry measured: the validation and test pairs, the timed sample
    and the export and timing settings of the served variant."""
    return _digest(
        {
            "validation": _keys_hash(dataset.splits["validation"]),
            "test": _keys_hash(dataset.splits["test"]),
            "sample": _keys_hash(sample),
            "variant": config.small.cost_variant,
            "threads": config.small.cost_threads,
            "batch_size": config.evaluate.batch_size,
            "export": [list(config.export.variants), config.export.calibration],
        }
    )


def usable(entry: StoredRun | None, part: str, set_hash: str) -> dict[str, Any] | None:
    """``entry``'s ``table`` or ``frontier`` part when it measured ``set_hash``."""
    section = getattr(entry, part) if entry is not None else None
    if section is None or section.get("set") != set_hash:
        return None
    if part == "table" and (entry is None or entry.scores is None):
        return None
    return section


def stored_note(entry: StoredRun, part: dict[str, Any]) -> str:
    """What a report row read from the store says of where its numbers come from."""
    when = str(part.get("measured_at", "?"))[:10]
    return f"measured {when}, read from the stored result {entry.path.name if entry.path else '?'}"


# --------------------------------------------------------------------------- writing


def _measured(set_hash: str, fields: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"set": set_hash, "measured_at": now, **fields}


def store_table(
    config: TrainConfig,
    record: dict[str, Any],
    scores: np.ndarray,
    set_hash: str,
    fields: dict[str, Any],
) -> np.ndarray:
    """Store a run's table scores and ``fields`` (latencies); returns the scores at the
    precision stored (float32), so a row read back later equals this one."""
    entry = stored_entry(config, record) or StoredRun(record)
    entry.record = record
    entry.scores = np.asarray(scores, dtype=np.float32)
    entry.table = _measured(set_hash, fields)
    write_entry(config, entry)
    return entry.scores.astype(np.float64)


def store_frontier(
    config: TrainConfig, record: dict[str, Any], set_hash: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Store a run's frontier measurement ``fields``; returns the stored part."""
    entry = stored_entry(config, record) or StoredRun(record)
    entry.record = record
    entry.frontier = _measured(set_hash, fields)
    write_entry(config, entry)
    return entry.frontier
